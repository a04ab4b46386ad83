"""Fixtures for the ship tests: a real registry file and a real HTTP API on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.registry import Registry

from .helpers import ApiServer


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    server = ApiServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def late_api_server() -> Iterator[ApiServer]:
    """An API that starts listening only after the test has begun (connection refused first)."""
    server = ApiServer()
    yield server
    server.stop()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "state" / "deployments.sqlite3")
