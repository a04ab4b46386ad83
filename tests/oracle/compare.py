"""Compare two API prompts node by node."""

from __future__ import annotations

from typing import Any


def compare_prompts(ours: dict[str, Any], theirs: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    return []
