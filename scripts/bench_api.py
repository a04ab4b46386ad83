#!/usr/bin/env python3
"""Benchmark comfyui-api against ComfyUI directly: added latency (p50/p90) and throughput at concurrency 8.

The graph is EmptyImage 64x64 → SaveImage with a different colour per request, so ComfyUI
cannot answer from its cache. Each request ends with the PNG bytes in the client's hands:
direct = POST /prompt + websocket frames + GET /view; through the API = one POST
/workflows/bench (outputs as base64). Targets: ≤ 1 ms added at p50, ≥ 0.9× direct throughput.

Pile-up case (issue 14, flat serving latency): the same sequential requests with an empty
output folder and with 20,000 earlier outputs, in alternating blocks (the folder is swapped
by a rename between blocks, so machine load drifts alike for both). The earlier outputs lie
as each side leaves them: through the API one folder per job (api/<day>/<hour>/<job>/), directly
in ComfyUI's flat output/ folder (both kinds lie in the piled-up folder, for either side). Target: API p50 with the pile ≤ 1.1× API p50 empty.

    .venv/bin/python scripts/bench_api.py                      # starts the stand-in and the API
    .venv/bin/python scripts/bench_api.py --pyz dist/comfyui-api.pyz
    .venv/bin/python scripts/bench_api.py --comfyui-url http://127.0.0.1:8188 --comfyui-output-dir ~/ComfyUI/output
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import websockets
from comfyui_api.fastpost import FastPoster

ROOT = Path(__file__).resolve().parent.parent

TARGET_ADDED_P50_MS = 1.0
TARGET_THROUGHPUT_RATIO = 0.9
TARGET_PILE_RATIO = 1.1
TARGET_NO_SHARED_FS_ADDED_MS = 1.0


def graph(color: int, over_websocket: bool = False) -> dict:
    save = (
        {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}}
        if over_websocket
        else {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}}
    )
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color},
        },
        "2": save,
    }


class Colours:
    """Distinct colours across the whole run (and across runs, by a random start)."""

    def __init__(self) -> None:
        self.n = random.randrange(0xFFFFFF)

    def next(self) -> int:
        self.n = (self.n + 1) % 0x1000000
        return self.n


class Direct:
    """A well-behaved direct ComfyUI client: one websocket, frames routed by prompt id."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.cid = uuid.uuid4().hex
        self.http = httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=32))
        self.waiters: dict[str, tuple[asyncio.Future, dict]] = {}
        self.early: dict[str, list[dict]] = {}

    async def start(self) -> None:
        self.ws = await websockets.connect(
            self.url.replace("http", "ws", 1) + f"/ws?clientId={self.cid}", max_size=None
        )
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if isinstance(msg, bytes):
                continue
            f = json.loads(msg)
            pid = (f.get("data") or {}).get("prompt_id")
            if pid is None:
                continue
            if pid not in self.waiters:
                self.early.setdefault(pid, []).append(f)
                continue
            self._handle(pid, f)

    def _handle(self, pid: str, f: dict) -> None:
        fut, outs = self.waiters[pid]
        if f["type"] == "executed" and f["data"].get("output"):
            outs.update(f["data"]["output"])
        elif (
            f["type"] in ("execution_success", "execution_error", "execution_interrupted") and not fut.done()
        ):
            fut.set_result(f["type"])

    async def run(self, color: int) -> bytes:
        pid = str(uuid.uuid4())
        fut = asyncio.get_running_loop().create_future()
        self.waiters[pid] = (fut, {})
        r = await self.http.post(
            "/prompt", json={"prompt": graph(color), "client_id": self.cid, "prompt_id": pid}
        )
        r.raise_for_status()
        pid2 = r.json()["prompt_id"]
        if pid2 != pid:
            self.waiters[pid2] = self.waiters.pop(pid)
            pid = pid2
        for f in self.early.pop(pid, []):
            self._handle(pid, f)
        status = await fut
        _, outs = self.waiters.pop(pid)
        if status != "execution_success":
            raise RuntimeError(status)
        img = outs["images"][0]
        v = await self.http.get(
            "/view", params={"filename": img["filename"], "subfolder": img["subfolder"], "type": img["type"]}
        )
        v.raise_for_status()
        return v.content

    async def close(self) -> None:
        self.task.cancel()
        await self.ws.close()
        await self.http.aclose()


class ThroughApi:
    def __init__(self, url: str, workflow: str = "bench") -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=32))
        self.workflow = workflow

    async def start(self) -> None:
        pass

    async def run(self, color: int) -> bytes:
        r = await self.http.post(f"/workflows/{self.workflow}", json={"input": {"color": color}})
        r.raise_for_status()
        return base64.b64decode(r.json()["outputs"][0]["base64"])

    async def close(self) -> None:
        await self.http.aclose()


async def timed(client, colours: Colours) -> float:
    t = time.perf_counter()
    data = await client.run(colours.next())
    dt = time.perf_counter() - t
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return dt


async def latency(
    direct: Direct, api: ThroughApi, colours: Colours, n: int
) -> tuple[list[float], list[float]]:
    d, a = [], []
    for i in range(n):
        # Alternate which goes first so drift hits both alike.
        pair = (direct, api) if i % 2 == 0 else (api, direct)
        for c in pair:
            dt = await timed(c, colours)
            (d if c is direct else a).append(dt)
    return d, a


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPU: dict[str, list[float]] = {}


async def throughput(
    client, colours: Colours, n: int, concurrency: int, pids: dict[str, int] | None = None, label: str = ""
) -> float:
    count = 0
    pids = pids or {}
    before = {k: proc_cpu(p) for k, p in pids.items()}
    client_before = time.process_time()

    async def worker() -> None:
        nonlocal count
        while count < n:
            count += 1
            await timed(client, colours)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = n / (time.perf_counter() - t)
    if label:
        used = {k: (proc_cpu(p) - before[k]) * 1000 / n for k, p in pids.items()}
        used["client"] = (time.process_time() - client_before) * 1000 / n
        CPU.setdefault(label, []).append(used)
    return rate


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {timeout}s")


async def measure(
    comfy_url: str, api_url: str, n: int, tn: int, concurrency: int, pids: dict[str, int], rounds: int
) -> tuple[dict, bool]:
    colours = Colours()
    direct, api = Direct(comfy_url), ThroughApi(api_url)
    await direct.start()
    await api.start()
    try:
        await latency(direct, api, colours, 20)  # warm connections and caches
        d, a = await latency(direct, api, colours, n)
        # Paired rounds, order alternating, compared pair by pair: load from other processes
        # on the machine drifts, and each pair sees nearly the same load.
        pairs = []
        for i in range(rounds):
            order = (direct, api) if i % 2 == 0 else (api, direct)
            got = {}
            for c in order:
                label = "direct" if c is direct else "via API"
                got[label] = await throughput(c, colours, tn, concurrency, pids, label)
            pairs.append((got["direct"], got["via API"]))
    finally:
        await direct.close()
        await api.close()
    res = {
        "direct_p50_ms": statistics.median(d) * 1000,
        "api_p50_ms": statistics.median(a) * 1000,
        "direct_p90_ms": pct(d, 90) * 1000,
        "api_p90_ms": pct(a, 90) * 1000,
        "direct_rps": statistics.median(p[0] for p in pairs),
        "api_rps": statistics.median(p[1] for p in pairs),
        "ratio": statistics.median(p[1] / p[0] for p in pairs),
        "pairs": pairs,
    }
    res["added_p50_ms"] = res["api_p50_ms"] - res["direct_p50_ms"]
    res["added_p90_ms"] = res["api_p90_ms"] - res["direct_p90_ms"]
    ok = res["added_p50_ms"] <= TARGET_ADDED_P50_MS and res["ratio"] >= TARGET_THROUGHPUT_RATIO
    return res, ok


class ViewOnly:
    """GET one existing output from ComfyUI's /view over a kept-alive socket (what the API adds, at least)."""

    def __init__(self, comfy_url: str, query: str) -> None:
        self.poster = FastPoster(comfy_url)
        self.path = "/view?" + query

    @classmethod
    async def of(cls, api_url: str, comfy_url: str) -> ViewOnly:
        async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
            out = (await http.post("/workflows/bench", json={"input": {"color": 1}})).json()["outputs"][0]
        return cls(comfy_url, urlencode({k: out[k] for k in ("filename", "subfolder", "type")}))

    async def run(self, color: int) -> bytes:
        status, body = await self.poster.get(self.path)
        assert status == 200, status
        return body

    async def close(self) -> None:
        await self.poster.close()


async def shared_vs_not(
    shared_url: str, remote_url: str, n: int, websocket: bool, comfy_url: str
) -> dict[str, list[float]]:
    """Sequential latency through an API reading ComfyUI's output folder and one that cannot, in turns.

    "remote": SaveImage, the file fetched from ComfyUI's /view; "websocket" (when ComfyUI has
    SaveImageWebsocket): the image comes with the websocket frames, no file at all.
    """
    colours = Colours()
    clients: dict[str, Any] = {"shared": ThroughApi(shared_url), "remote": ThroughApi(remote_url)}
    if websocket:
        clients["websocket"] = ThroughApi(remote_url, "benchws")
    samples: dict[str, list[float]] = {k: [] for k in clients}
    clients["view"] = await ViewOnly.of(shared_url, comfy_url)  # ComfyUI's /view alone: the floor
    samples["view"] = []
    order = list(clients)
    try:
        for i in range(20 + n):  # the first 20 rounds warm connections and caches
            for name in order:
                dt = await timed(clients[name], colours)
                if i >= 20:
                    samples[name].append(dt)
            order = order[1:] + order[:1]
    finally:
        for c in clients.values():
            await c.close()
    return samples


def make_pile(folder: Path, count: int, png: bytes) -> None:
    """count earlier outputs as each side leaves them: flat bench_NNNNN_.png, and one folder per API job."""
    day = folder / "api" / time.strftime("%Y-%m-%d/%H", time.gmtime())  # all in one hour: the worst case
    day.mkdir(parents=True)
    for i in range(1, count + 1):
        (folder / f"bench_{i:05d}_.png").write_bytes(png)
        job = day / uuid.uuid4().hex
        job.mkdir()
        (job / "bench_00001_.png").write_bytes(png)


async def pile_up(comfy_url: str, api_url: str, out_dir: Path, count: int, n: int, rounds: int) -> dict:
    """p50 per side with an empty output folder and with `count` earlier outputs, blocks alternating."""
    colours = Colours()
    direct, api = Direct(comfy_url), ThroughApi(api_url)
    await direct.start()
    await api.start()
    holders = {"empty": out_dir.with_name("output.empty"), "pile": out_dir.with_name("output.pile")}
    png = await api.run(colours.next())
    out_dir.rename(out_dir.with_name("output.before"))
    holders["empty"].mkdir()
    make_pile(holders["pile"], count, png)
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for r in range(rounds):
            for state in ("empty", "pile") if r % 2 == 0 else ("pile", "empty"):
                holders[state].rename(out_dir)
                try:
                    # One side at a time: a direct save listing 20,000 files must not slow the API's turn.
                    for c in (direct, api) if r % 2 == 0 else (api, direct):
                        side = "direct" if c is direct else "api"
                        for _ in range(n):
                            samples.setdefault((side, state), []).append(await timed(c, colours))
                finally:
                    out_dir.rename(holders[state])
    finally:
        await direct.close()
        await api.close()
    return {k: statistics.median(v) * 1000 for k, v in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--comfyui-url",
        default=os.environ.get("COMFYFLEET_TEST_COMFYUI_URL"),
        help="a running ComfyUI (default: start the stand-in)",
    )
    ap.add_argument(
        "--comfyui-output-dir", type=Path, help="that ComfyUI's output folder, if on this machine"
    )
    ap.add_argument("--pyz", type=Path, help="run the built artifact instead of the source package")
    ap.add_argument("-n", type=int, default=300, help="sequential requests per side for latency")
    ap.add_argument("--throughput-requests", type=int, default=300, help="requests per throughput run")
    ap.add_argument("--rounds", type=int, default=5, help="paired throughput runs (direct, via API)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument(
        "--pile", type=int, default=20000, help="earlier outputs in the pile-up case (0: skip it)"
    )
    ap.add_argument("--pile-requests", type=int, default=30, help="sequential requests per side per block")
    ap.add_argument("--pile-rounds", type=int, default=8, help="blocks per state (empty, piled up)")
    args = ap.parse_args()

    from comfyfleet.devkit.standin import WEBSOCKET_IMAGE_SAVE, Standin, free_port

    procs: list[subprocess.Popen] = []
    standin = None
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        tmpdir = Path(tmp)
        try:
            if args.comfyui_url:
                comfy_url, out_dir = args.comfyui_url.rstrip("/"), args.comfyui_output_dir
            else:
                standin = Standin(tmpdir / "comfy")
                standin.add_custom_node("websocket_image_save", WEBSOCKET_IMAGE_SAVE)
                standin.start()
                comfy_url, out_dir = standin.url, tmpdir / "comfy" / "output"
            wf = tmpdir / "workflows"
            wf.mkdir()
            (wf / "bench.json").write_text(json.dumps(graph(0)))
            (wf / "benchws.json").write_text(json.dumps(graph(0, over_websocket=True)))
            port = free_port()
            runner = [sys.executable, str(args.pyz)] if args.pyz else [sys.executable, "-m", "comfyui_api"]
            cmd = [
                *runner,
                "--comfyui-url",
                comfy_url,
                "--workflows",
                str(wf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--db",
                str(tmpdir / "api.sqlite3"),
                "--log-level",
                "warning",
                "--rate-limit",
                "1000000",
                "--rate-burst",
                "100000",
            ]
            remote_url = None
            if out_dir:
                # A second API beside it without ComfyUI's output folder (a separate API host, Modal
                # volumes): outputs come from ComfyUI over HTTP.
                port2 = free_port()
                cmd2 = list(cmd)
                cmd2[cmd2.index("--port") + 1] = str(port2)
                cmd2[cmd2.index("--db") + 1] = str(tmpdir / "api-remote.sqlite3")
                procs.append(subprocess.Popen(cmd2, cwd=ROOT))
                remote_url = f"http://127.0.0.1:{port2}"
                cmd += ["--comfyui-output-dir", str(out_dir)]
            procs.insert(0, subprocess.Popen(cmd, cwd=ROOT))
            api_url = f"http://127.0.0.1:{port}"
            for url in (api_url, remote_url):
                if url is None:
                    continue
                wait_http(url + "/health")
                deadline = time.monotonic() + 30
                while "bench" not in httpx.get(url + "/health").json()["workflows"]:
                    if time.monotonic() > deadline:
                        raise SystemExit("the API did not load the bench workflow")
                    time.sleep(0.05)
            pids = {"api": procs[0].pid}
            if standin is not None and standin.proc is not None:
                pids["comfyui"] = standin.proc.pid
            res, ok = asyncio.run(
                measure(
                    comfy_url, api_url, args.n, args.throughput_requests, args.concurrency, pids, args.rounds
                )
            )
            has_ws = "SaveImageWebsocket" in httpx.get(comfy_url + "/object_info/SaveImageWebsocket").text
            remote = (
                asyncio.run(shared_vs_not(api_url, remote_url, args.n, has_ws, comfy_url))
                if remote_url
                else None
            )
            pile = None
            if args.pile and out_dir is not None:
                pile = asyncio.run(
                    pile_up(
                        comfy_url, api_url, Path(out_dir), args.pile, args.pile_requests, args.pile_rounds
                    )
                )
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
            if standin is not None:
                standin.stop()
    print(
        f"ComfyUI: {comfy_url}  ({'stand-in' if standin else 'given'}), API: {'pyz' if args.pyz else 'source'}"
    )
    print(f"latency (n={args.n} each, sequential, PNG bytes in hand):")
    print(f"  direct   p50 {res['direct_p50_ms']:.3f} ms   p90 {res['direct_p90_ms']:.3f} ms")
    print(f"  via API  p50 {res['api_p50_ms']:.3f} ms   p90 {res['api_p90_ms']:.3f} ms")
    print(f"  added    p50 {res['added_p50_ms']:+.3f} ms   p90 {res['added_p90_ms']:+.3f} ms")
    print(
        f"throughput at concurrency {args.concurrency} ({args.rounds} paired runs of {args.throughput_requests}):"
    )
    for d, a in res["pairs"]:
        print(f"  run: direct {d:.1f} req/s, via API {a:.1f} req/s ({a / d:.2f}x)")
    print(
        f"  median: direct {res['direct_rps']:.1f} req/s   via API {res['api_rps']:.1f} req/s   "
        f"ratio {res['ratio']:.2f}x (median of pairs)"
    )
    for label, runs in CPU.items():
        avg = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        print(
            f"  CPU per request ({label}): "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in avg.items() if not (label == "direct" and k == "api"))
        )
    load = os.getloadavg()[0]
    print(
        f"  load average during the run: {load:.1f} on {os.cpu_count()} cores (other work skews throughput)"
    )
    p50_ok = res["added_p50_ms"] <= TARGET_ADDED_P50_MS
    tp_ok = res["ratio"] >= TARGET_THROUGHPUT_RATIO
    print(
        f"  overhead: added p50 <= {TARGET_ADDED_P50_MS} ms {'met' if p50_ok else 'MISSED'} "
        f"({res['added_p50_ms']:+.3f} ms); throughput >= {TARGET_THROUGHPUT_RATIO}x {'met' if tp_ok else 'MISSED'} "
        f"({res['ratio']:.2f}x)"
    )
    remote_ok = False
    if remote is None:
        print("no-shared-filesystem case skipped (needs ComfyUI's output folder on this machine): MISSED")
    else:
        p50s = {k: statistics.median(v) * 1000 for k, v in remote.items()}
        p90s = {k: pct(v, 90) * 1000 for k, v in remote.items()}
        added = p50s["remote"] - p50s["shared"]
        remote_ok = added <= TARGET_NO_SHARED_FS_ADDED_MS
        print(f"without a shared filesystem (n={args.n} each, in turns):")
        print(
            f"  SaveImage, API reads the output folder  p50 {p50s['shared']:.3f} ms   p90 {p90s['shared']:.3f} ms"
        )
        print(
            f"  SaveImage, API fetches ComfyUI's /view  p50 {p50s['remote']:.3f} ms   p90 {p90s['remote']:.3f} ms"
        )
        print(
            f"  ComfyUI's /view alone (kept-alive socket)  p50 {p50s['view']:.3f} ms   p90 {p90s['view']:.3f} ms"
            "   (the least a fetch over /view adds)"
        )
        if "websocket" in p50s:
            print(
                f"  SaveImageWebsocket, image in the frames p50 {p50s['websocket']:.3f} ms   "
                f"p90 {p90s['websocket']:.3f} ms   ({p50s['websocket'] - p50s['shared']:+.3f} ms vs the folder)"
            )
        else:
            print(
                "  SaveImageWebsocket: not in this ComfyUI (its checkout ships custom_nodes/websocket_image_save.py)"
            )
        print(
            f"  /view added p50 {added:+.3f} ms (target <= +{TARGET_NO_SHARED_FS_ADDED_MS} ms): "
            f"{'met' if remote_ok else 'MISSED'}"
        )
    ok = ok and remote_ok
    if pile is None:
        print("pile-up case skipped (needs --pile > 0 and ComfyUI's output folder on this machine): MISSED")
        return 1
    api_ratio = pile[("api", "pile")] / pile[("api", "empty")]
    direct_ratio = pile[("direct", "pile")] / pile[("direct", "empty")]
    print(
        f"pile-up ({args.pile} earlier outputs, {args.pile_rounds} blocks x {args.pile_requests} requests per state):"
    )
    print(
        f"  via API  p50 empty {pile[('api', 'empty')]:.3f} ms   with pile {pile[('api', 'pile')]:.3f} ms   "
        f"({api_ratio:.2f}x; one folder per job)"
    )
    print(
        f"  direct   p50 empty {pile[('direct', 'empty')]:.3f} ms   with pile {pile[('direct', 'pile')]:.3f} ms   "
        f"({direct_ratio:.2f}x; ComfyUI's flat output folder)"
    )
    pile_ok = api_ratio <= TARGET_PILE_RATIO
    print(
        f"targets {'met' if ok and pile_ok else 'MISSED'}: added p50, throughput, no shared filesystem "
        f"(above); pile-up p50 <= "
        f"{TARGET_PILE_RATIO}x empty {'met' if pile_ok else 'MISSED'} ({api_ratio:.2f}x)"
    )
    return 0 if ok and pile_ok else 1


if __name__ == "__main__":
    sys.exit(main())
