"""Fixtures of the tier tests: local model upstreams, a package index, host-side script runners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from upstreams.model_servers import Upstreams  # noqa: E402
from upstreams.pypi import PackageIndex  # noqa: E402

HOSTSIDE = TESTS.parent / "src" / "comfyfleet" / "hostside"
FETCH = HOSTSIDE / "fetch_models.py"
INSTALL_NODES = HOSTSIDE / "install_nodes.py"


@pytest.fixture
def model_upstreams(tmp_path: Path) -> Iterator[Upstreams]:
    up = Upstreams(tmp_path / "upstream").start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def package_index(tmp_path: Path) -> Iterator[PackageIndex]:
    index = PackageIndex(tmp_path / "wheels").start()
    try:
        yield index
    finally:
        index.stop()


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
        argv, input=json.dumps(secrets or {}), capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )
    rows: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        if line.startswith(("RESULT ", "CHECK ")):
            rows = json.loads(line.split(" ", 1)[1])
    return proc.returncode, proc.stdout, proc.stderr, rows
