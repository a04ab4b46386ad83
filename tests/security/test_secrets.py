"""Secrets: key files never shown by --diff; the Bearer key never over plain HTTP off the host.

- Real pyinfra CLI (``pyinfra -y --diff @local deploy.py``) runs the api_keys operation against
  this machine, as an operator's `--diff` run would against a host: creating the key file,
  then changing it.
- On the real SSH test fleet (``-m fleet``): tunnels to several hosts at once, their errors and
  their cleanup; a ship and a verify to a host whose API binds 127.0.0.5 only (not reachable
  from the operator's side) pass through SSH, while a listener on the address ship used to call
  with the key (http://<ssh address>:<api_port>) records nothing.
- Webhook URLs (they often carry tokens) in a real comfyui-api process: its log file, its
  answers, job views, execution log and database show at most scheme://host:port/….
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from comfyui_api.client import ApiClient, ApiUnavailable, Output

from comfyfleet.devkit.cli_process import run_cli
from comfyfleet.devkit.fleet import Fleet, Host
from comfyfleet.devkit.ship_fleet import ShipFleet
from comfyfleet.devkit.standin import free_port
from comfyfleet.registry import Endpoint, Registry
from comfyfleet.schedules import run_scheduled
from comfyfleet.tunnel import SshRoute, TunnelError, open_tunnel

from .conftest import ALICE, PUBLIC, WORKFLOWS, Api, Site, auth, wait_for

DEPLOY = """
from comfyfleet.deploys.api import api_keys
api_keys(name="API keys", path={dest!r}, local_file={src!r})
"""


def pyinfra_diff(tmp_path: Path, src: Path, dest: Path) -> str:
    deploy = tmp_path / "deploy.py"
    deploy.write_text(DEPLOY.format(dest=str(dest), src=str(src)))
    pyinfra = Path(sys.executable).parent / "pyinfra"
    proc = subprocess.run(
        [str(pyinfra), "-y", "--diff", "@local", str(deploy)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_api_key_file_never_shows_in_pyinfra_diff(tmp_path: Path) -> None:
    src, dest = tmp_path / "api-keys", tmp_path / "host" / "api-keys"
    dest.parent.mkdir()
    first, second = "key-alpha-" + "1" * 30, "key-bravo-" + "2" * 30
    src.write_text(f"{first}\n")
    out = pyinfra_diff(tmp_path, src, dest)
    assert dest.read_text() == f"{first}\n" and dest.stat().st_mode & 0o777 == 0o600
    src.write_text(f"{first}\n{second}\n")
    out += pyinfra_diff(tmp_path, src, dest)
    assert dest.read_text() == f"{first}\n{second}\n"
    assert "API keys" in out
    assert first not in out and second not in out
    assert "key-" not in out


# -- the Bearer key never crosses plain HTTP off the host (real SSH test fleet) --------------

HIDDEN = "127.0.0.5"
"""Where a fleet host's API binds: its own address, not the SSH address the operator uses."""


class Recorder:
    """Raw TCP listener recording every byte sent to it (whatever protocol); answers 503."""

    def __init__(self, host: str, port: int) -> None:
        self.received: list[bytes] = []
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                except OSError:
                    self.received.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class HealthApi(BaseHTTPRequestHandler):
    """A stand-in API service (named as one): answers /health with the Authorization it got."""

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"status": "ok", "auth": self.headers.get("authorization")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


def open_sockets() -> int:
    """Sockets this process holds open now."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # the directory's own descriptor, gone by now
            pass
    return count


@pytest.mark.fleet
def test_tunnels_reach_many_hosts_at_once_name_the_failing_host_and_close(
    start_host: Callable[..., Host], fleet: Fleet
) -> None:
    """Several real SSH hosts in parallel: each request rides its host's tunnel; errors name the host;
    after the block no SSH connection, socket or thread is left."""
    server = ThreadingHTTPServer((HIDDEN, 0), HealthApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    hosts = [start_host(name=f"tunnel{i}") for i in (1, 2, 3)]
    dead = start_host(name="tunneldead", unreachable=True)
    key = "tunnel-key-" + "9" * 30
    try:
        threads_before, sockets_before = set(threading.enumerate()), open_sockets()

        def call(h: Host) -> dict[str, Any]:
            route = SshRoute.for_host(h.name, h.data(), HIDDEN, port)
            with (
                open_tunnel(route) as tunnel,
                ApiClient(tunnel.base_url, key, transport=tunnel.transport) as api,
            ):
                first, second = api.health(), api.health()  # the second rides a kept-alive channel
                # The tunnel reaches the host's API only: a URL naming any other address is refused.
                with httpx.Client(transport=tunnel.transport) as raw:
                    with pytest.raises(
                        httpx.ConnectError, match=f"host {h.name}: the SSH tunnel only reaches"
                    ):
                        raw.get(f"http://{HIDDEN}:{free_port()}/x")
                return {"first": first, "second": second}

        with ThreadPoolExecutor(len(hosts)) as pool:
            answers = list(pool.map(call, hosts))
        assert all(a["first"]["auth"] == a["second"]["auth"] == f"Bearer {key}" for a in answers)
        wait_for(lambda: set(threading.enumerate()) <= threads_before, timeout=5)
        wait_for(lambda: open_sockets() <= sockets_before, timeout=5)

        # Errors name the host: nothing listening (worth a retry), an unknown host key (not).
        with pytest.raises(
            TunnelError, match=r"host tunneldead: no SSH tunnel to its API \(.*could not connect"
        ) as gone:
            with open_tunnel(SshRoute.for_host(dead.name, dead.data(), HIDDEN, port), timeout=5):
                pass
        assert gone.value.retry
        empty = fleet.root / "empty_known_hosts"
        empty.write_text("")
        stranger = SshRoute.for_host(
            "tunnel1", {**hosts[0].data(), "ssh_known_hosts_file": str(empty)}, HIDDEN, port
        )
        with pytest.raises(TunnelError, match="host tunnel1: no SSH tunnel to its API .*host key") as unknown:
            with open_tunnel(stranger, timeout=5):
                pass
        assert not unknown.value.retry
        # A port nothing listens on at the host: the client's error names the host, and it is retried.
        closed = SshRoute.for_host("tunnel2", hosts[1].data(), HIDDEN, free_port())
        with (
            open_tunnel(closed) as tunnel,
            ApiClient(tunnel.base_url, key, transport=tunnel.transport) as api,
        ):
            with pytest.raises(
                ApiUnavailable, match=r"host tunnel2: through SSH, http://127\.0\.0\.5:\d+ did not"
            ):
                api.health()
        wait_for(lambda: set(threading.enumerate()) <= threads_before, timeout=5)
    finally:
        server.shutdown()
        server.server_close()
        for h in (*hosts, dead):
            fleet.remove_host(h.name)


@pytest.fixture(scope="module")
def hidden_api(
    fleet: Fleet, start_host: Callable[..., Host], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A bootstrapped fleet host whose API binds 127.0.0.5 only, and a recorder on the address ship
    would call directly (http://<ssh_hostname>:<api_port>, here 127.0.0.1)."""
    root = tmp_path_factory.mktemp("tunnel-ship")
    env = ShipFleet(fleet, root).start()
    host = start_host(name="hiddenapi")
    recorder = Recorder("127.0.0.1", host.api_port)
    try:
        inventory = env.inventory([host], root / "inventory.py", api_listen=HIDDEN)
        env.bootstrap(inventory)
        ctx = {
            "env": env,
            "host": host,
            "inventory": inventory,
            "state": root / "state",
            "recorder": recorder,
        }
        workflow = env.workflows / "upscale.json"
        ctx["shipped"] = comfyfleet(ctx, "ship", str(workflow), "--to", str(inventory), "--env", "prod")
        yield ctx
    finally:
        recorder.close()
        fleet.remove_host("hiddenapi")
        env.stop()


def comfyfleet(ctx: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, state_dir=ctx["state"])


@pytest.mark.fleet
def test_ship_and_verify_reach_an_api_not_reachable_directly(hidden_api: dict[str, Any]) -> None:
    """The host's API is not reachable from the operator's side: ship, verify and call pass through SSH."""
    host: Host = hidden_api["host"]
    shipped = hidden_api["shipped"]
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert f"serving http://127.0.0.1:{host.api_port}/workflows/upscale" in shipped.stdout
    dep = Registry(hidden_api["state"] / "deployments.sqlite3").get("upscale", "prod")
    ssh = dict(dep.endpoints[0].ssh or {})
    assert ssh["api_host"] == HIDDEN and ssh["port"] == host.ssh_port and "password" not in ssh
    verified = comfyfleet(hidden_api, "deployments", "verify", "upscale", "--env", "prod")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    out = hidden_api["state"] / "called"
    called = comfyfleet(hidden_api, "call", "upscale", "--env", "prod", "--out", str(out))
    assert called.returncode == 0, called.stdout + called.stderr
    assert [p.read_bytes()[:4] for p in out.iterdir()] == [b"\x89PNG"]
    history = Registry(hidden_api["state"] / "deployments.sqlite3").history("upscale", "prod")
    assert [h.kind for h in history][:2] == ["verify", "ship"] and all(h.ok for h in history[:2])


@pytest.mark.fleet
def test_bearer_key_never_reaches_the_hosts_direct_address(hidden_api: dict[str, Any]) -> None:
    """Attack: listen on http://<host>:<api_port> (what ship used to call with the key) during ship,
    verify (a scheduled check's path) and call: nothing arrives there, and the key shows in no output."""
    checked = comfyfleet(hidden_api, "deployments", "verify", "upscale", "--env", "prod")
    called = comfyfleet(
        hidden_api, "call", "upscale", "--env", "prod", "--out", str(hidden_api["state"] / "c2")
    )
    assert called.returncode == 0, called.stdout + called.stderr
    shipped = hidden_api["shipped"]
    assert shipped.returncode == 0 and checked.returncode == 0, checked.stdout + checked.stderr
    key = hidden_api["env"].api_keys.read_text().strip()
    recorder: Recorder = hidden_api["recorder"]
    assert not any(b"authorization" in r.lower() for r in recorder.received), recorder.received
    assert recorder.received == []  # nothing at all went to the direct address
    assert key not in shipped.stdout + shipped.stderr + checked.stdout + checked.stderr


# -- webhook URLs (they often carry tokens) never reach logs or error texts -----------------


class Answer500(BaseHTTPRequestHandler):
    """A webhook receiver that fails every delivery (so the API logs the attempt)."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


def _job_when_delivered(api: Api, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = httpx.get(f"{api.url}/jobs/{job_id}", headers=auth(ALICE), timeout=10).json()
        return job if job.get("webhook") else None

    return wait_for(done, timeout=30)


def test_webhook_tokens_never_reach_the_api_log_or_error_texts(
    fresh_api: Callable[..., Api], public: Site
) -> None:
    """A real comfyui-api process, its real log file: webhook URLs with tokens in the path, query,
    fragment and userinfo, delivered, failing (500, nothing listening) and refused; the log shows
    scheme://host:port/… only, and no answer, job view, execution log or database holds a token."""
    api = fresh_api("--allow-outbound", f"{PUBLIC}/32")
    failing = ThreadingHTTPServer((PUBLIC, 0), Answer500)
    threading.Thread(target=failing.serve_forever, daemon=True).start()
    closed = free_port()
    tokens = {
        name: f"tok{name}" + "Z" * 20 for name in ("path", "query", "frag", "user", "ok", "loop", "500")
    }
    try:
        hooks = {
            "ok": f"{public.url}/delivered-hook?token={tokens['ok']}",
            "500": f"http://{PUBLIC}:{failing.server_address[1]}/hooks/{tokens['500']}",
            "closed": f"http://{PUBLIC}:{closed}/hooks/{tokens['path']}/x?sig={tokens['query']}#{tokens['frag']}",
        }
        jobs = {}
        for name, hook in hooks.items():
            r = api.run(ALICE, "tiny", {"input": {"color": 301}, "async": True, "webhook": hook})
            assert r.status_code == 202, r.text
            jobs[name] = _job_when_delivered(api, r.json()["id"])
        assert jobs["ok"]["webhook"]["delivered"] is True
        assert any(
            h[1] == f"/delivered-hook?token={tokens['ok']}" for h in public.hits
        )  # the receiver gets it
        assert (
            jobs["500"]["webhook"]["delivered"] is False and jobs["closed"]["webhook"]["delivered"] is False
        )
        refused = [
            api.run(ALICE, "tiny", {"input": {"color": 302}, "webhook": hook})
            for hook in (
                f"http://someone:{tokens['user']}@{PUBLIC}:{public.port}/hook",
                f"http://127.0.0.1:{public.port}/hook?token={tokens['loop']}",
            )
        ]
        assert [r.status_code for r in refused] == [422, 422], [r.text for r in refused]
        executions = httpx.get(f"{api.url}/executions", headers=auth(ALICE), timeout=10).text
    finally:
        failing.shutdown()
        failing.server_close()
    log = api.log()
    # The failed deliveries are in the log, by scheme://host:port/… only.
    assert f"to http://{PUBLIC}:{failing.server_address[1]}/… failed: HTTP 500" in log, log
    assert f"to http://{PUBLIC}:{closed}/… failed" in log, log
    texts = {
        "log": log,
        "job views": json.dumps(jobs),
        "refusals": " ".join(r.text for r in refused),
        "executions": executions,
        "database": b"".join(p.read_bytes() for p in api.tmp.glob("api.sqlite3*")).decode("latin-1"),
    }
    for where, text in texts.items():
        leaked = [t for t in tokens.values() if t in text]
        assert not leaked, f"{where} holds webhook tokens {leaked}"


def test_plain_http_api_url_to_another_machine_is_refused_before_any_host(tmp_path: Path) -> None:
    """An inventory pointing ship at http://<other machine> (a key would cross it in clear text):
    `comfyfleet ship` stops with one line naming the host and exit 2, before touching anything."""
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        "hosts = [('gpu-1', {'ssh_hostname': '127.0.0.1', 'ssh_port': 1, "
        "'api_url': 'http://203.0.113.7:3000'})]\n"
    )
    workflow = tmp_path / "wf" / "tiny.json"
    workflow.parent.mkdir()
    workflow.write_text(json.dumps(WORKFLOWS["tiny"]))
    done = comfyfleet({"state": tmp_path / "state"}, "ship", str(workflow), "--to", str(inventory))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "host gpu-1: api_url http://203.0.113.7:3000 is plain HTTP" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_ssh_route_recorded_for_watch_holds_no_password() -> None:
    """What the registry keeps to let `watch` tunnel: address, user, key path; never a password."""
    route = SshRoute.for_host(
        "gpu-1",
        {
            "ssh_hostname": "198.51.100.4",
            "ssh_user": "ubuntu",
            "ssh_password": "pw-SECRET",
            "ssh_key_password": "kp-SECRET",
        },
        "127.0.0.1",
        3000,
    )
    assert "SECRET" not in json.dumps(route.record()) and "SECRET" not in repr(route)
    assert SshRoute.from_record("gpu-1", route.record()).hostname == "198.51.100.4"


def test_deployment_recorded_without_an_ssh_route_is_not_called_with_the_key(tmp_path: Path) -> None:
    """A deployment recorded before ship tunnelled (no SSH route, plain-HTTP URL to another machine):
    a scheduled check fails with what to do instead of sending the key in clear text."""
    registry = Registry(tmp_path / "deployments.sqlite3")
    keys = tmp_path / "keys"
    keys.write_text("operator-key-" + "4" * 30 + "\n")
    dep = registry.upsert_deployment(
        name="old",
        environment="prod",
        workflow="tiny",
        workflow_path=str(tmp_path / "tiny.json"),
        manifest_hash="0" * 64,
        target="inventory.py",
        endpoints=[Endpoint("gpu-1", "http://203.0.113.9:3000/workflows/tiny", str(keys))],
    )
    outcome = run_scheduled(registry, dep.id, "health")
    assert outcome is not None and outcome.result.failure is not None
    assert outcome.result.failure.host == "gpu-1"
    assert (
        "plain HTTP" in outcome.result.failure.cause
        and "ship the deployment again" in outcome.result.failure.cause
    )
    assert outcome.result.results[-1].attempts == 1  # refused, not retried


def test_output_url_on_another_origin_never_gets_the_api_key(api: Api) -> None:
    """An output URL on another origin (a bucket, or a service answering with someone else's URL):
    the client fetches it without the Bearer key; the service's own output URLs still get it."""
    bucket = ThreadingHTTPServer((PUBLIC, 0), HealthApi)  # answers with the Authorization it got
    threading.Thread(target=bucket.serve_forever, daemon=True).start()
    try:
        with ApiClient(api.url, ALICE) as client:
            elsewhere = client.download(
                Output("x.png", url=f"http://{PUBLIC}:{bucket.server_address[1]}/x.png")
            )
            own = client.run("tiny", {"color": 303})
            data = client.download(own.outputs[0])
    finally:
        bucket.shutdown()
        bucket.server_close()
    assert json.loads(elsewhere)["auth"] is None
    assert data.startswith(b"\x89PNG")  # the service's own URL: with the key, as before
