"""Fixtures for analysis tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from analysis.helpers import small_index_doc
from comfyfleet.analysis.index import KnowledgeIndex


@pytest.fixture(scope="session")
def small_index() -> KnowledgeIndex:
    """Index built by the real builder from the tiny Manager data in helpers.py."""
    return KnowledgeIndex(small_index_doc())


@pytest.fixture
def write_json(tmp_path: Path):
    """Write an object as JSON into tmp_path and return the path."""

    def write(name: str, data: Any) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        return path

    return write
