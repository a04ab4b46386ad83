"""Read a workflow file (UI format, API format, or the {"prompt": ...} wrapper) into node uses.

A node use is one executed node: its class type, the values of its inputs (with input
names where the file lets us know them) and its pack metadata. Frontend-only, muted and
bypassed nodes are set aside as skipped. Subgraphs and legacy group nodes are expanded
so the nodes inside them count like any other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.analysis.index import KnowledgeIndex
from comfyfleet.analysis.rules import FRONTEND_ONLY, MODE_BYPASSED, MODE_MUTED, SUBGRAPH_ID
from comfyfleet.errors import BadInput
from comfyfleet.manifest import SkippedNode

MAX_WORKFLOW_BYTES = 64 * 1024 * 1024
_CONTROL_AFTER_GENERATE = {"fixed", "increment", "decrement", "randomize"}


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


def parse_workflow(data: Any, where: str, index: KnowledgeIndex) -> ParsedWorkflow:
    """Detect the format of parsed workflow JSON and collect its node uses."""
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
        data = data["prompt"]
    if not isinstance(data, dict):
        raise BadInput(f"{where}: top-level JSON is a {type(data).__name__}, not a workflow object")
    if "nodes" in data:
        if not isinstance(data["nodes"], list):
            raise BadInput(f"{where}: 'nodes' must be a list of node objects (UI format)")
        return _UiReader(data, where, index).read()
    if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
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
        values: list[tuple[str | None, Any]] = [(str(k), v) for k, v in inputs.items() if not _is_link(v)]
        parsed.nodes.append(NodeUse(node_id=str(node_id), class_type=ctype, values=values))
    return parsed


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and isinstance(value[1], int)
    )


class _UiReader:
    """Walks a UI-format graph, its subgraphs and group nodes."""

    def __init__(self, data: dict[str, Any], where: str, index: KnowledgeIndex) -> None:
        self.where = where
        self.index = index
        self.parsed = ParsedWorkflow(format="ui")
        definitions = data.get("definitions") or {}
        subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
        self.subgraphs: dict[str, dict[str, Any]] = {
            str(s["id"]): s
            for s in (subgraphs or [])
            if isinstance(s, dict) and "id" in s and isinstance(s.get("nodes"), list)
        }
        extra = data.get("extra") or {}
        groups = extra.get("groupNodes") if isinstance(extra, dict) else None
        self.group_nodes: dict[str, dict[str, Any]] = groups if isinstance(groups, dict) else {}
        self.data = data

    def read(self) -> ParsedWorkflow:
        self._walk(self.data["nodes"], prefix="", overrides={}, depth=0)
        return self.parsed

    def _walk(self, nodes: list[Any], prefix: str, overrides: dict[str, dict[str, Any]], depth: int) -> None:
        if depth > 32:
            raise BadInput(
                f"{self.where}: subgraphs nested more than 32 deep (a subgraph that contains itself?)"
            )
        for node in nodes:
            if not isinstance(node, dict):
                raise BadInput(f"{self.where}: a node entry is a {type(node).__name__}, not an object")
            raw_id = node.get("id")
            ctype = node.get("type")
            node_id = f"{prefix}{raw_id}"
            if not isinstance(ctype, str) or not ctype:
                raise BadInput(f"{self.where}: node {node_id}: 'type' must be a non-empty string")
            mode = node.get("mode", 0)
            if ctype in FRONTEND_ONLY:
                self._skip(node_id, ctype, "frontend-only")
                if ctype in ("Note", "MarkdownNote"):
                    self.parsed.notes.extend(
                        v for v in _list(node.get("widgets_values")) if isinstance(v, str)
                    )
                continue
            if mode == MODE_MUTED:
                self._skip(node_id, ctype, "muted")
                continue
            if mode == MODE_BYPASSED:
                self._skip(node_id, ctype, "bypassed")
                continue
            properties = _properties(node)
            values = self._named_values(node, ctype)
            # Values an enclosing subgraph instance passes down win over the node's own,
            # also when this node is itself a (nested) subgraph instance.
            replaced = overrides.get(str(raw_id)) or {}
            if replaced:
                values = [(name, replaced.get(name, value) if name else value) for name, value in values]
                known = {name for name, _ in values}
                values += [(name, value) for name, value in replaced.items() if name not in known]
            if ctype in self.subgraphs:
                inner = self._subgraph_overrides(node, self.subgraphs[ctype], values, replaced)
                self._walk(self.subgraphs[ctype]["nodes"], f"{node_id}:", inner, depth + 1)
                continue
            if SUBGRAPH_ID.match(ctype):
                raise BadInput(
                    f"{self.where}: node {node_id} is a subgraph ({ctype}) missing from "
                    "definitions.subgraphs; re-export the workflow from ComfyUI"
                )
            group_name = _group_name(ctype)
            if group_name is not None and group_name in self.group_nodes:
                self._expand_group(node_id, node, self.group_nodes[group_name])
                continue
            self.parsed.nodes.append(
                NodeUse(node_id=node_id, class_type=ctype, values=values, properties=properties)
            )

    def _skip(self, node_id: str, ctype: str, reason: str) -> None:
        self.parsed.skipped.append(SkippedNode(node_id=node_id, class_type=ctype, reason=reason))

    def _named_values(self, node: dict[str, Any], ctype: str) -> list[tuple[str | None, Any]]:
        """widgets_values paired with input names, as far as the file and the index tell."""
        widgets = node.get("widgets_values")
        if isinstance(widgets, dict):
            return [(str(k), v) for k, v in widgets.items()]
        if not isinstance(widgets, list):
            return []
        named = node.get("widgets_values_named")
        if isinstance(named, dict) and named:
            pairs: list[tuple[str | None, Any]] = [(str(k), v) for k, v in named.items()]
            listed = set(map(id, named.values()))
            return pairs + [(None, v) for v in widgets if id(v) not in listed and v not in named.values()]
        learned = self.index.widget_order.get(ctype)
        if learned is not None and len(learned) == len(widgets):
            return list(zip(learned, widgets, strict=True))
        names = [
            str(i["widget"]["name"])
            for i in _list(node.get("inputs"))
            if isinstance(i, dict) and isinstance(i.get("widget"), dict) and "name" in i["widget"]
        ]
        return align_widget_names(names, widgets) or [(None, v) for v in widgets]

    def _subgraph_overrides(
        self,
        instance: dict[str, Any],
        subgraph: dict[str, Any],
        values: list[tuple[str | None, Any]],
        passed_down: dict[str, Any] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Values the instance sets on inner nodes: {inner node id: {input name: value}}.

        ``passed_down`` holds what an enclosing instance set on this (nested) instance, by
        widget name; it wins over the instance's own promoted (proxy) widget values.
        """
        out: dict[str, dict[str, Any]] = {}
        passed_down = passed_down or {}
        props = _properties(instance)
        proxies = props.get("proxyWidgets")
        widgets = instance.get("widgets_values")
        if isinstance(proxies, list):
            own = widgets if isinstance(widgets, list) and len(proxies) == len(widgets) else None
            for position, proxy in enumerate(proxies):
                if not (isinstance(proxy, list) and len(proxy) == 2 and str(proxy[0]) != "-1"):
                    continue
                name = str(proxy[1])
                if name in passed_down:
                    out.setdefault(str(proxy[0]), {})[name] = passed_down[name]
                elif own is not None:
                    out.setdefault(str(proxy[0]), {})[name] = own[position]
        by_name = {name: value for name, value in values if name}
        inner_nodes = {str(n.get("id")): n for n in _list(subgraph.get("nodes")) if isinstance(n, dict)}
        links = {}
        for link in _list(subgraph.get("links")):
            if isinstance(link, dict) and isinstance(link.get("id"), (int, str)):
                links[link["id"]] = (str(link.get("target_id")), link.get("target_slot"))
            elif isinstance(link, list) and len(link) >= 5 and isinstance(link[0], (int, str)):
                links[link[0]] = (str(link[3]), link[4])
        for sub_input in _list(subgraph.get("inputs")):
            if (
                not isinstance(sub_input, dict)
                or not isinstance(sub_input.get("name"), str)
                or sub_input["name"] not in by_name
            ):
                continue
            for link_id in _list(sub_input.get("linkIds")):
                target = links.get(link_id) if isinstance(link_id, (int, str)) else None
                if target is None or target[0] not in inner_nodes:
                    continue
                inputs = _list(inner_nodes[target[0]].get("inputs"))
                slot = target[1]
                if isinstance(slot, int) and 0 <= slot < len(inputs) and isinstance(inputs[slot], dict):
                    out.setdefault(target[0], {})[str(inputs[slot].get("name"))] = by_name[sub_input["name"]]
        return out

    def _expand_group(self, node_id: str, node: dict[str, Any], group: dict[str, Any]) -> None:
        """Legacy group node: its definition's nodes, fed the instance's widget values in order."""
        inner_nodes = [n for n in _list(group.get("nodes")) if isinstance(n, dict)]
        widgets = node.get("widgets_values")
        remaining = list(widgets) if isinstance(widgets, list) else []
        total = sum(
            len(n.get("widgets_values") or [])
            for n in inner_nodes
            if isinstance(n.get("widgets_values"), list)
        )
        use_instance = len(remaining) == total
        rebuilt = []
        for position, inner in enumerate(inner_nodes):
            inner = dict(inner)
            inner.setdefault("id", inner.get("index", position))
            own = inner.get("widgets_values")
            if use_instance and isinstance(own, list):
                inner["widgets_values"], remaining = remaining[: len(own)], remaining[len(own) :]
            rebuilt.append(inner)
        self._walk(rebuilt, f"{node_id}:", {}, 1)


def _list(value: Any) -> list[Any]:
    """The value if it is a list, else empty: malformed optional fields are ignored."""
    return value if isinstance(value, list) else []


def _properties(node: dict[str, Any]) -> dict[str, Any]:
    props = node.get("properties")
    return props if isinstance(props, dict) else {}


def _group_name(ctype: str) -> str | None:
    for sep in (">", "/"):
        if ctype.startswith(f"workflow{sep}"):
            return ctype[len("workflow") + 1 :]
    return None


def align_widget_names(names: list[str], widgets: list[Any]) -> list[tuple[str | None, Any]] | None:
    """Pair widget names from node inputs with values, or None when the counts disagree.

    control_after_generate slots after a seed are named as such. Recent frontends list every
    widget in ``inputs``; older ones list only widgets turned into inputs. Names are used
    only when the counts agree, otherwise they would be guesses.
    """
    out: list[tuple[str | None, Any]] = []
    k = 0
    for value in widgets:
        prev = out[-1][0] if out else None
        if prev in ("seed", "noise_seed") and isinstance(value, str) and value in _CONTROL_AFTER_GENERATE:
            out.append(("control_after_generate", value))
        elif k < len(names):
            out.append((names[k], value))
            k += 1
        else:
            out.append((None, value))
    unnamed = sum(1 for name, _ in out if name is None)
    # One unnamed trailing slot is normal (LoadImage's upload button); more means misalignment.
    if k != len(names) or unnamed > 1 or (unnamed == 1 and out[-1][0] is not None):
        return None
    return out
