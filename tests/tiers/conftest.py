"""Fixtures of the tier tests: local model upstreams and a package index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.devkit.upstreams.model_servers import Upstreams
from comfyfleet.devkit.upstreams.pypi import PackageIndex


@pytest.fixture
def model_upstreams(tmp_path: Path) -> Iterator[Upstreams]:
    up = Upstreams(tmp_path / "upstream").start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def upstreams_factory(tmp_path: Path) -> Iterator[Upstreams]:
    """Unstarted upstreams: add content, then ``start_process()`` (for tests that run the
    runner in this process, which monkey-patches threading with gevent)."""
    up = Upstreams(tmp_path / "upstream-process")
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
