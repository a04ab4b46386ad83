"""`comfyfleet ship` at the command level: what stops before any host is touched, and how."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from comfyfleet.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


def ship(state: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COMFYFLEET_STATE_DIR": str(state), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "comfyfleet.cli.main", "ship", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_unresolved_model_stops_before_touching_a_host(tmp_path: Path) -> None:
    # The example without its overrides.yaml: the checkpoint's URL is unknown.
    wf = tmp_path / "workflows" / "txt2img.json"
    wf.parent.mkdir()
    shutil.copy(ROOT / "workflows" / "txt2img.json", wf)
    # 127.0.0.1:1 as SSH port: any attempt to touch the host would fail as 'unreachable' (exit 1).
    inv = tmp_path / "inventory.py"
    inv.write_text('hosts = [("gpu-1", {"ssh_hostname": "127.0.0.1", "ssh_port": 1})]\n')
    result = ship(tmp_path / "state", str(wf), "--to", str(inv), "--env", "prod")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ship failed: step 'analyze' failed: " in result.stderr
    assert "model v1-5-pruned-emaonly-fp16.safetensors (#4): no download URL known" in result.stderr
    assert "nothing was deployed" in result.stderr
    assert "Traceback" not in result.stderr
    reg = Registry(tmp_path / "state" / "deployments.sqlite3")
    assert reg.find("txt2img") is None
    (entry,) = reg.history("txt2img", "prod")
    assert not entry.ok and [s.step for s in entry.steps] == ["analyze"]


def test_bad_target_and_missing_file_are_bad_input(tmp_path: Path) -> None:
    state = tmp_path / "state"
    missing = ship(state, str(tmp_path / "nope.json"), "--to", "127.0.0.1")
    assert missing.returncode == 2 and "workflow file not found" in missing.stderr
    wf = ROOT / "workflows" / "txt2img.json"
    no_inv = ship(state, str(wf), "--to", str(tmp_path / "missing.py"))
    assert no_inv.returncode == 2 and "inventory file" in no_inv.stderr and "not found" in no_inv.stderr
    bad_host = tmp_path / "inventory.py"
    bad_host.write_text('hosts = [("gpu-1", {"api_port": 70000})]\n')
    bad = ship(state, str(wf), "--to", str(bad_host))
    assert bad.returncode == 2 and "host gpu-1: api_port" in bad.stderr
    bad_env = ship(state, str(wf), "--to", "127.0.0.1", "--env", "staging")
    assert bad_env.returncode == 2 and "staging" in bad_env.stderr
    for r in (missing, no_inv, bad, bad_env):
        assert "Traceback" not in r.stderr


def test_invalid_workflow_json_is_one_line(tmp_path: Path) -> None:
    wf = tmp_path / "broken.json"
    wf.write_text(json.dumps({"nodes": "not a list"})[:-3])
    result = ship(tmp_path / "state", str(wf), "--to", "127.0.0.1")
    assert result.returncode == 2
    assert str(wf) in result.stderr and "Traceback" not in result.stderr
