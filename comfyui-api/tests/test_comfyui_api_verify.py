"""`comfyui-api verify`: the checks comfyfleet's verify-endpoints runs on each host, as a child process.

Against a real API process and the ComfyUI stand-in (or a recorded comfyui-api 502 body), through
the real CLI entry point (`python -m comfyui_api verify`, what the .pyz runs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from conftest import ROOT, TINY, Api, write_workflows

from comfyfleet.devkit.standin import Standin

KEY = "verify-test-key-0123456789abcdef"


def run_verify(
    port: int, keys: Path, workflows: Path, disabled: Path, timeout: float = 30
) -> tuple[dict, str]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "comfyui_api",
            "verify",
            "--port",
            str(port),
            "--api-key-file",
            str(keys),
            "--workflows",
            str(workflows),
            "--timeout",
            str(timeout),
            "--disabled-dir",
            str(disabled),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "comfyui-api" / "src")},
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("VERIFY ")), None)
    assert line, out.stdout + out.stderr
    return json.loads(line[7:]), out.stdout + out.stderr


def test_verify_generates_once_per_served_workflow_and_never_for_stopped_ones(tmp_path: Path) -> None:
    wf = write_workflows(tmp_path / "wf", {"served.json": TINY, "stopped.json": TINY})
    disabled = tmp_path / "disabled"
    disabled.mkdir()
    (disabled / "stopped").touch()
    (disabled / "parked").touch()  # stopped with its files moved away: still reported as stopped
    keys = tmp_path / "api-keys"
    keys.write_text(f"# the service's keys\n{KEY}\n")
    with Standin(tmp_path / "comfy") as comfy:
        api = Api(
            comfy.url,
            wf,
            tmp_path / "db.sqlite3",
            ["--disabled-dir", str(disabled), "--api-key-file", str(keys)],
        )
        with api:
            result, said = run_verify(api.port, keys, wf, disabled)
            history = httpx.get(comfy.url + "/history", timeout=5).json()
    assert result["health"][0] == 200 and result["ready"][0] == 200, result
    rows = {w["name"]: w for w in result["workflows"]}
    assert set(rows) == {"served", "stopped", "parked"}
    served = rows["served"]
    assert served["schema"] and served["status"] == 200 and not served["stopped"]
    assert served["outputs"] == 1 and served["bytes"] > 100  # a PNG came back inline
    for name in ("stopped", "parked"):
        assert rows[name]["stopped"] and not rows[name]["schema"] and rows[name]["status"] == 404
        assert rows[name]["outputs"] == 0
    assert rows["stopped"]["error"] == ""  # the API itself answered "stopped"
    assert len(history) == 1  # exactly one generation: the served workflow's
    assert KEY not in said  # the key is read from its file, never shown


# What comfyui-api answers when ComfyUI rejects the graph: ComfyUI 0.8.0's body (execution.py
# validate_inputs, "Value not in list") inside the API's 502.
CHOICES = ", ".join(f"'model_{i:03d}.safetensors'" for i in range(40))
REJECTED = {
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
                        "details": f"ckpt_name: 'sd15.safetensors' not in [{CHOICES}]",
                        "extra_info": {"input_name": "ckpt_name"},
                    }
                ],
            }
        },
    },
}


def test_verify_keeps_comfyuis_cause_of_a_rejected_workflow(tmp_path: Path) -> None:
    """A stand-in for comfyui-api (named as one) answering every generation with that 502."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"paths": {"/workflows/bad": {}}} if self.path == "/openapi.json" else {"ok": 1})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(502, REJECTED)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wf = write_workflows(tmp_path / "wf", {"bad.json": {}})
    try:
        result, _ = run_verify(server.server_address[1], tmp_path / "no-keys", wf, tmp_path / "none", 10)
    finally:
        server.shutdown()
    [row] = result["workflows"]
    assert row["status"] == 502
    assert "Prompt outputs failed validation" in row["error"]
    # The actual cause, after a long list of choices, is still there.
    assert "Value not in list | ckpt_name: 'sd15.safetensors' not in [" in row["error"]
