"""The gateway on the SSH test fleet: HAProxy deployed by `comfyfleet gateway deploy` on its own host,
in front of two GPU hosts running comfyui-api + the ComfyUI stand-in (real pyinfra, SSH, docker).

One module-scoped fleet (the deploys cost minutes): HTTPS with a CA made here, one key set
passed through, async job results reachable whichever host ran them, the capacity limit, a
rolling `--restart-api-only` drained through the gateway under load with no failed request,
failover when a host's API dies, the gateway's view in `common INVENTORY --status` and `gateway
status` (draining, busy with requests waiting, down), and outputs uploaded to a real S3 server
(Ceph's radosgw, comfyfleet.devkit.radosgw).
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from local_ca import make_ca_and_server_pem

from comfyfleet.deploys.gateway import deploy_gateway
from comfyfleet.devkit.cli_process import run_cli
from comfyfleet.devkit.fleet import Fleet, Host
from comfyfleet.devkit.radosgw import S3Server, radosgw
from comfyfleet.gateway import gateway_targets
from comfyfleet.operations.haproxy import WAITING_ROW
from comfyfleet.runner import run

pytestmark = pytest.mark.fleet
ROOT = Path(__file__).resolve().parents[2]
KEY = "gateway-test-key-0123456789abcdef"
TINY = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x224466},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "gw"}},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Setup:
    def __init__(
        self, inventory: Path, url: str, ca: Path, hosts: list[Host], gateway: Host, s3: S3Server
    ) -> None:
        self.inventory = inventory
        self.url = url
        self.tls = ssl.create_default_context(cafile=str(ca))
        self.hosts = hosts
        self.gateway = gateway
        self.s3 = s3

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, verify=self.tls, timeout=60, headers={"authorization": f"Bearer {KEY}"}, **kw
        )

    def cli_view(self, *args: str) -> dict[str, list[str]]:
        """The gateway table the CLI prints: host -> [host, state, in flight, queued, last check]."""
        cli = run_cli(*args)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        lines = cli.stdout.splitlines()
        start = max(i for i, line in enumerate(lines) if line.strip() == "gateway")
        rows = {}
        for line in lines[start + 1 :]:
            cells = [c.strip() for c in re.split("[\u2502\u2503]", line)[1:-1]]
            if len(cells) == 5 and cells[0] not in ("", "host"):
                rows[cells[0]] = cells
        return rows

    def all_up(self) -> bool:
        return all(r[1] == "up" for name, r in self.view().items() if name != WAITING_ROW)

    def view(self) -> dict[str, list[str]]:
        result = run(gateway_targets(str(self.inventory))[0], "gateway-status")
        assert result.ok, [(h.host, h.reason) for h in result.hosts]
        return {r[0]: r for r in result.hosts[0].report.sections["gateway"].rows}


@pytest.fixture(scope="module")
def gw(
    fleet: Fleet,
    fleet_hosts: dict[str, Host],
    start_host: Callable[..., Host],
    write_inventory: Callable[..., Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("gateway")
    artifact = tmp / "comfyui-api.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build-binary"), "--out", str(artifact)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wf = tmp / "workflows"
    wf.mkdir()
    (wf / "tiny.json").write_text(json.dumps(TINY))
    keys = tmp / "api-keys"
    keys.write_text(KEY + "\n")
    keys.chmod(0o600)
    ca, pem = make_ca_and_server_pem(tmp)
    port = _free_port()
    gateway = start_host(name="gw1", provider="lambda")
    hosts = [fleet_hosts["lambda1"], fleet_hosts["dc1"]]
    with radosgw(tmp / "s3") as s3:
        store = s3.write_config(tmp / "object-store.json", prefix="fleet/")
        inv = write_inventory(
            [*hosts, gateway],
            tmp / "inventory.py",
            api_keys_file=str(keys),
            workflows_dir=str(wf),
            api_binary=str(artifact),
            object_store_file=str(store),
            gateway_port=port,
            gateway_cert_file=str(pem),
            gateway_max_queue=4,
            gateway_backend_group="gpu",
        )
        with inv.open("a") as f:
            f.write(
                "gpu = [e for e in fleet if e[0] != 'gw1']\ngateway = [e for e in fleet if e[0] == 'gw1']\n"
            )
        target = f"{inv}:gpu"
        for task in ("runtime", "update-binary"):
            result = run(target, task)
            assert result.ok, (task, [(h.host, h.reason) for h in result.hosts])
        cli = run_cli("gateway", "deploy", str(inv))
        assert cli.returncode == 0, cli.stdout + cli.stderr
        setup = Setup(inv, f"https://127.0.0.1:{port}", ca, hosts, gateway, s3)
        deadline = time.monotonic() + 60
        while not setup.all_up():
            assert time.monotonic() < deadline, setup.view()
            time.sleep(1)
        yield setup
    fleet.remove_host("gw1")


def test_redeploy_changes_nothing_and_status_shows_both_hosts(gw: Setup) -> None:
    gateways, backends = gateway_targets(str(gw.inventory))
    backend_data = {"gateway_backends": [b.__dict__ for b in backends]}
    again = run([(n, {**d, **backend_data}) for n, d in gateways], deploy_gateway)
    assert again.hosts[0].status == "no change", again.hosts[0].changed
    cli = run_cli("gateway", "status", str(gw.inventory))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert (
        "lambda1" in (cli.stdout + cli.stderr)
        and "dc1" in (cli.stdout + cli.stderr)
        and "up" in (cli.stdout + cli.stderr)
    )
    mode = gw.gateway.exec("stat -c %a /etc/haproxy/certs/fleet.pem", user="root").stdout.strip()
    assert mode == "600"


def test_https_one_key_set_async_jobs_and_s3_outputs(gw: Setup) -> None:
    with gw.client() as c:
        assert httpx.get(f"{gw.url}/workflows/tiny", verify=gw.tls).status_code in (401, 405)
        assert httpx.post(f"{gw.url}/workflows/tiny", json={}, verify=gw.tls).status_code == 401
        ran_on: set[str] = set()
        job_ids = []
        for _ in range(6):
            r = c.post("/workflows/tiny", json={"input": {}, "async": True})
            assert r.status_code == 202, r.text
            job_ids.append(r.json()["id"])
        for job_id in job_ids:
            ran_on.add(job_id.split("-", 1)[0])
            deadline = time.monotonic() + 60
            while (job := c.get(f"/jobs/{job_id}")).json()["status"] not in ("completed", "failed"):
                assert job.status_code in (200, 202), job.text
                assert time.monotonic() < deadline
                time.sleep(0.2)
            body = job.json()
            assert body["status"] == "completed", body
            (out,) = [o for o in body["outputs"] if "filename" in o]
            assert out["url"].startswith(f"{gw.s3.endpoint}/{gw.s3.bucket}/fleet/{job_id}/")
            png = httpx.get(out["url"])
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert ran_on == {"lambda1", "dc1"}  # both hosts served, each job found where it ran


def test_capacity_one_generation_per_host(gw: Setup) -> None:
    def one(i: int) -> int:
        with gw.client() as c:
            return c.post("/workflows/tiny", json={"input": {}}).status_code

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = gw.gateway.exec(
        "printf 'show stat\\n' | socat stdio UNIX-CONNECT:/run/haproxy/admin.sock", user="root"
    ).stdout
    rows = [
        line.split(",") for line in out.splitlines() if line.startswith("fleet,") and "BACKEND" not in line
    ]
    assert {r[1] for r in rows} == {"lambda1", "dc1"}
    assert all(int(r[5]) <= 1 for r in rows), rows  # smax: never more than one request on a host


def test_rolling_restart_drains_through_the_gateway_without_failed_requests(gw: Setup) -> None:
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def load() -> None:
        with gw.client() as c:
            while not done.is_set():
                r = c.post("/workflows/tiny", json={"input": {}})
                count[0] += 1
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                time.sleep(0.7)  # under the API's per-key rate limit (120/min) even with one host serving

    threads = [threading.Thread(target=load)]
    for t in threads:
        t.start()
    try:
        cli = run_cli("common", f"{gw.inventory}:gpu", "--restart-api-only", "--rolling", "1")
    finally:
        done.set()
        for t in threads:
            t.join()
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert failures == [] and count[0] > 0
    assert gw.all_up()


def test_failover_when_a_hosts_api_dies(gw: Setup) -> None:
    victim = gw.hosts[0]
    container = f"{victim.container_prefix}comfyui-api"
    answers: dict[str, list[str]] = {"GET": [], "POST": []}
    stop = threading.Event()

    def client_loop(method: str) -> None:
        # One kept-alive connection per client, no retry of its own: what the gateway answers counts.
        with gw.client() as c:
            while not stop.is_set():
                try:
                    r = c.get("/health") if method == "GET" else c.post("/workflows/tiny", json={"input": {}})
                    detail = r.json().get("detail", "") if r.status_code != 200 else ""
                    answers[method].append(f"{r.status_code} {detail}".strip())
                except httpx.HTTPError as exc:
                    answers[method].append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05 if method == "GET" else 0.25)  # POSTs under the per-key rate limit

    loops = [threading.Thread(target=client_loop, args=(m,)) for m in ("GET", "GET", "POST", "POST")]
    for t in loops:
        t.start()
    time.sleep(1.5)
    victim.exec(f"docker kill {container}", user="root")  # SIGKILL with requests under way
    time.sleep(3)
    stop.set()
    for t in loops:
        t.join()
    assert answers["GET"] and set(answers["GET"]) == {"200"}, answers["GET"]  # retried on dc1
    unclear = [a for a in answers["POST"] if a != "200" and "it was not retried (it may have run)" not in a]
    assert answers["POST"] and not unclear, answers["POST"]  # 200, or a clear 502 when it may have run
    try:
        with gw.client() as c:
            answers = [c.post("/workflows/tiny", json={"input": {}}) for _ in range(6)]
            assert [a.status_code for a in answers] == [200] * 6
            assert {a.json()["id"].split("-", 1)[0] for a in answers} == {"dc1"}
            gone = c.get("/jobs/lambda1-0123456789abcdef0123456789abcdef")
            assert gone.status_code == 503 and "host lambda1" in gone.json()["detail"]
            assert gone.headers["retry-after"] == "5"
        rows = gw.cli_view("gateway", "status", str(gw.inventory))
        assert rows["lambda1"][1] == "down" and rows["dc1"][1] == "up", rows
    finally:
        victim.exec(f"docker start {container}", user="root")
    deadline = time.monotonic() + 60
    while gw.view()["lambda1"][1] != "up":
        assert time.monotonic() < deadline
        time.sleep(1)


def test_status_shows_the_gateways_view_draining_then_busy_with_requests_waiting(gw: Setup) -> None:
    """`comfyfleet common INVENTORY --status` ends with the gateway's view; `gateway status` shows it alone."""
    inv = str(gw.inventory)
    drained = run_cli("gateway", "drain", inv, "dc1")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    try:
        rows = gw.cli_view("common", f"{inv}:gpu", "--status")
        assert rows["dc1"][1:4] == ["draining", "0", "0"] and rows["lambda1"][1] == "up", rows
    finally:
        ready = run_cli("gateway", "ready", inv, "dc1")
        assert ready.returncode == 0, ready.stdout + ready.stderr
    # ComfyUI frozen on both hosts (docker pause; their APIs stay ready) while 5 generations arrive:
    # one runs on each host, the other 3 wait at the gateway for whichever host frees up first.
    comfyui = [(h, f"{h.container_prefix}comfyui") for h in gw.hosts]
    for h, container in comfyui:
        h.exec(f"docker pause {container}", user="root")
    with ThreadPoolExecutor(5) as pool:
        try:

            def generate(_: int) -> int:
                with gw.client() as c:
                    return c.post("/workflows/tiny", json={"input": {}}).status_code

            burst = [pool.submit(generate, i) for i in range(5)]
            deadline = time.monotonic() + 30
            while gw.view()[WAITING_ROW][3] != "3":
                assert time.monotonic() < deadline, gw.view()
            rows = gw.cli_view("gateway", "status", inv)
        finally:
            for h, container in comfyui:
                h.exec(f"docker unpause {container}", user="root")
        assert [b.result() for b in burst] == [200] * 5
    assert rows["lambda1"][1:3] == ["up", "1"] and rows["dc1"][1:3] == ["up", "1"], rows
    assert rows[WAITING_ROW][3] == "3", rows
