"""`comfyfleet ship --to modal` and stop/start of a Modal deployment, at the command level.

Modal cannot be reached from here: a fake `modal` executable (tests/modal/fake/modal_fake.py)
answers with modal 1.6.4's output shapes and logs its argv, and the "deployed" endpoint is
the test API on 127.0.0.1. The app file, secrets, model volume step, deploy, health,
generation and the record are the real code paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from comfyfleet.registry import Registry

from .helpers import ApiServer

ROOT = Path(__file__).resolve().parents[2]
FAKE = ROOT / "tests" / "modal" / "fake" / "modal_fake.py"
API_KEY = "ship-to-modal-key-0123456789"


def deploy_output(url: str) -> str:
    """What `modal deploy` (1.6.4) prints for app cf-prod-txt2img serving at url."""
    return (
        (ROOT / "tests" / "modal" / "fake" / "deploy_output.txt")
        .read_text()
        .format(url=url, app="cf-prod-txt2img")
    )


def fake_modal(tmp: Path, scenario: dict[str, Any]) -> tuple[dict[str, str], Path]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "modal"
    exe.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    exe.chmod(0o755)
    log = tmp / "modal-calls.jsonl"
    (tmp / "scenario.json").write_text(json.dumps({"log": str(log), **scenario}))
    env = {
        k: v for k, v in os.environ.items() if k not in ("CIVITAI_API_TOKEN", "HF_TOKEN", "COMFYFLEET_MODAL")
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        FAKE_MODAL_SCENARIO=str(tmp / "scenario.json"),
        COMFYFLEET_API_KEY=API_KEY,
        COMFYFLEET_STATE_DIR=str(tmp / "state"),
        COLUMNS="200",
    )
    return env, log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line)["argv"] for line in log.read_text().splitlines()] if log.exists() else []


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfyfleet.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


def test_ship_to_modal_then_stop_and_start(tmp_path: Path, api_server: ApiServer) -> None:
    env, log = fake_modal(tmp_path, {"deploy_output": deploy_output(api_server.url), "secrets": []})
    shipped = run(env, "ship", str(ROOT / "workflows" / "txt2img.json"), "--to", "modal", "--env", "prod")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    argvs = calls(log)
    app_file = tmp_path / "state" / "modal" / "prod-txt2img.py"
    assert app_file.is_file() and "cf-prod-txt2img" in app_file.read_text()
    assert ["deploy", str(app_file)] in [a[:2] for a in argvs]
    assert any(a[:2] == ["secret", "create"] for a in argvs)
    assert all(API_KEY not in " ".join(a) for a in argvs)  # the key never travels in argv
    assert api_server.behaviour.calls["generate:txt2img"] == 1
    dep = Registry(tmp_path / "state" / "deployments.sqlite3").get("txt2img", "prod")
    assert (dep.target, dep.status) == ("modal", "active")
    assert dep.endpoint_url == f"{api_server.url}/workflows/txt2img"
    steps = [
        s.step
        for s in Registry(tmp_path / "state" / "deployments.sqlite3").history("txt2img", "prod")[0].steps
    ]
    assert steps == ["analyze", "install", "api", "health", "generate", "record"]

    stopped = run(env, "deployments", "stop", "txt2img")
    assert stopped.returncode == 0, stopped.stderr
    assert calls(log)[-1][:3] == ["app", "stop", "cf-prod-txt2img"]
    started = run(env, "deployments", "start", "txt2img")
    assert started.returncode == 0, started.stderr
    assert calls(log)[-1][:2] == ["deploy", str(app_file)]


def test_modal_not_logged_in_fails_at_install_with_the_fix(tmp_path: Path, api_server: ApiServer) -> None:
    env, log = fake_modal(tmp_path, {"logged_out": True})
    result = run(env, "ship", str(ROOT / "workflows" / "txt2img.json"), "--to", "modal")
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "step 'install' failed on host modal: modal is not logged in: run `modal token new`" in result.stderr
    )
    assert Registry(tmp_path / "state" / "deployments.sqlite3").find("txt2img") is None
    assert api_server.behaviour.calls == {}
