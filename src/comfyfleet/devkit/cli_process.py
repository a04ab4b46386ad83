"""The ``comfyfleet`` CLI run as a child process, as an operator runs it.

Tests and benchmarks call the CLI this way: it monkey-patches gevent for parallel hosts, which
must not leak into the test process; ``COMFYFLEET_STATE_DIR`` keeps each test's registry and
keys apart, a wide ``COLUMNS`` keeps rich tables on one line, and no stdin is what CI gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(
    *args: str,
    state_dir: Path | None = None,
    timeout: float = 900,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``comfyfleet ARGS...`` with its output captured; ``env`` adds to (or overrides) the environment."""
    child = {**os.environ, "COLUMNS": "200", **(env or {})}
    if state_dir is not None:
        child["COMFYFLEET_STATE_DIR"] = str(state_dir)
    return subprocess.run(
        [sys.executable, "-m", "comfyfleet.cli.main", *args],
        env=child,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
