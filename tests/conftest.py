"""Shared fixtures. The SSH test fleet lives in comfyfleet.devkit.fleet; its fixtures start only when a test asks."""

from __future__ import annotations

from typing import Any

from comfyfleet.devkit.fleet.fixtures import fleet, fleet_hosts, fleet_summary, start_host, write_inventory

__all__ = ["fleet", "fleet_hosts", "start_host", "write_inventory"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    fleet_summary(terminalreporter)
