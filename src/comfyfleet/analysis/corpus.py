"""The comfyui-workflow-templates-json corpus, stripped of node metadata, as an accuracy check.

Shared by the corpus test and scripts/bench_analyze.py: every node loses
``properties.models``, ``cnr_id``, ``aux_id`` and ``ver``; what those said is kept as the
expected answer (model filename -> folder and url).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.analysis.rules import download_url

STRIPPED_KEYS = ("models", "cnr_id", "aux_id", "ver")


def templates_dir() -> Path | None:
    """The installed templates package's workflow folder, or None when it is not installed."""
    try:
        import comfyui_workflow_templates_json as package
    except ImportError:
        return None
    path = Path(package.__file__).parent / "templates"
    return path if path.is_dir() else None


@dataclass
class StrippedWorkflow:
    """A template workflow without metadata, and what the metadata said about its models."""

    name: str
    data: dict[str, Any]
    expected: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def _nodes(workflow: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from (n for n in workflow.get("nodes", []) if isinstance(n, dict))
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
        yield from (n for n in sub.get("nodes", []) if isinstance(n, dict))


def stripped_corpus(directory: Path) -> Iterator[StrippedWorkflow]:
    """Each UI workflow of the corpus with metadata removed (index/locale files are skipped)."""
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            continue
        item = StrippedWorkflow(name=path.stem, data=data)
        for node in _nodes(data):
            props = node.get("properties")
            if not isinstance(props, dict):
                continue
            if node.get("mode") not in (2, 4):
                for model in props.get("models") or []:
                    if (
                        isinstance(model, dict)
                        and isinstance(model.get("name"), str)
                        and isinstance(model.get("directory"), str)
                    ):
                        url = model.get("url")
                        item.expected[model["name"]] = (
                            model["directory"],
                            download_url(url) if isinstance(url, str) else None,
                        )
            for key in STRIPPED_KEYS:
                props.pop(key, None)
        yield item
