"""Read a workflow file (UI format, API format, or the {"prompt": ...} wrapper) into node uses.

A node use is one executed node: its class type, the values of its inputs (with input names
where the file or the index lets us know them) and its pack metadata. What a graph means
(subgraphs, group nodes, virtual nodes, modes, promoted widgets) comes from comfyui_api.graph,
the same code that turns workflows into prompts on the hosts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyui_api.graph import (
    MODE_BYPASSED,
    MODE_MUTED,
    UNDEFINED,
    FlatGraph,
    FlatNode,
    GraphError,
    WidgetValues,
    detect_format,
    is_link,
    unwrap,
)
from comfyui_api.graph.widgets import align_widget_names

from comfyfleet.analysis.index import KnowledgeIndex
from comfyfleet.errors import BadInput
from comfyfleet.manifest import SkippedNode

__all__ = ["NodeUse", "ParsedWorkflow", "align_widget_names", "parse_workflow", "read_workflow_json"]

MAX_WORKFLOW_BYTES = 64 * 1024 * 1024
_NOTE_TYPES = ("Note", "MarkdownNote")


@dataclass
class NodeUse:
    """One node that will run: class type, input values, and what the node says about itself."""

    node_id: str
    class_type: str
    values: list[tuple[str | None, Any]] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParsedWorkflow:
    """The executed nodes of a workflow, plus what was skipped and any note text."""

    format: str
    nodes: list[NodeUse] = field(default_factory=list)
    skipped: list[SkippedNode] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_workflow_json(path: Path) -> Any:
    """Parsed JSON of a workflow file; BadInput with a one-line reason otherwise."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadInput(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise BadInput(f"{path}: file is empty; export the workflow again from ComfyUI")
    if size > MAX_WORKFLOW_BYTES:
        raise BadInput(
            f"{path}: file is {size / 2**20:.0f} MiB, over the {MAX_WORKFLOW_BYTES // 2**20} MiB limit for a workflow"
        )
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text; a workflow is a JSON file") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise BadInput(f"{path}: JSON nested too deeply to be a workflow") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read file ({exc.strerror or exc})") from None


def parse_workflow(
    data: Any, where: str, index: KnowledgeIndex, object_info: dict[str, Any] | None = None
) -> ParsedWorkflow:
    """Detect the format of parsed workflow JSON and collect its node uses.

    ``object_info`` (node definitions, e.g. of ComfyUI core) names widget values exactly;
    without it names come from the file and from what the index learned.
    """
    data = unwrap(data)
    if not isinstance(data, dict):
        raise BadInput(f"{where}: top-level JSON is a {type(data).__name__}, not a workflow object")
    kind = detect_format(data)
    if kind == "ui":
        if not isinstance(data["nodes"], list):
            raise BadInput(f"{where}: 'nodes' must be a list of node objects (UI format)")
        try:
            return _parse_ui(data, where, index, object_info)
        except GraphError as exc:
            raise BadInput(str(exc)) from None
    if kind == "api":
        return _parse_api(data, where)
    raise BadInput(
        f"{where}: not a ComfyUI workflow: expected UI format ('nodes' and 'links') "
        "or API format ({id: {class_type, inputs}}); export it with 'Save' or 'Export (API)'"
    )


def _parse_api(data: dict[str, Any], where: str) -> ParsedWorkflow:
    parsed = ParsedWorkflow(format="api")
    for node_id, node in data.items():
        ctype = node.get("class_type")
        if not isinstance(ctype, str) or not ctype:
            raise BadInput(f"{where}: node {node_id}: class_type must be a non-empty string")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise BadInput(f"{where}: node {node_id}: inputs must be an object")
        values: list[tuple[str | None, Any]] = [(str(k), v) for k, v in inputs.items() if not is_link(v)]
        parsed.nodes.append(NodeUse(node_id=str(node_id), class_type=ctype, values=values))
    return parsed


def _parse_ui(
    data: dict[str, Any], where: str, index: KnowledgeIndex, object_info: dict[str, Any] | None
) -> ParsedWorkflow:
    for node in data["nodes"]:
        if not isinstance(node, dict):
            raise BadInput(f"{where}: a node entry is a {type(node).__name__}, not an object")
    graph = FlatGraph(data, where)
    widgets = WidgetValues(graph, object_info, index.widget_order)
    parsed = ParsedWorkflow(format="ui")
    for flat in graph.nodes.values():
        if flat.kind == "virtual":
            parsed.skipped.append(
                SkippedNode(node_id=flat.exec_id, class_type=flat.class_type, reason="frontend-only")
            )
            if flat.class_type in _NOTE_TYPES:
                values = flat.node.get("widgets_values")
                parsed.notes.extend(v for v in values if isinstance(v, str)) if isinstance(
                    values, list
                ) else None
            continue
        reason = {MODE_MUTED: "muted", MODE_BYPASSED: "bypassed"}.get(flat.mode)
        if reason is not None:
            parsed.skipped.append(
                SkippedNode(node_id=flat.exec_id, class_type=flat.class_type, reason=reason)
            )
            continue
        if flat.kind in ("subgraph", "group"):
            continue
        parsed.nodes.append(
            NodeUse(
                node_id=flat.exec_id,
                class_type=flat.class_type,
                values=_values(graph, widgets, flat),
                properties=flat.node["properties"] if isinstance(flat.node.get("properties"), dict) else {},
            )
        )
    return parsed


def _values(graph: FlatGraph, widgets: WidgetValues, flat: FlatNode) -> list[tuple[str | None, Any]]:
    """The node's widget values, with what subgraph instances pass down in place of the node's own."""
    values = [(name, value) for name, value, _sent in widgets.widgets(flat) if value is not UNDEFINED]
    for slot, inp in enumerate(flat.inputs):
        resolved = graph.resolve_input(flat, slot)
        if resolved is None or resolved[0] != "value" or resolved[1] is UNDEFINED:
            continue
        name = str(inp.get("name"))
        if any(n == name for n, _ in values):
            values = [(n, resolved[1] if n == name else v) for n, v in values]
        else:
            values.append((name, resolved[1]))
    return values
