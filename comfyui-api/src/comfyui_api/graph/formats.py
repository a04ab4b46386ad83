"""What a ComfyUI workflow file is: its three formats, its links, modes and virtual nodes.

Facts here follow ComfyUI's frontend 1.35.9 (the one ComfyUI 0.8.0 ships): the UI format is
what "Save" writes (``nodes`` + ``links``, subgraph definitions under ``definitions.subgraphs``,
legacy group nodes under ``extra.groupNodes``); the API format is what ``POST /prompt`` takes
(node id → ``{class_type, inputs}``); ``{"prompt": ...}`` wraps either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MODE_ALWAYS, MODE_MUTED, MODE_BYPASSED = 0, 2, 4

# A subgraph instance's type is the UUID of its definition in definitions.subgraphs.
SUBGRAPH_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Link ends inside a subgraph definition that stand for the instance's inputs / outputs.
SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE = -10, -20

# Virtual nodes: the frontend (core or a node pack's JavaScript) resolves them away, the server
# never sees them. Pass-through ones forward input slot N to output slot N.
PASS_THROUGH = frozenset({"Reroute", "SetNode", "Reroute (rgthree)"})
VALUE_SOURCES = frozenset({"PrimitiveNode"})  # copy their widget value into the widgets they feed
GETTERS = frozenset({"GetNode"})  # KJNodes: the output of the same-graph SetNode with the same name
FRONTEND_ONLY = frozenset(
    {
        "Note",
        "MarkdownNote",
        "Label",
        "Comfy.GroupNode",
        "Fast Groups Bypasser (rgthree)",
        "Fast Groups Muter (rgthree)",
        "Fast Bypasser (rgthree)",
        "Fast Muter (rgthree)",
        "Fast Actions Button (rgthree)",
        "Bookmark (rgthree)",
        "Label (rgthree)",
        "Node Combiner (rgthree)",
        "Note Plus (mtb)",
    }
    | PASS_THROUGH
    | VALUE_SOURCES
    | GETTERS
)

CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})


@dataclass(frozen=True)
class Link:
    """One edge: origin node/slot → target node/slot (ids as in the file; -10/-20 are subgraph IO)."""

    id: int
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any = None


def parse_links(raw: Any) -> dict[int, Link]:
    """Links by id from either the list form (root graph) or the dict form (subgraphs, schema 1)."""
    out: dict[int, Link] = {}
    for item in raw if isinstance(raw, list) else []:
        try:
            if isinstance(item, list) and len(item) >= 5:
                link = Link(
                    int(item[0]),
                    item[1],
                    int(item[2]),
                    item[3],
                    int(item[4]),
                    item[5] if len(item) > 5 else None,
                )
            elif isinstance(item, dict):
                link = Link(
                    int(item["id"]),
                    item["origin_id"],
                    int(item["origin_slot"]),
                    item["target_id"],
                    int(item["target_slot"]),
                    item.get("type"),
                )
            else:
                continue
        except (KeyError, TypeError, ValueError):
            continue
        out[link.id] = link
    return out


def unwrap(data: Any) -> Any:
    """The workflow inside a ``{"prompt": ...}`` wrapper, or the data itself."""
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
        return data["prompt"]
    return data


def detect_format(data: Any) -> str | None:
    """'ui', 'api' or None for parsed (unwrapped) workflow JSON."""
    if not isinstance(data, dict):
        return None
    if "nodes" in data:
        return "ui"
    if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "api"
    return None


def is_link(value: Any) -> bool:
    """An API-format input value that is a connection ``[node id, output slot]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and isinstance(value[1], int)
    )


def group_node_name(ctype: str) -> str | None:
    """The extra.groupNodes key of a legacy group node type ``workflow>name`` (older: ``workflow/name``)."""
    for sep in (">", "/"):
        if ctype.startswith(f"workflow{sep}"):
            return ctype[len("workflow") + 1 :]
    return None


def as_list(value: Any) -> list[Any]:
    """The value if it is a list, else empty: malformed optional fields are ignored."""
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> dict[str, Any]:
    """The value if it is a dict, else empty."""
    return value if isinstance(value, dict) else {}
