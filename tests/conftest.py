"""Shared fixtures. The SSH test fleet lives in comfyfleet.devkit.fleet; its fixtures start only when a test asks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gevent import monkey

from comfyfleet.devkit.fleet.fixtures import fleet, fleet_hosts, fleet_summary, start_host, write_inventory

__all__ = ["fleet", "fleet_hosts", "start_host", "write_inventory"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    fleet_summary(terminalreporter)


@pytest.fixture(autouse=True)
def _no_gevent_patching() -> Iterator[None]:
    """A test must not monkey-patch this process with gevent (the CLI does; run it as a child process):
    every later test would then run with greenlets for threads."""
    yield
    assert not monkey.is_module_patched("socket"), "this test monkey-patched pytest's process with gevent"
