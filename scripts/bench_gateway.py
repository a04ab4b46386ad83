#!/usr/bin/env python3
"""Benchmark the fleet gateway: real HAProxy (Debian's) in front of 3 comfyui-api hosts on loopback.

Hosts here are comfyui-api processes, each with its own ComfyUI stand-in, on loopback ports
(not SSH containers: the full fleet costs minutes per start and would measure Docker, not the
gateway). The gateway configuration is the one ``comfyfleet gateway deploy`` writes
(``comfyfleet.gateway_config.render``), one slot per host.

Measured side by side in one run:
1. throughput: each host called directly by its own clients (the sum) vs the same number of
   clients through the gateway (``--clients-per-host``, default 2), in alternating 1 s slices;
   a generation per request (EmptyImage → SaveImage, new colour each), each node taking
   ``--node-delay`` (default 100 ms: 200 ms a generation; real ones take seconds) in the
   stand-in like GPU time, so hosts are GPU-bound as in production, not bound by this shared
   CPU. With one slot per host the gateway hands a host its next job only after the last
   answer, so the per-job gap (tens of ms on this loaded 2-core machine) costs more the
   shorter the generation: at 20 ms per node the ratio swung 0.78-1.01 between runs.
2. added latency: GET /health direct vs through the gateway, alternating, p50.
3. failover: a burst of GETs and POSTs on kept-alive connections while one host is killed
   (SIGKILL) mid-burst; every GET must succeed (retried on another host), every POST must
   succeed or fail with a clear 502/503 JSON answer (a connection closed without an answer is
   "unclear": the client cannot know whether to retry). The client itself never retries.
4. rolling update through the gateway (drain → idle → restart → ready → back in) while
   clients keep sending generations: 0 failed requests.

Targets: throughput ≥ 0.9× the direct sum, p50 added ≤ 2 ms, 0 lost retryable requests,
0 failed requests during the rolling update.

    .venv/bin/python scripts/bench_gateway.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
from comfyfleet.devkit.standin import Standin, free_port, stop_process  # noqa: E402
from comfyfleet.gateway_config import Backend, GatewaySettings, render  # noqa: E402
from comfyfleet.haproxy_runtime import Runtime  # noqa: E402

TARGET_THROUGHPUT_RATIO = 0.9
TARGET_ADDED_P50_MS = 2.0
WORKFLOW = (
    '{"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 1}},'
    ' "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}}}'
)


class Host:
    """One comfyui-api process (with its stand-in ComfyUI) that can be killed and restarted."""

    def __init__(self, name: str, base: Path, node_delay_s: float) -> None:
        self.name = name
        self.base = base
        # The stand-in sleeps this long per node: the GPU's time, which costs no CPU here either.
        self.standin = Standin(base / "comfy", env={"COMFYUI_STANDIN_NODE_DELAY": str(node_delay_s)})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        (base / "wf").mkdir(parents=True, exist_ok=True)
        (base / "wf" / "bench.json").write_text(WORKFLOW)

    def start(self) -> None:
        if self.standin.proc is None:
            self.standin.start()
        log = open(self.base / "api.log", "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONPATH": str(ROOT / "comfyui-api" / "src")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "comfyui_api",
                "--comfyui-url",
                self.standin.url,
                "--workflows",
                str(self.base / "wf"),
                "--port",
                str(self.port),
                "--db",
                str(self.base / "api.sqlite3"),
                "--rate-limit",
                "1000000",
                "--rate-burst",
                "100000",
                "--job-id-prefix",
                f"{self.name}-",
                "--comfyui-output-dir",
                str(self.standin.base_dir / "output"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"host {self.name} did not become ready: see {self.base / 'api.log'}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc)
        self.standin.stop()


class Gateway:
    def __init__(self, base: Path, hosts: list[Host]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = base
        sock = base / "admin.sock"
        cfg = render(
            [Backend(h.name, "127.0.0.1", h.port, 1) for h in hosts],
            GatewaySettings(
                listen="127.0.0.1",
                port=self.port,
                runtime_socket=str(sock),
                check_interval_ms=300,
                queue_timeout_s=60,
                max_queue=256,
            ),
        )
        if os.environ.get("BENCH_GATEWAY_LOG"):
            cfg = cfg.replace("global\n", "global\n    log stderr format raw local0\n").replace(
                "defaults\n", "defaults\n    log global\n    option httplog\n"
            )
        (base / "haproxy.cfg").write_text(cfg)
        subprocess.run(["haproxy", "-c", "-q", "-f", str(base / "haproxy.cfg")], check=True)
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(base / "haproxy.cfg")],
            stdout=subprocess.DEVNULL,
            stderr=open(base / "haproxy.log", "ab"),
        )  # noqa: SIM115
        self.runtime = Runtime(sock)
        deadline = time.monotonic() + 20
        while True:
            try:
                if all(v.state == "up" for v in self.runtime.servers()) and self.runtime.servers():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("gateway did not see every host up")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc)


async def send(client: httpx.AsyncClient, method: str, url: str, **kw: object) -> httpx.Response:
    """One request on a kept-alive connection, with no retry of its own: whatever the gateway does
    (retry, 502, or closing the connection without an answer) is what gets counted."""
    return await client.request(method, url, **kw)  # type: ignore[arg-type]


async def generate(client: httpx.AsyncClient, url: str) -> httpx.Response:
    # A new colour each time, so ComfyUI cannot answer from its cache.
    graph_color = random.randrange(1, 0xFFFFFF)
    return await send(
        client,
        "POST",
        f"{url}/prompt",
        json={
            "prompt": {
                "1": {
                    "class_type": "EmptyImage",
                    "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": graph_color},
                },
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}},
            }
        },
    )


async def closed_loop(urls: list[str], seconds: float) -> tuple[int, int]:
    """One client per URL sending generations back to back; (ok, failed)."""
    ok = failed = 0
    stop = time.monotonic() + seconds

    async def client_loop(url: str) -> None:
        nonlocal ok, failed
        async with httpx.AsyncClient(timeout=120) as client:
            while time.monotonic() < stop:
                r = await generate(client, url)
                if r.status_code in (200, 201):
                    ok += 1
                else:
                    failed += 1

    await asyncio.gather(*(client_loop(u) for u in urls))
    return ok, failed


def latency_ms(direct_url: str, gateway_url: str, n: int) -> tuple[float, float]:
    """p50 of GET /health direct and through the gateway, requests alternating between the two."""
    times: dict[str, list[float]] = {direct_url: [], gateway_url: []}
    with httpx.Client(timeout=10) as direct, httpx.Client(timeout=10) as gateway:
        for _ in range(20):
            direct.get(direct_url + "/health")
            gateway.get(gateway_url + "/health")
        for _ in range(n):
            for client, url in ((direct, direct_url), (gateway, gateway_url)):
                t = time.perf_counter()
                client.get(url + "/health").raise_for_status()
                times[url].append((time.perf_counter() - t) * 1000)
    return statistics.median(times[direct_url]), statistics.median(times[gateway_url])


async def failover_burst(gw: Gateway, victim: Host, total: int) -> dict[str, int]:
    """Half GETs (retryable), half POSTs; kill ``victim`` when a third has been answered."""
    counts = {"get_ok": 0, "get_lost": 0, "post_ok": 0, "post_clear_fail": 0, "post_unclear": 0}
    done = 0
    notes: list[str] = []
    sem = asyncio.Semaphore(6)

    async def one(i: int, client: httpx.AsyncClient) -> None:
        nonlocal done
        async with sem:
            if i % 2:
                try:
                    r = await send(client, "GET", gw.url + "/workflows")
                    counts["get_ok" if r.status_code == 200 else "get_lost"] += 1
                    if r.status_code != 200:
                        notes.append(f"GET {r.status_code} {r.text[:120]}")
                except httpx.HTTPError as exc:
                    counts["get_lost"] += 1
                    notes.append(f"GET {type(exc).__name__}")
            else:
                try:
                    r = await generate(client, gw.url)
                    if r.status_code == 200:
                        counts["post_ok"] += 1
                    elif r.status_code in (502, 503) and "detail" in r.json():
                        counts["post_clear_fail"] += 1
                    else:
                        counts["post_unclear"] += 1
                        notes.append(f"POST {r.status_code} {r.text[:120]}")
                except (httpx.HTTPError, ValueError) as exc:
                    counts["post_unclear"] += 1
                    notes.append(
                        f"POST {type(exc).__name__}: {exc} (answered before: {done}, killed at {total // 3})"
                    )
            done += 1
            if done == total // 3:
                victim.kill()

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(one(i, client) for i in range(total)))
    if os.environ.get("BENCH_GATEWAY_LOG"):
        print((gw.base / "haproxy.log").read_text())
    for note in sorted(set(notes)):
        print("failover   ", note)
    return counts


async def rolling_update(gw: Gateway, hosts: list[Host]) -> tuple[int, int, float]:
    """Clients keep generating while each host is drained, restarted and put back; (ok, failed, seconds)."""
    stop = asyncio.Event()
    ok = failed = 0

    async def client_loop() -> None:
        nonlocal ok, failed
        async with httpx.AsyncClient(timeout=120) as client:
            while not stop.is_set():
                try:
                    r = await generate(client, gw.url)
                    ok, failed = (ok + 1, failed) if r.status_code == 200 else (ok, failed + 1)
                except httpx.HTTPError:
                    failed += 1

    def update() -> None:
        for h in hosts:
            gw.runtime.set_state(h.name, "drain")
            gw.runtime.wait_idle(h.name, timeout_s=60)
            stop_process(h.proc)
            h.start()  # returns once /ready answers 200
            gw.runtime.set_state(h.name, "ready")
            gw.runtime.wait_up(h.name, timeout_s=60)

    t0 = time.monotonic()
    clients = [asyncio.create_task(client_loop()) for _ in range(3)]
    await asyncio.to_thread(update)
    stop.set()
    await asyncio.gather(*clients)
    return ok, failed, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--seconds", type=float, default=8.0, help="length of each throughput side (in 1 s slices)"
    )
    ap.add_argument(
        "--node-delay",
        type=float,
        default=0.1,
        help="seconds each node takes in the stand-in (GPU time; 0 = CPU-bound hosts)",
    )
    ap.add_argument(
        "--clients-per-host",
        type=int,
        default=2,
        help="clients per host: direct, each host gets its own; through the gateway, all of them",
    )
    ap.add_argument("--burst", type=int, default=120, help="requests in the failover burst")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cf-bench-gw-") as tmp:
        hosts = [Host(f"h{i}", Path(tmp) / f"h{i}", args.node_delay) for i in (1, 2, 3)]
        gw: Gateway | None = None
        try:
            for h in hosts:
                h.start()
            gw = Gateway(Path(tmp), hosts)
            asyncio.run(closed_loop([h.url for h in hosts], 1.0))  # warm up
            # Direct and gateway slices alternate, so load from other processes on this machine
            # falls on both alike.
            d_ok = d_fail = g_ok = g_fail = 0
            rounds = max(1, round(args.seconds))
            for _ in range(rounds):
                ok, fail = asyncio.run(
                    closed_loop([h.url for h in hosts] * args.clients_per_host, args.seconds / rounds)
                )
                d_ok, d_fail = d_ok + ok, d_fail + fail
                ok, fail = asyncio.run(
                    closed_loop([gw.url] * len(hosts) * args.clients_per_host, args.seconds / rounds)
                )
                g_ok, g_fail = g_ok + ok, g_fail + fail
            direct_rps, gw_rps = d_ok / args.seconds, g_ok / args.seconds
            direct_lat, gw_lat = latency_ms(hosts[0].url, gw.url, 500)
            added = gw_lat - direct_lat
            burst = asyncio.run(failover_burst(gw, hosts[2], args.burst))
            hosts[2].start()
            gw.runtime.wait_up(hosts[2].name, timeout_s=30)
            r_ok, r_fail, r_secs = asyncio.run(rolling_update(gw, hosts))
        finally:
            if gw:
                gw.stop()
            for h in hosts:
                h.stop()

    ratio = gw_rps / direct_rps if direct_rps else 0.0
    print(
        f"hosts       3 x comfyui-api + ComfyUI stand-in on loopback, {args.node_delay * 1000:g} ms per node "
        f"(2-node graph), one slot each, {args.clients_per_host} clients per host; "
        "gateway = Debian's HAProxy with the generated configuration"
    )
    print(
        f"throughput  direct sum of 3 hosts {direct_rps:7.1f} req/s ({d_fail} failed)   "
        f"through gateway {gw_rps:7.1f} req/s ({g_fail} failed)   ratio {ratio:.3f} (target ≥ {TARGET_THROUGHPUT_RATIO})"
    )
    print(
        f"latency     GET /health p50 direct {direct_lat:.3f} ms   through gateway {gw_lat:.3f} ms   "
        f"added {added:.3f} ms (target ≤ {TARGET_ADDED_P50_MS})"
    )
    print(
        f"failover    {args.burst} requests, host h3 killed after a third: GET ok {burst['get_ok']} lost "
        f"{burst['get_lost']}; POST ok {burst['post_ok']}, clear 502/503 {burst['post_clear_fail']}, "
        f"unclear {burst['post_unclear']} (target: 0 lost, 0 unclear)"
    )
    print(
        f"rolling     3 hosts drained/restarted/back in {r_secs:.1f} s under load: {r_ok} ok, {r_fail} failed "
        "(target 0 failed)"
    )
    met = (
        ratio >= TARGET_THROUGHPUT_RATIO
        and added <= TARGET_ADDED_P50_MS
        and burst["get_lost"] == 0
        and burst["post_unclear"] == 0
        and r_fail == 0
        and r_ok > 0
    )
    print(f"bench_gateway: targets {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
