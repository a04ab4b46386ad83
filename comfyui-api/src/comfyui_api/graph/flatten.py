"""A UI workflow flattened the way the frontend executes it: subgraphs expanded, links resolved.

Every node gets its execution id (``83:30`` = node 30 inside subgraph instance 83). Resolving an
input follows links through subgraph boundaries, bypassed nodes (first input of a matching type),
Reroutes, KJNodes Set/Get pairs and subgraph outputs, down to either a real node's output, a
subgraph input's widget value, or nothing. No /object_info is needed for this part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from comfyui_api.graph.formats import (
    FRONTEND_ONLY,
    GETTERS,
    MODE_BYPASSED,
    SUBGRAPH_ID,
    SUBGRAPH_INPUT_NODE,
    Link,
    as_dict,
    as_list,
    group_node_name,
    parse_links,
)
from comfyui_api.graph.groupnodes import group_inner_nodes, group_outputs

MAX_DEPTH = 32


class GraphError(Exception):
    """A workflow the frontend itself could not turn into a prompt; the message names the node."""


@dataclass
class Scope:
    """The root graph or one subgraph definition: its nodes and links."""

    id: str | None
    nodes: dict[str, dict[str, Any]]
    links: dict[int, Link]
    definition: dict[str, Any] = field(default_factory=dict)


@dataclass
class FlatNode:
    """One node as the frontend executes it (its DTO): execution id, the node, where it lives."""

    exec_id: str
    node: dict[str, Any]
    scope: Scope
    path: tuple[str, ...]
    instance: FlatNode | None
    kind: str  # "node" | "subgraph" | "group" | "virtual"
    definition_inputs: list[Any] = field(default_factory=list)  # a subgraph instance's definition inputs

    @property
    def class_type(self) -> str:
        return str(self.node.get("type"))

    @property
    def mode(self) -> Any:
        return self.node.get("mode", 0)

    @cached_property
    def inputs(self) -> list[dict[str, Any]]:
        """Input slots as the frontend holds them after loading the node.

        A subgraph instance has its definition's inputs, in the definition's order; the saved
        slot of the same name (if any) brings its link.
        """
        saved = [i if isinstance(i, dict) else {} for i in as_list(self.node.get("inputs"))]
        if self.kind != "subgraph":
            return saved
        by_name = {i.get("name"): i for i in saved}
        return [
            by_name.get(i.get("name"), {"name": i.get("name"), "type": i.get("type"), "link": None})
            for i in self.definition_inputs
            if isinstance(i, dict)
        ]


# ("link", exec id, slot) | ("value", value) | None
Resolved = tuple[str, Any] | tuple[str, str, int] | None
PromotedValue = Callable[["FlatNode", str], Any]


def valid_connection(a: Any, b: Any) -> bool:
    """LiteGraph's type check: '*', '' and missing types match anything; 'A,B' lists match per item."""
    a = 0 if a in ("", "*") else a
    b = 0 if b in ("", "*") else b
    if not a or not b or a == b:
        return True
    sa, sb = str(a).lower(), str(b).lower()
    if "," not in sa and "," not in sb:
        return sa == sb
    return any(valid_connection(x, y) for x in sa.split(",") for y in sb.split(","))


class FlatGraph:
    """All executable DTOs of a UI workflow and the frontend's link resolution between them."""

    def __init__(self, workflow: dict[str, Any], where: str = "workflow") -> None:
        self.where = where
        definitions = as_dict(workflow.get("definitions"))
        self.subgraphs: dict[str, Scope] = {}
        for sub in as_list(definitions.get("subgraphs")):
            if isinstance(sub, dict) and "id" in sub and isinstance(sub.get("nodes"), list):
                self.subgraphs[str(sub["id"])] = Scope(
                    str(sub["id"]), _nodes_by_id(sub["nodes"]), parse_links(sub.get("links")), sub
                )
        self.group_defs = as_dict(as_dict(workflow.get("extra")).get("groupNodes"))
        self.root = Scope(
            None, _nodes_by_id(as_list(workflow.get("nodes"))), parse_links(workflow.get("links"))
        )
        self.nodes: dict[str, FlatNode] = {}
        self._expand(self.root, (), None, ())
        self.promoted_value: PromotedValue = lambda _inst, _name: None
        self.last_promoted: tuple[str, str] | None = None  # the instance widget the last value came from

    def _expand(
        self, scope: Scope, path: tuple[str, ...], instance: FlatNode | None, stack: tuple[str, ...]
    ) -> None:
        if len(path) > MAX_DEPTH:
            raise GraphError(
                f"{self.where}: node {':'.join(path)}: subgraphs nested more than {MAX_DEPTH} deep"
            )
        for node_id, node in scope.nodes.items():
            ctype = node.get("type")
            exec_id = ":".join((*path, node_id))
            if not isinstance(ctype, str) or not ctype:
                raise GraphError(f"{self.where}: node {exec_id}: 'type' must be a non-empty string")
            if ctype in self.subgraphs:
                if ctype in stack:
                    raise GraphError(
                        f"{self.where}: node {exec_id}: subgraph {ctype} contains itself; "
                        "remove the loop in ComfyUI"
                    )
                flat = FlatNode(
                    exec_id,
                    node,
                    scope,
                    path,
                    instance,
                    "subgraph",
                    as_list(self.subgraphs[ctype].definition.get("inputs")),
                )
                self.nodes[exec_id] = flat
                self._expand(self.subgraphs[ctype], (*path, node_id), flat, (*stack, ctype))
                continue
            if SUBGRAPH_ID.match(ctype):
                raise GraphError(
                    f"{self.where}: node {exec_id} is a subgraph ({ctype}) missing from "
                    "definitions.subgraphs; save the workflow again from ComfyUI"
                )
            group = group_node_name(ctype)
            if group is not None and isinstance(self.group_defs.get(group), dict):
                self._expand_group(exec_id, node, self.group_defs[group], scope, path, instance)
                continue
            kind = "virtual" if ctype in FRONTEND_ONLY else "node"
            self.nodes[exec_id] = FlatNode(exec_id, node, scope, path, instance, kind)

    def _expand_group(
        self,
        exec_id: str,
        node: dict[str, Any],
        group: dict[str, Any],
        scope: Scope,
        path: tuple[str, ...],
        instance: FlatNode | None,
    ) -> None:
        """Legacy group node: its inner nodes run as ``<group node id>:<index>``."""
        self.nodes[exec_id] = FlatNode(exec_id, node, scope, path, instance, "group")
        nodes, links = group_inner_nodes(exec_id, node, group)
        inner_scope = Scope(f"group:{exec_id}", _nodes_by_id(nodes), links, group)
        self._expand(inner_scope, (*path, str(node.get("id"))), instance, ())

    # -- resolution ------------------------------------------------------------------------------

    def executable(self) -> Iterator[FlatNode]:
        """Nodes the frontend serialises into the prompt (real nodes, not muted or bypassed)."""
        for flat in self.nodes.values():
            if flat.kind == "node" and flat.mode not in (2, MODE_BYPASSED):
                yield flat

    def _child(self, flat: FlatNode, node_id: Any) -> FlatNode | None:
        return self.nodes.get(":".join((*flat.path, str(node_id))))

    def resolve_input(
        self, flat: FlatNode, slot: int, visited: set[tuple[Any, ...]] | None = None, type_: Any = None
    ) -> Resolved:
        visited = set() if visited is None else visited
        key = (flat.scope.id, flat.exec_id, "I", slot)
        if key in visited:
            raise GraphError(f"{self.where}: node {flat.exec_id}: links form a loop through input {slot}")
        visited.add(key)
        inputs = flat.inputs
        if slot < len(inputs) and "group_input" in inputs[slot]:
            group = self.nodes[inputs[slot]["group_node"]]
            names = [i.get("name") for i in group.inputs]
            wanted = inputs[slot]["group_input"]
            return self.resolve_input(group, names.index(wanted), visited) if wanted in names else None
        if slot >= len(inputs) or inputs[slot].get("link") is None:
            return None
        link = flat.scope.links.get(_int(inputs[slot]["link"]))
        if link is None:
            return None
        if flat.instance is not None and link.origin_id == SUBGRAPH_INPUT_NODE:
            outer_inputs = flat.instance.inputs
            if link.origin_slot >= len(outer_inputs):
                return None
            outer = outer_inputs[link.origin_slot]
            if outer.get("link") is None:
                # Promoting a widget gives the instance's input a widget locator named after it.
                widget = as_dict(outer.get("widget")).get("name", outer.get("name"))
                value = self.promoted_value(flat.instance, str(widget))
                self.last_promoted = (flat.instance.exec_id, str(widget))
                return None if value is None else ("value", value[0])
            # The frontend re-points links at the slot that holds them after loading.
            return self.resolve_input(flat.instance, link.origin_slot, visited)
        origin = self._child(flat, link.origin_id)
        if origin is None:
            return None
        return self.resolve_output(
            origin, link.origin_slot, type_ if type_ is not None else inputs[slot].get("type"), visited
        )

    def resolve_output(
        self, flat: FlatNode, slot: int, type_: Any, visited: set[tuple[Any, ...]]
    ) -> Resolved:
        key = (flat.scope.id, flat.exec_id, "O", slot)
        if key in visited:
            raise GraphError(f"{self.where}: node {flat.exec_id}: links form a loop through output {slot}")
        visited.add(key)
        if flat.mode == MODE_BYPASSED:
            index = self._bypass_slot(flat, slot, type_)
            return None if index < 0 else self.resolve_input(flat, index, visited)
        if flat.kind == "subgraph":
            return self._resolve_subgraph_output(flat, slot, type_, visited)
        if flat.kind == "group":
            outputs = group_outputs(self.group_defs[str(group_node_name(flat.class_type))])
            inner = self.nodes.get(f"{flat.exec_id}:{outputs[slot][0]}") if slot < len(outputs) else None
            return None if inner is None else self.resolve_output(inner, outputs[slot][1], type_, visited)
        if flat.kind == "virtual":
            if slot < len(flat.inputs):
                return self.resolve_input(flat, slot, visited, type_)
            if flat.class_type in GETTERS:
                return self._resolve_getter(flat, slot, type_, visited)
            return None
        return ("link", flat.exec_id, slot)

    def _resolve_subgraph_output(
        self, flat: FlatNode, slot: int, type_: Any, visited: set[tuple[Any, ...]]
    ) -> Resolved:
        sub = self.subgraphs[flat.class_type]
        outputs = as_list(sub.definition.get("outputs"))
        if slot >= len(outputs) or not isinstance(outputs[slot], dict):
            return None
        link_ids = as_list(outputs[slot].get("linkIds"))
        link = sub.links.get(_int(link_ids[0])) if link_ids else None
        if link is None:
            return None
        inner = self.nodes.get(":".join((*flat.path, str(flat.node.get("id")), str(link.origin_id))))
        if inner is None:
            raise GraphError(
                f"{self.where}: node {flat.exec_id}: subgraph output {slot} is wired straight to "
                "a subgraph input; connect it through a node in ComfyUI"
            )
        return self.resolve_output(inner, link.origin_slot, type_, visited)

    def _resolve_getter(
        self, flat: FlatNode, slot: int, type_: Any, visited: set[tuple[Any, ...]]
    ) -> Resolved:
        name = as_list(flat.node.get("widgets_values"))[:1]
        if not name or name[0] in ("", None):
            return None
        for other in flat.scope.nodes.values():
            if other.get("type") == "SetNode" and as_list(other.get("widgets_values"))[:1] == name:
                ins = as_list(other.get("inputs"))
                if slot >= len(ins) or not isinstance(ins[slot], dict) or ins[slot].get("link") is None:
                    return None
                link = flat.scope.links.get(_int(ins[slot]["link"]))
                origin = self._child(flat, link.origin_id) if link is not None else None
                if link is None or origin is None:
                    return None
                return self.resolve_output(origin, link.origin_slot, type_, visited)
        return None  # as the frontend does: the input stays unconnected (KJNodes only shows an alert)

    def _bypass_slot(self, flat: FlatNode, slot: int, type_: Any) -> int:
        inputs = flat.inputs
        outputs = as_list(flat.node.get("outputs"))
        out_type = (
            outputs[slot].get("type") if slot < len(outputs) and isinstance(outputs[slot], dict) else None
        )
        if type_ in ("*", ""):
            return slot if len(inputs) > slot else 0
        if (
            slot < len(inputs)
            and valid_connection(inputs[slot].get("type"), out_type)
            and valid_connection(inputs[slot].get("type"), type_)
        ):
            return slot
        for i, inp in enumerate(inputs):
            if inp.get("type") == type_:
                return i
        for i, inp in enumerate(inputs):
            if valid_connection(inp.get("type"), out_type) and valid_connection(inp.get("type"), type_):
                return i
        return -1


def _nodes_by_id(nodes: list[Any]) -> dict[str, dict[str, Any]]:
    return {str(n.get("id")): n for n in nodes if isinstance(n, dict)}


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -(1 << 62)
