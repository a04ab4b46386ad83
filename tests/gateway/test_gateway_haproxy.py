"""The generated gateway configuration in a real HAProxy (Debian's 2.6), in front of small HTTP backends.

Backends here are tiny threaded HTTP servers that answer with their own name (and can be told
to be slow or not ready), so queueing, routing and health can be asserted exactly. The same
configuration in front of real comfyui-api hosts over SSH is in test_gateway_fleet.py.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from local_ca import make_ca_and_server_pem

from comfyfleet.errors import BadInput
from comfyfleet.facts.haproxy import GatewayServers, GatewayView, ServerView
from comfyfleet.gateway_config import Backend, GatewaySettings, render, server_name
from comfyfleet.haproxy_runtime import Runtime


class FakeHost:
    """An HTTP server standing in for one GPU host: /ready, and everything else echoes its name."""

    def __init__(self, name: str, delay_s: float = 0.0) -> None:
        self.name = name
        self.delay_s = delay_s
        self.ready = True
        # "reset": read the request, then drop the connection with a TCP RST (a killed process with
        # unread data); "close": read it, then close without answering (a process killed mid-job);
        # "cut": answer headers and the start of the body, then close.
        self.dies: str | None = None
        self.died = 0
        self.in_flight = 0
        self.max_in_flight = 0
        lock = threading.Lock()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as comfyui-api (uvicorn) answers

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                if self.path == "/ready":
                    self.send_response(200 if host.ready else 503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                if host.dies:
                    with lock:
                        host.died += 1
                    if host.dies == "cut":  # killed between its headers and the rest of its body
                        self.send_response(200)
                        self.send_header("content-type", "application/json")
                        self.send_header("content-length", "1000")
                        self.end_headers()
                        self.wfile.write(b'{"host": "')
                        self.wfile.flush()
                    if host.dies == "reset":
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    self.close_connection = True
                    self.connection.close()
                    return
                with lock:
                    host.in_flight += 1
                    host.max_in_flight = max(host.max_in_flight, host.in_flight)
                time.sleep(host.delay_s)
                with lock:
                    host.in_flight -= 1
                body = json.dumps({"host": host.name, "path": self.path}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":  # a HEAD answer has the GET's Content-Length and no body
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LocalGateway:
    def __init__(self, directory: Path, hosts: list[FakeHost], **settings: object) -> None:
        port = _free_port()
        self.runtime = Runtime(directory / "admin.sock")
        cfg = render(
            [Backend(h.name, "127.0.0.1", h.port, 1) for h in hosts],
            GatewaySettings(
                listen="127.0.0.1",
                port=port,
                runtime_socket=str(directory / "admin.sock"),
                check_interval_ms=200,
                **settings,
            ),
        )  # type: ignore[arg-type]
        (directory / "haproxy.cfg").write_text(cfg)
        check = subprocess.run(
            ["haproxy", "-c", "-f", str(directory / "haproxy.cfg")], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(
            ["haproxy", "-db", "-f", str(directory / "haproxy.cfg")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        scheme = "https" if settings.get("pem_path") else "http"
        self.url = f"{scheme}://127.0.0.1:{port}"
        wait(
            lambda: (
                directory.joinpath("admin.sock").exists()
                and all(v.state == "up" for v in self.runtime.servers())
            )
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture()
def hosts() -> Iterator[list[FakeHost]]:
    made = [FakeHost("h1", delay_s=0.5), FakeHost("h2", delay_s=0.5)]
    yield made
    for h in made:
        h.stop()


def test_queue_bounded_one_request_per_host_and_clear_503_when_full(
    tmp_path: Path, hosts: list[FakeHost]
) -> None:
    gw = LocalGateway(tmp_path, hosts, max_queue=2, retry_after_s=7)
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda i: httpx.post(f"{gw.url}/workflows/x", json={"i": i}, timeout=30), range(8))
            )
    finally:
        gw.stop()
    ok = [a for a in answers if a.status_code == 200]
    full = [a for a in answers if a.status_code == 503]
    assert len(ok) + len(full) == 8
    # 2 hosts x 1 slot running + 2 waiting in line; the rest are told to come back.
    assert len(ok) >= 4 and len(full) >= 1, [a.status_code for a in answers]
    assert all(a.headers["retry-after"] == "7" and "already wait" in a.json()["detail"] for a in full)
    assert {a.json()["host"] for a in ok} == {"h1", "h2"}
    assert max(h.max_in_flight for h in hosts) == 1  # never two generations on one GPU


def test_not_ready_host_leaves_rotation_and_comes_back(tmp_path: Path, hosts: list[FakeHost]) -> None:
    for h in hosts:
        h.delay_s = 0
    gw = LocalGateway(tmp_path, hosts)
    try:
        hosts[0].ready = False
        wait(lambda: gw.runtime.server("h1").state == "down")
        assert {httpx.get(f"{gw.url}/workflows").json()["host"] for _ in range(10)} == {"h2"}
        hosts[1].ready = False
        wait(lambda: gw.runtime.server("h2").state == "down")
        none = httpx.get(f"{gw.url}/workflows")
        assert none.status_code == 503 and "no GPU host is ready" in none.json()["detail"]
        assert none.headers["retry-after"] == "5"
        hosts[0].ready = hosts[1].ready = True
        wait(lambda: all(v.state == "up" for v in gw.runtime.servers()))
        assert {httpx.get(f"{gw.url}/workflows").json()["host"] for _ in range(10)} == {"h1", "h2"}
        head = httpx.head(f"{gw.url}/workflows")  # Content-Length and no body is not a cut answer
        assert head.status_code == 200 and int(head.headers["content-length"]) > 0
    finally:
        gw.stop()


def test_job_ids_route_to_their_host_and_a_drained_host_still_answers_for_its_jobs(
    tmp_path: Path, hosts: list[FakeHost]
) -> None:
    for h in hosts:
        h.delay_s = 0
    gw = LocalGateway(tmp_path, hosts)
    try:
        for _ in range(5):
            assert httpx.get(f"{gw.url}/jobs/h2-abc").json()["host"] == "h2"
            assert httpx.get(f"{gw.url}/jobs/h1-abc/outputs/0").json()["host"] == "h1"
        gw.runtime.set_state("h2", "drain")
        assert gw.runtime.server("h2").state == "draining"
        assert {httpx.post(f"{gw.url}/workflows/x").json()["host"] for _ in range(6)} == {"h1"}
        assert httpx.get(f"{gw.url}/jobs/h2-abc").json()["host"] == "h2"  # its results stay reachable
        gw.runtime.set_state("h2", "maint")
        gone = httpx.get(f"{gw.url}/jobs/h2-abc")
        assert gone.status_code == 503 and "host h2 that ran this job" in gone.json()["detail"]
        gw.runtime.set_state("h2", "ready")
        gw.runtime.wait_up("h2", timeout_s=10)
        assert httpx.get(f"{gw.url}/jobs/h2-abc").json()["host"] == "h2"
    finally:
        gw.stop()


def test_tls_with_the_operators_certificate(tmp_path: Path, hosts: list[FakeHost]) -> None:
    for h in hosts:
        h.delay_s = 0
    ca, pem = make_ca_and_server_pem(tmp_path)
    gw = LocalGateway(tmp_path, hosts, pem_path=str(pem))
    try:
        assert (
            httpx.get(f"{gw.url}/workflows", verify=ssl.create_default_context(cafile=str(ca))).status_code
            == 200
        )
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{gw.url}/workflows")  # the system's CAs do not know the test CA
    finally:
        gw.stop()


def test_names_and_collisions() -> None:
    assert server_name("GPU_1.lambda") == "gpu-1-lambda"
    with pytest.raises(BadInput, match="both map to gateway name 'gpu-1'"):
        render([Backend("gpu-1", "10.0.0.1", 3000), Backend("gpu-1", "10.0.0.2", 3000)], GatewaySettings())
    with pytest.raises(BadInput, match="no letters or digits"):
        server_name("__")


@pytest.mark.parametrize("how", ["close", "reset", "cut"])
def test_host_dying_mid_request_gets_retried_gets_and_clear_502_posts_on_kept_alive_connections(
    tmp_path: Path, hosts: list[FakeHost], how: str
) -> None:
    """A client keeps its connection to the gateway open (as every HTTP client does) while a host dies
    with a request on it: a GET is answered by another host; a POST is not replayed (it may have run)
    and gets a 502 with a JSON body saying so, never a connection closed without an answer."""
    for h in hosts:
        h.delay_s = 0
    gw = LocalGateway(tmp_path, hosts)
    try:
        hosts[0].dies = how  # its /ready still passes: only requests show it is broken
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            for _ in range(6):  # kept alive: every request after the first is "not first" for HAProxy
                got = client.get("/workflows")
                assert got.status_code == 200 and got.json()["host"] == "h2", got.text
            gw.runtime.set_state("h1", "ready")  # back in rotation if an error marked it down
            wait(lambda: gw.runtime.server("h1").state == "up")
            answers = [client.post("/workflows/x", json={"i": i}) for i in range(6)]
    finally:
        gw.stop()
    assert hosts[0].died >= 2  # requests did reach the dying host
    failed = [a for a in answers if a.status_code != 200]
    assert failed, "no POST landed on the dying host"
    for a in failed:
        assert a.status_code == 502 and "it was not retried (it may have run)" in a.json()["detail"], a.text
    assert {a.json()["host"] for a in answers if a.status_code == 200} == {"h2"}


def test_status_view_shows_in_flight_queued_draining_and_down(tmp_path: Path, hosts: list[FakeHost]) -> None:
    """What `--status` shows for the gateway, read by the same shell command the deploy runs over SSH
    (``GatewayServers``: socat on the admin socket) from a real HAProxy."""
    fact = GatewayServers()

    def read() -> GatewayView:
        command = fact.command(str(tmp_path / "admin.sock")).get_raw_value()
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10).stdout
        return fact.process(out.splitlines())

    def view() -> dict[str, ServerView]:
        return {v.name: v for v in read().servers}

    for h in hosts:
        h.delay_s = 1.0
    gw = LocalGateway(tmp_path, hosts)
    try:
        assert {n: (v.state, v.in_flight, v.queued) for n, v in view().items()} == {
            "h1": ("up", 0, 0),
            "h2": ("up", 0, 0),
        }
        with ThreadPoolExecutor(6) as pool:
            burst = [pool.submit(httpx.post, f"{gw.url}/workflows/x", timeout=30) for _ in range(6)]
            wait(lambda: read().waiting >= 2)  # 2 running, the rest wait for whichever host is free first
            busy = read()
            assert all(v.in_flight == 1 for v in busy.servers), busy  # one generation per GPU
            assert all(b.result().status_code == 200 for b in burst)
            # A job's own requests wait for their host: /jobs/h1-... while h1 is busy.
            h1_busy = pool.submit(httpx.post, f"{gw.url}/workflows/x", timeout=30)
            wait(lambda: view()["h1"].in_flight + view()["h2"].in_flight == 1)
            busy_host = next(n for n, v in view().items() if v.in_flight == 1)
            job = pool.submit(httpx.get, f"{gw.url}/jobs/{busy_host}-abc", timeout=30)
            wait(lambda: view()[busy_host].queued == 1)
            assert job.result().json()["host"] == busy_host and h1_busy.result().status_code == 200
        assert read().waiting == 0 and all(v.in_flight == 0 and v.queued == 0 for v in view().values())
        gw.runtime.set_state("h2", "drain")
        assert view()["h2"].state == "draining"
        hosts[0].stop()  # the host is gone: the next health check fails to connect
        wait(lambda: view()["h1"].state == "down")
        assert view()["h1"].check.startswith("L4")  # L4CON / L4TOUT: nothing answers on its port
    finally:
        gw.stop()
