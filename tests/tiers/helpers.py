"""Helpers of the tier tests: paths of the host-side scripts and how to run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from comfyfleet.devkit.models import compact_upscaler_safetensors  # noqa: F401 - re-exported for the tier tests

TESTS = Path(__file__).resolve().parents[1]
HOSTSIDE = TESTS.parent / "src" / "comfyfleet" / "hostside"
FETCH = HOSTSIDE / "fetch_models.py"
INSTALL_NODES = HOSTSIDE / "install_nodes.py"


def write_plan(path: Path, plan: dict[str, Any]) -> Path:
    path.write_text(json.dumps(plan))
    return path


def run_fetch(
    plan_path: Path, secrets: dict[str, str] | None = None, env: dict[str, str] | None = None, *args: str
) -> tuple[int, str, str, list[dict[str, Any]]]:
    """Run the host-side downloader as a host would; returns rc, stdout, stderr, RESULT rows."""
    argv = [sys.executable, str(FETCH), "--plan", str(plan_path), *args]
    if secrets is not None:
        argv.append("--secrets-stdin")
    proc = subprocess.run(
        argv,
        input=json.dumps(secrets or {}),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    rows: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        if line.startswith(("RESULT ", "CHECK ")):
            rows = json.loads(line.split(" ", 1)[1])
    return proc.returncode, proc.stdout, proc.stderr, rows
