"""Mangled workflows: analysis either works or says BadInput in one line, never a traceback."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from analysis.test_formats import _subgraph_workflow
from comfyfleet.analysis import analyze_data
from comfyfleet.analysis.index import KnowledgeIndex
from comfyfleet.errors import BadInput

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
JUNK: list[Any] = [
    None,
    0,
    -1,
    2.5,
    "x",
    "../../a.safetensors",
    [],
    {},
    [1, 2],
    {"a": 1},
    True,
    [None],
    {"on": False},
]


def _paths(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths(value, (*path, i))


def test_random_corruption_never_crashes(small_index: KnowledgeIndex) -> None:
    rng = random.Random(20261122)
    seeds = [json.loads(p.read_text()) for p in sorted(WORKFLOWS.glob("*.json"))] + [_subgraph_workflow()]
    outcomes = {"ok": 0, "bad_input": 0}
    for _ in range(400):
        doc = copy.deepcopy(rng.choice(seeds))
        candidates = [p for p in _paths(doc) if p]
        for _ in range(rng.randint(1, 4)):
            *parents, last = rng.choice(candidates)
            target = doc
            try:
                for key in parents:
                    target = target[key]
                target[last] = rng.choice(JUNK)
            except (KeyError, IndexError, TypeError):
                continue
        try:
            analyze_data(doc, "mangled", "mangled.json", index=small_index)
            outcomes["ok"] += 1
        except BadInput as exc:
            assert str(exc).startswith("mangled.json: ") and "\n" not in str(exc)
            outcomes["bad_input"] += 1
    assert outcomes["ok"] > 0 and outcomes["bad_input"] > 0
