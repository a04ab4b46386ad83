"""pytest fixtures of the test fleet, imported by tests/conftest.py.

All are session-scoped and lazy: the engine, images and hosts start only when a test
asks for one of them, so unit tests never pay for the fleet.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.devkit.fleet.errors import FleetUnavailable
from comfyfleet.devkit.fleet.hosts import Host
from comfyfleet.devkit.fleet.session import Fleet

_started: list[Fleet] = []


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    """Engine, images and upstreams (ComfyUI repo, node packs); hosts come from the fixtures below."""
    f = Fleet()
    try:
        f.up()
    except FleetUnavailable as exc:
        f.down()
        if os.environ.get("COMFYFLEET_SKIP_FLEET"):
            pytest.skip(f"test fleet unavailable: {exc}")
        pytest.fail(f"test fleet unavailable: {exc} (set COMFYFLEET_SKIP_FLEET=1 to skip instead)")
    except BaseException:
        f.down()
        raise
    _started.append(f)
    try:
        yield f
    finally:
        f.down()


@pytest.fixture(scope="session")
def fleet_hosts(fleet: Fleet) -> dict[str, Host]:
    """Two hosts: ``lambda1`` (user ubuntu, no volume) and ``dc1`` (root, block volume on a loop device)."""
    return {
        "lambda1": fleet.add_host("lambda1", provider="lambda"),
        "dc1": fleet.add_host("dc1", provider="datacrunch", volume=True),
    }


@pytest.fixture(scope="session")
def start_host(fleet: Fleet) -> Callable[..., Host]:
    """Start one more host: ``start_host(name=None, provider="lambda", volume=False, unreachable=False)``.

    ``unreachable=True`` gives an inventory entry whose SSH port has nothing listening.
    Call ``fleet.remove_host(name)`` when a test is done with a host it started.
    """
    counter = itertools.count(1)

    def start(
        name: str | None = None,
        provider: str = "lambda",
        volume: bool = False,
        unreachable: bool = False,
        **extra: Any,
    ) -> Host:
        name = name or f"extra{next(counter)}"
        while name in fleet.hosts:
            name = f"extra{next(counter)}"
        if unreachable:
            return fleet.add_unreachable_host(name, provider=provider, **extra)
        return fleet.add_host(name, provider=provider, volume=volume, **extra)

    return start


@pytest.fixture(scope="session")
def write_inventory(fleet: Fleet) -> Callable[..., Path]:
    """``write_inventory(hosts, path, host_data=None, **group_data) -> Path``: a pyinfra inventory .py."""
    return fleet.write_inventory


def fleet_summary(terminalreporter: Any) -> None:
    """Print how long the fleet took to come up (pytest_terminal_summary hook body)."""
    for f in _started:
        parts = [f"{k} {v:.1f}s" for k, v in f.timings.items()]
        terminalreporter.write_line(f"test fleet {f.id} ({f.engine} engine): " + ", ".join(parts))
        for line in f.build_log:
            terminalreporter.write_line(f"  built: {line}")
