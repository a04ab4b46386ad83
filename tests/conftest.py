"""Shared fixtures. The SSH test fleet lives in tests/fleet; its fixtures start only when a test asks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# tests/ holds the `fleet` package; make it importable however pytest was started.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from fleet.fixtures import fleet, fleet_hosts, fleet_summary, start_host, write_inventory  # noqa: E402

__all__ = ["fleet", "fleet_hosts", "start_host", "write_inventory"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    fleet_summary(terminalreporter)
