"""Legacy group nodes (``extra.groupNodes``, node type ``workflow>name``), as frontend 1.35.9 expands them.

A group definition holds its inner nodes (by ``index``), the links between them
(``[origin index | null, origin slot, target index, target slot, _, type]``; a null origin is an
input of the group) and ``external`` outputs. The group node's inputs are its inner nodes' inputs
not linked inside, named as the frontend names them (the input name, or ``<title> <name>`` when
taken); its outputs are the inner outputs not linked inside, or listed in ``external``.
"""

from __future__ import annotations

from typing import Any

from comfyui_api.graph.formats import Link, as_dict, as_list


def group_inner_nodes(
    exec_id: str, node: dict[str, Any], group: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[int, Link]]:
    """The inner nodes (ids = index; inputs wired inside or marked with the group input they come from) and links."""
    inner = [n for n in as_list(group.get("nodes")) if isinstance(n, dict)]
    links: dict[int, Link] = {}
    inside: dict[tuple[Any, int], int] = {}
    for n, raw in enumerate(as_list(group.get("links"))):
        if isinstance(raw, list) and len(raw) >= 4 and raw[0] is not None and raw[2] is not None:
            link = Link(-1 - n, raw[0], int(raw[1]), raw[2], int(raw[3]), raw[5] if len(raw) > 5 else None)
            links[link.id] = link
            inside[(link.target_id, link.target_slot)] = link.id
    widgets = node.get("widgets_values")
    remaining = list(widgets) if isinstance(widgets, list) else []
    total = sum(len(n["widgets_values"]) for n in inner if isinstance(n.get("widgets_values"), list))
    seen: dict[str, int] = {}
    nodes: list[dict[str, Any]] = []
    for position, item in enumerate(inner):
        index = item.get("index", position)
        item = {**item, "id": index, "mode": node.get("mode", 0)}
        own = item.get("widgets_values")
        if len(remaining) == total and isinstance(own, list):
            item["widgets_values"], remaining = remaining[: len(own)], remaining[len(own) :]
        slots = [dict(i) for i in as_list(item.get("inputs")) if isinstance(i, dict)]
        # The frontend names a node's widget inputs first, then its sockets.
        order = [s for s in range(len(slots)) if "widget" in slots[s]] + [
            s for s in range(len(slots)) if "widget" not in slots[s]
        ]
        for slot in order:
            if (index, slot) in inside:
                slots[slot]["link"] = inside[(index, slot)]
                continue
            slots[slot]["link"] = None
            slots[slot]["group_input"] = _input_name(item, slots[slot], seen)
            slots[slot]["group_node"] = exec_id
        item["inputs"] = slots
        nodes.append(item)
    return nodes, links


def _input_name(item: dict[str, Any], slot: dict[str, Any], seen: dict[str, int]) -> str:
    input_name = str(slot.get("name"))
    name = str(slot.get("label") or input_name)
    key = name
    if (item.get("type") == "PrimitiveNode" and item.get("title")) or name in seen:
        prefix = f"{item.get('title') or item.get('type')} "
        key = name = f"{prefix}{input_name}"
        if name in seen:
            name = f"{prefix}{seen[name]} {input_name}"
    seen[key] = seen.get(key, 1) + 1
    return name


def group_outputs(group: dict[str, Any]) -> list[tuple[Any, int]]:
    """(inner index, output slot) for each output of the group node, in order."""
    linked_inside = {
        (raw[0], int(raw[1]))
        for raw in as_list(group.get("links"))
        if isinstance(raw, list) and len(raw) >= 4 and raw[0] is not None and raw[2] is not None
    }
    external = {
        (e[0], int(e[1])) for e in as_list(group.get("external")) if isinstance(e, list) and len(e) >= 2
    }
    out = []
    for position, item in enumerate(n for n in as_list(group.get("nodes")) if isinstance(n, dict)):
        index = item.get("index", position)
        for slot, _output in enumerate(as_list(as_dict(item).get("outputs"))):
            if (index, slot) not in linked_inside or (index, slot) in external:
                out.append((index, slot))
    return out
