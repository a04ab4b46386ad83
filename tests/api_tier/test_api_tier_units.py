"""Tier 1 pieces that need no fleet: the container spec, what gets synced, bad host data."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.deploys.api import ApiPaths, api_spec, local_artifact, local_workflow_files
from comfyfleet.errors import BadInput
from comfyfleet.inventory import validate_host_data


def test_spec_runs_the_pyz_with_stock_python_and_changes_with_the_artifact() -> None:
    cfg = validate_host_data("h1", {"provider": "lambda", "api_port": 3100, "comfyui_port": 8288})
    paths = ApiPaths.for_config(cfg)
    a = api_spec(cfg, paths, "a" * 64, "0.0.0.0")
    b = api_spec(cfg, paths, "b" * 64, "0.0.0.0")
    assert a.command[:2] == ("python3", "/home/ubuntu/comfyfleet/api/comfyui-api.pyz")
    cmd = list(a.command)
    assert cmd[cmd.index("--comfyui-url") + 1] == "http://127.0.0.1:8288"
    assert cmd[cmd.index("--port") + 1] == "3100" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--api-key-file") + 1] == "/home/ubuntu/comfyfleet/api/api-keys"
    assert a.name == "comfyui-api" and a.network == "host"
    assert a.spec_hash() != b.spec_hash()  # a new artifact recreates the API container
    assert api_spec(cfg, paths, "a" * 64, "0.0.0.0").spec_hash() == a.spec_hash()


def test_only_workflow_files_are_synced(tmp_path: Path) -> None:
    for name in (
        "txt2img.json",
        "txt2img.api.yaml",
        "overrides.yaml",
        "comfyfleet.lock.yaml",
        "x.manifest.json",
        "evil;rm -rf.json",
        "../up.json".replace("/", "_"),
        "notes.txt",
    ):
        (tmp_path / name).write_text("{}")
    assert sorted(local_workflow_files(str(tmp_path))) == [
        "txt2img.api.yaml",
        "txt2img.json",
    ]
    with pytest.raises(BadInput, match="workflows folder not found"):
        local_workflow_files(str(tmp_path / "missing"))


def test_missing_artifact_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="scripts/build-binary"):
        local_artifact(str(tmp_path / "nope.pyz"))


def test_spec_points_the_api_at_the_stop_markers() -> None:
    cfg = validate_host_data("h1", {"provider": "lambda"})
    paths = ApiPaths.for_config(cfg)
    cmd = list(api_spec(cfg, paths, "a" * 64, "0.0.0.0").command)
    # The folder serving.py writes markers into; it lies inside the mounted API folder.
    assert cmd[cmd.index("--disabled-dir") + 1] == "/home/ubuntu/comfyfleet/api/disabled" == paths.disabled
    assert paths.disabled.startswith(paths.dir + "/")


def test_verify_script_reports_stopped_workflows_without_generating(tmp_path: Path) -> None:
    """The in-container verify script, run here against a real API process and the ComfyUI stand-in."""
    import json
    import os
    import subprocess
    import sys
    import time

    import httpx

    from comfyfleet.devkit.standin import Standin, free_port
    from comfyfleet.operations.api import VERIFY_SCRIPT as _VERIFY

    tiny = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
    }
    wf, disabled = tmp_path / "wf", tmp_path / "disabled"
    wf.mkdir()
    disabled.mkdir()
    for name in ("served", "stopped"):
        (wf / f"{name}.json").write_text(json.dumps(tiny))
    (disabled / "stopped").touch()
    (disabled / "parked").touch()  # stopped with its files moved away: still reported as stopped
    root = Path(__file__).resolve().parents[2]
    with Standin(tmp_path / "comfy") as comfy:
        port = free_port()
        api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "comfyui_api",
                "--comfyui-url",
                comfy.url,
                "--workflows",
                str(wf),
                "--disabled-dir",
                str(disabled),
                "--port",
                str(port),
                "--db",
                str(tmp_path / "db.sqlite3"),
            ],
            env={**os.environ, "PYTHONPATH": str(root / "comfyui-api" / "src")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["workflows"]:
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.05)
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _VERIFY,
                    str(port),
                    str(tmp_path / "no-keys"),
                    str(wf),
                    "30",
                    str(disabled),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        finally:
            api.terminate()
            api.wait(10)
    rows = {w["name"]: w for w in json.loads(out.split("VERIFY ", 1)[1])["workflows"]}
    assert set(rows) == {"served", "stopped", "parked"}
    assert rows["served"]["status"] == 200 and rows["served"]["bytes"] > 0 and not rows["served"]["stopped"]
    for name in ("stopped", "parked"):
        assert rows[name]["stopped"] and not rows[name]["schema"] and rows[name]["status"] == 404
        assert rows[name]["outputs"] == 0
    assert rows["stopped"]["error"] == ""  # the API itself answered "stopped"


class _RejectingApi:
    """A stand-in for comfyui-api that answers one workflow with the 502 it gives when ComfyUI rejects
    the graph; the body has ComfyUI 0.8.0's shape (execution.py validate_inputs: "Value not in list")."""

    LIST = ", ".join(f"'model_{i:03d}.safetensors'" for i in range(40))
    BODY = {
        "type": "about:blank",
        "status": 502,
        "detail": "ComfyUI rejected the workflow (is everything it needs installed?)",
        "comfyui": {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            },
            "node_errors": {
                "4": {
                    "class_type": "CheckpointLoaderSimple",
                    "dependent_outputs": ["9"],
                    "errors": [
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"ckpt_name: 'sd15.safetensors' not in [{LIST}]",
                            "extra_info": {"input_name": "ckpt_name"},
                        }
                    ],
                }
            },
        },
    }


def test_verify_endpoints_keeps_comfyuis_cause(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from comfyfleet.operations.api import VERIFY_SCRIPT as _VERIFY

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(
                200, {"paths": {"/workflows/bad": {}}} if self.path == "/openapi.json" else {"status": "ok"}
            )

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(502, _RejectingApi.BODY)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "bad.json").write_text("{}")
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _VERIFY,
                str(server.server_address[1]),
                str(tmp_path / "no-keys"),
                str(wf),
                "10",
                str(tmp_path / "none"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    finally:
        server.shutdown()
    [row] = json.loads(out.split("VERIFY ", 1)[1])["workflows"]
    assert row["status"] == 502
    assert "Prompt outputs failed validation" in row["error"]
    # The actual cause, after a long list of choices, is still there.
    assert "Value not in list | ckpt_name: 'sd15.safetensors' not in [" in row["error"]
