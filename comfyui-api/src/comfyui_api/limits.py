"""Caps on what one request may ask ComfyUI to do: sampling steps, batch size, pixels per image."""

from __future__ import annotations

from typing import Any

from comfyui_api.settings import Settings


def over_limits(graph: dict[str, Any], node_ids: set[str] | None, settings: Settings) -> list[tuple[str, str, str]]:
    """(node id, input, message) for each input over a cap, in the nodes given (all when None)."""
    found = []
    for nid, node in graph.items():
        if node_ids is not None and nid not in node_ids or not isinstance(node, dict):
            continue
        inputs = node.get("inputs") or {}
        steps, batch = inputs.get("steps"), inputs.get("batch_size")
        if _num(steps) and steps > settings.max_steps:
            found.append((nid, "steps", f"steps must be <= {settings.max_steps} on this service"))
        if _num(batch) and batch > settings.max_batch:
            found.append((nid, "batch_size", f"batch_size must be <= {settings.max_batch} on this service"))
        w, h = inputs.get("width"), inputs.get("height")
        if _num(w) and _num(h) and w * h > settings.max_pixels:
            found.append((nid, "width", f"width x height must be <= {settings.max_pixels} pixels on this service"))
    return found


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
