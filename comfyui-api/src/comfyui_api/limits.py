"""Caps on what one request may ask ComfyUI to do: sampling steps, batch size, pixels per image."""

from __future__ import annotations

from typing import Any

from comfyui_api.settings import Settings


def over_limits(
    graph: dict[str, Any], node_ids: set[str] | None, settings: Settings
) -> list[tuple[str, str, str]]:
    """(node id, input, message) for each input over a cap, in the nodes given (all when None)."""
    found = []
    for nid, node in graph.items():
        if node_ids is not None and nid not in node_ids or not isinstance(node, dict):
            continue
        inputs = node.get("inputs") or {}
        steps, batch, w, h = (_num(inputs.get(k)) for k in ("steps", "batch_size", "width", "height"))
        if steps is not None and steps > settings.max_steps:
            found.append((nid, "steps", f"steps must be <= {settings.max_steps} on this service"))
        if batch is not None and batch > settings.max_batch:
            found.append((nid, "batch_size", f"batch_size must be <= {settings.max_batch} on this service"))
        if w is not None and h is not None and w * h > settings.max_pixels:
            found.append(
                (nid, "width", f"width x height must be <= {settings.max_pixels} pixels on this service")
            )
    return found


def _num(v: Any) -> float | None:
    """v when it is a literal number (links and strings are not), else None."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
