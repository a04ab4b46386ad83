"""Tier 1 on the SSH test fleet: update-binary, restart-api-only, verify-endpoints with real pyinfra and docker.

Acceptance of the API issue: from a fresh build, ``update-binary`` puts the artifact on two
hosts (uploading nothing when it did not change, recreating only the API container when it
did) and ``verify-endpoints`` shows every workflow served and generating.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyfleet.devkit.fleet import Fleet, Host
from comfyfleet.runner import RunOptions, RunResult, run

pytestmark = pytest.mark.fleet
ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x224466},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tier1"}},
}
SCALED = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0xFF0000},
    },
    "2": {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["1", 0],
            "upscale_method": "nearest-exact",
            "width": 48,
            "height": 48,
            "crop": "disabled",
        },
    },
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "scaled"}},
}


def by_host(result: RunResult) -> dict[str, Any]:
    return {h.host: h for h in result.hosts}


def executions(host: Host) -> int:
    """Generations the host's API has recorded (its execution log, read inside its container)."""
    code = (
        "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("
        "'select count(*) from executions').fetchone()[0])"
    )
    db = f"{host.data_root}/api/executions.sqlite3"
    out = host.exec(f'docker exec {host.container_prefix}comfyui-api python3 -c "{code}" {db}', user="root")
    return int(out.stdout.strip())


def started_at(host: Host, container: str) -> str:
    return host.exec(f"docker inspect -f '{{{{.State.StartedAt}}}}' {container}", user="root").stdout.strip()


def connected_health(host: Host, timeout: float = 60) -> dict[str, Any]:
    """/health once the API has connected to ComfyUI (or the last answer at the deadline).

    update-binary waits for /health (the process is up); the websocket to ComfyUI and the
    /object_info fetch follow, which takes seconds on real ComfyUI's 600-odd classes.
    """
    # Without a key /health answers only that the process is up: send the host's generated key.
    key = host.exec(f"head -n1 {host.data_root}/api/api-keys", user="root").stdout.strip()
    auth = {"authorization": f"Bearer {key}"}
    deadline = time.monotonic() + timeout
    while True:
        health = dict(httpx.get(f"http://127.0.0.1:{host.api_port}/health", headers=auth, timeout=10).json())
        if health["comfyui"]["reachable"] or time.monotonic() > deadline:
            return health
        time.sleep(0.5)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "comfyui-api.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build-binary"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def test_update_binary_restart_and_verify_on_two_hosts(
    fleet: Fleet,
    fleet_hosts: dict[str, Host],
    write_inventory: Callable[..., Path],
    artifact: Path,
    tmp_path: Path,
) -> None:
    wf = tmp_path / "workflows"
    wf.mkdir()
    (wf / "tiny.json").write_text(json.dumps(TINY))
    (wf / "scaled.json").write_text(json.dumps(SCALED))
    (wf / "scaled.api.yaml").write_text("inputs:\n  width: {maximum: 64}\n")
    (wf / "overrides.yaml").write_text("nodes: {}\n")  # not a workflow: stays local
    hosts = list(fleet_hosts.values())
    inv = write_inventory(hosts, tmp_path / "inventory.py")
    data = {"workflows_dir": str(wf), "api_binary": str(artifact), "verify_timeout": 120}

    runtime = run(str(inv), "runtime", data)
    assert runtime.ok, [(h.host, h.reason) for h in runtime.hosts]
    first = run(str(inv), "update-binary", data)
    for name, h in by_host(first).items():
        assert h.status in ("changed", "no change"), f"{name}: {h.reason}"
    for host in hosts:
        health = connected_health(host)
        assert health["comfyui"]["reachable"] is True, health
        assert sorted(health["workflows"]) == ["scaled", "tiny"]
        # Listening beyond loopback: a key is required, and was generated root-only on the host.
        assert httpx.post(f"http://127.0.0.1:{host.api_port}/workflows/tiny", json={}).status_code == 401
        mode = host.exec(f"stat -c %a {host.data_root}/api/api-keys", user="root").stdout.strip()
        assert mode == "600"
        assert host.exec(f"ls {host.data_root}/api/workflows").stdout.split() == [
            "scaled.api.yaml",
            "scaled.json",
            "tiny.json",
        ]

    # Same artifact again: nothing uploaded, nothing restarted.
    api_started = {h.name: started_at(h, f"{h.container_prefix}comfyui-api") for h in hosts}
    again = run(str(inv), "update-binary", data)
    for name, h in by_host(again).items():
        assert h.status == "no change", f"{name}: {h.changed}"

    # A dry run plans the checks and runs none of them; a real run generates once per workflow.
    before = {h.name: executions(h) for h in hosts}
    planned = run(str(inv), "verify-endpoints", data, RunOptions(dry_run=True))
    assert all(h.status == "would change" for h in planned.hosts), [(h.host, h.reason) for h in planned.hosts]
    assert {h.name: executions(h) for h in hosts} == before
    verify = run(str(inv), "verify-endpoints", data)
    assert {h.name: executions(h) for h in hosts} == {name: n + 2 for name, n in before.items()}
    for name, h in by_host(verify).items():
        assert h.ok, f"{name}: {h.reason}"
        rows = {r[0]: r for r in h.report.sections["workflow endpoints"].rows}
        assert set(rows) == {"scaled", "tiny"}
        for row in rows.values():
            assert row[1] == "yes" and row[2] == "200" and int(row[4]) > 0 and row[6] == "ok", row
        checks = {r[0]: r[1] for r in h.report.sections["comfyui-api"].rows}
        assert checks == {"/health": "ok", "/ready": "ok"}
        # `comfyui-api verify` read the key on the host: it is in nothing the operator's side got back.
        host = next(x for x in hosts if x.name == name)
        key = host.exec(f"cat {host.data_root}/api/api-keys", user="root").stdout.strip()
        assert len(key) >= 16 and key not in repr(h), "the API key left the host"

    # A new artifact: uploaded, the API container recreated, ComfyUI's left alone.
    changed_pyz = tmp_path / "changed.pyz"
    changed_pyz.write_bytes(artifact.read_bytes())
    with zipfile.ZipFile(changed_pyz, "a") as zf:
        zf.writestr("comfyui_api/_marker.txt", "a changed build")
    comfy_started = {h.name: started_at(h, f"{h.container_prefix}comfyui") for h in hosts}
    third = run(str(inv), "update-binary", {**data, "api_binary": str(changed_pyz)})
    for name, h in by_host(third).items():
        assert h.status == "changed", f"{name}: {h.reason}"
        assert any("artifact" in op for op in h.changed) and any("container" in op for op in h.changed), (
            h.changed
        )
    for host in hosts:
        assert started_at(host, f"{host.container_prefix}comfyui") == comfy_started[host.name]
        assert started_at(host, f"{host.container_prefix}comfyui-api") != api_started[host.name]
        sha = host.exec(f"sha256sum {host.data_root}/api/comfyui-api.pyz").stdout.split()[0]
        import hashlib

        assert sha == hashlib.sha256(changed_pyz.read_bytes()).hexdigest()

    # restart-api-only restarts the API container and nothing else.
    before = {
        h.name: (
            started_at(h, f"{h.container_prefix}comfyui"),
            started_at(h, f"{h.container_prefix}comfyui-api"),
        )
        for h in hosts
    }
    restarted = run(str(inv), "restart-api-only", data)
    for name, h in by_host(restarted).items():
        assert h.status == "changed", f"{name}: {h.reason}"
    for host in hosts:
        comfy_now = started_at(host, f"{host.container_prefix}comfyui")
        api_now = started_at(host, f"{host.container_prefix}comfyui-api")
        assert comfy_now == before[host.name][0] and api_now != before[host.name][1]
        assert httpx.get(f"http://127.0.0.1:{host.api_port}/health", timeout=10).status_code == 200


def test_verify_endpoints_fails_naming_the_broken_workflow(
    fleet_hosts: dict[str, Host], write_inventory: Callable[..., Path], artifact: Path, tmp_path: Path
) -> None:
    host = fleet_hosts["lambda1"]
    wf = tmp_path / "workflows"
    wf.mkdir()
    (wf / "tiny.json").write_text(json.dumps(TINY))
    broken = json.loads(json.dumps(TINY))
    broken["1"]["inputs"]["width"] = 0  # ComfyUI refuses: below EmptyImage's minimum
    (wf / "too_small.json").write_text(json.dumps(broken))
    inv = write_inventory([host], tmp_path / "inventory.py")
    data = {"workflows_dir": str(wf), "api_binary": str(artifact), "verify_timeout": 30}
    assert run(str(inv), "runtime", data).ok
    assert run(str(inv), "update-binary", data).ok
    result = run(str(inv), "verify-endpoints", data)
    h = by_host(result)["lambda1"]
    assert h.status == "failed" and result.exit_code == 1
    assert "workflow too_small" in h.reason
    rows = {r[0]: r for r in h.report.sections["workflow endpoints"].rows}
    assert rows["tiny"][6] == "ok" and rows["too_small"][6] != "ok"
