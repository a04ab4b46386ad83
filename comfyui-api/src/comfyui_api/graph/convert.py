"""UI workflow → API prompt, as the frontend's ``graphToPrompt`` builds it.

Widget values come from /object_info-driven widget lists (see ``widgets``); inputs are resolved
through the flattened graph (see ``flatten``); a PrimitiveNode writes its value into the widgets it
feeds; inputs wired to muted nodes are dropped at the end.
"""

from __future__ import annotations

from typing import Any

from comfyui_api.graph.flatten import FlatGraph, FlatNode, GraphError
from comfyui_api.graph.formats import VALUE_SOURCES, as_dict, as_list
from comfyui_api.graph.widgets import UNDEFINED, NodeWidgets, align_widget_names


class WidgetValues:
    """The widget values every node of a flattened graph has after the frontend loaded the file.

    With a node's /object_info definition the widgets are exactly the frontend's; without one
    (analysis of packs nobody installed yet) names come from the file's own input list or from
    ``learned_order`` (class type → widget names seen in real workflows), and may stay unknown.
    """

    def __init__(
        self,
        graph: FlatGraph,
        object_info: dict[str, Any] | None = None,
        learned_order: dict[str, list[str | None]] | None = None,
    ) -> None:
        self.graph = graph
        self.object_info = object_info or {}
        self.learned_order = learned_order or {}
        self._cache: dict[str, list[tuple[str | None, Any, bool]]] = {}
        self._layouts: dict[str, NodeWidgets] = {}
        self._overrides: dict[str, dict[str, Any]] = {}
        self._collect_primitives()
        self._collect_proxies()
        graph.promoted_value = self.promoted

    def _collect_primitives(self) -> None:
        for flat in self.graph.nodes.values():
            values = as_list(flat.node.get("widgets_values"))
            if flat.class_type not in VALUE_SOURCES or not values:
                continue
            outputs = as_list(flat.node.get("outputs"))
            links = as_list(outputs[0].get("links")) if outputs and isinstance(outputs[0], dict) else []
            for link_id in links:
                link = flat.scope.links.get(link_id) if isinstance(link_id, int) else None
                target = self.graph.nodes.get(":".join((*flat.path, str(link.target_id)))) if link else None
                if link is None or target is None or link.target_slot >= len(target.inputs):
                    continue
                widget = as_dict(target.inputs[link.target_slot].get("widget")).get("name")
                if isinstance(widget, str):
                    self._overrides.setdefault(target.exec_id, {})[widget] = values[0]

    def _collect_proxies(self) -> None:
        """Promoted widgets of subgraph instances (``properties.proxyWidgets``) show an inner node's widget."""
        for flat in self.graph.nodes.values():
            if flat.kind != "subgraph":
                continue
            proxies = as_list(as_dict(flat.node.get("properties")).get("proxyWidgets"))
            values = flat.node.get("widgets_values")
            if not isinstance(values, list) or len(values) != len(proxies):
                continue
            for position, proxy in enumerate(proxies):
                if not (isinstance(proxy, list) and len(proxy) == 2) or str(proxy[0]) == "-1":
                    continue
                name = str(proxy[1])
                passed = self._overrides.get(flat.exec_id, {})
                value = passed[name] if name in passed else values[position]
                if value is not None:
                    self._overrides.setdefault(f"{flat.exec_id}:{proxy[0]}", {})[name] = value

    def widgets(self, flat: FlatNode) -> list[tuple[str | None, Any, bool]]:
        """(name, value, sent to the server) for each widget of the node, in order."""
        cached = self._cache.get(flat.exec_id)
        if cached is not None:
            return cached
        out: list[tuple[str | None, Any, bool]]
        if flat.kind == "subgraph":
            out = [(name, value, True) for name, value in self._promoted_widgets(flat)]
        else:
            info = self.object_info.get(flat.class_type)
            saved = flat.node.get("widgets_values")
            if isinstance(info, dict):
                layout = self._layouts.get(flat.class_type)
                if layout is None:
                    layout = self._layouts[flat.class_type] = NodeWidgets(info)
                out = [(w.name, v, w.to_prompt) for w, v in layout.assign(saved)]
            else:
                out = [(name, v, True) for name, v in self._guess_names(flat, saved)]
            overrides = self._overrides.get(flat.exec_id, {})
            out = [(n, overrides.get(n, v) if n else v, p) for n, v, p in out]
        self._cache[flat.exec_id] = out
        return out

    def _guess_names(self, flat: FlatNode, saved: Any) -> list[tuple[str | None, Any]]:
        if isinstance(saved, dict):
            return [(str(k), v) for k, v in saved.items()]
        if not isinstance(saved, list):
            return []
        named = flat.node.get("widgets_values_named")  # comfyui-workflow-templates-json adds names
        if isinstance(named, dict) and named:
            pairs: list[tuple[str | None, Any]] = [(str(k), v) for k, v in named.items()]
            return pairs + [(None, v) for v in saved if v not in named.values()]
        learned = self.learned_order.get(flat.class_type)
        if learned is not None and len(learned) == len(saved):
            return list(zip(learned, saved, strict=True))
        names = [
            str(i["widget"]["name"])
            for i in flat.inputs
            if isinstance(i.get("widget"), dict) and "name" in i["widget"]
        ]
        return align_widget_names(names, saved) or [(None, v) for v in saved]

    def _promoted_widgets(self, instance: FlatNode) -> list[tuple[str, Any]]:
        """Widgets a subgraph instance shows for its inputs wired to inner widgets, with their values."""
        sub = self.graph.subgraphs[instance.class_type]
        by_name = {
            str(i.get("name")): i for i in as_list(sub.definition.get("inputs")) if isinstance(i, dict)
        }
        found: list[tuple[str, Any]] = []
        for slot in instance.inputs:
            sub_input = by_name.get(str(slot.get("name")))
            if sub_input is None:
                continue
            for link_id in as_list(sub_input.get("linkIds")):
                link = sub.links.get(link_id) if isinstance(link_id, int) else None
                inner = self.graph.nodes.get(f"{instance.exec_id}:{link.target_id}") if link else None
                if inner is None:
                    continue
                target = next((i for i in inner.inputs if i.get("link") == link_id), None)
                widget = as_dict(target.get("widget")).get("name") if target else None
                match = (
                    [v for n, v, _p in self.widgets(inner) if n == widget] if isinstance(widget, str) else []
                )
                if match or (
                    isinstance(widget, str)
                    and inner.class_type not in self.object_info
                    and inner.kind != "subgraph"
                ):
                    found.append((str(sub_input.get("name")), match[0] if match else UNDEFINED))
                    break
        saved = instance.node.get("widgets_values")
        saved = saved if isinstance(saved, list) else []
        values = [(name, saved[i] if i < len(saved) else v) for i, (name, v) in enumerate(found)]
        proxies = as_dict(instance.node.get("properties")).get("proxyWidgets")
        if isinstance(proxies, list):
            # The frontend rebuilds the instance's widgets from proxyWidgets: an inner widget shown
            # directly hides the input-promoted widget of the same name; '-1' entries keep theirs.
            entries = [(str(p[0]), str(p[1])) for p in proxies if isinstance(p, list) and len(p) == 2]
            listed = {name for _node, name in entries}
            kept = [(n, v) for n, v in values if n not in listed]
            for position, (node_id, name) in enumerate(entries):
                if node_id != "-1":
                    continue
                widget = next(((n, v) for n, v in values if n == name), None)
                if widget is not None:
                    value = (
                        saved[position]
                        if position < len(saved) and saved[position] is not None
                        else widget[1]
                    )
                    kept.append((name, value))
            values = kept
        overrides = self._overrides.get(instance.exec_id, {})
        return [(n, overrides.get(n, v)) for n, v in values]

    def promoted(self, instance: FlatNode, name: str) -> tuple[Any] | None:
        """(value,) of the instance's promoted widget for subgraph input ``name``, or None without one."""
        for n, v, _p in self.widgets(instance):
            if n == name:
                return (v,)
        return None


def _wrap(value: Any) -> Any:
    # A list would read as a link; the frontend boxes it and the server unboxes it.
    return {"__value__": value} if isinstance(value, list) else value


PromotedUses = dict[tuple[str, str], list[tuple[str, str]]]


def ui_to_api(
    workflow: dict[str, Any], object_info: dict[str, Any], where: str = "workflow"
) -> dict[str, Any]:
    """The API prompt ComfyUI's frontend would queue for this UI-format workflow.

    Raises GraphError (one line, naming the node) for what the frontend could not convert or
    the server could not run: unknown node types, broken subgraphs, nothing to execute.
    """
    return build_prompt(FlatGraph(workflow, where), object_info, where)[0]


def build_prompt(
    graph: FlatGraph, object_info: dict[str, Any], where: str
) -> tuple[dict[str, Any], PromotedUses]:
    """The prompt, and for each (subgraph instance, promoted widget) the prompt inputs its value reached."""
    values = WidgetValues(graph, object_info)
    uses: PromotedUses = {}
    prompt: dict[str, Any] = {}
    for flat in graph.executable():
        info = object_info.get(flat.class_type)
        if not isinstance(info, dict):
            raise GraphError(
                f"{where}: node {flat.exec_id} ({flat.class_type}) is not installed in ComfyUI; "
                "install its node pack, then restart"
            )
        inputs: dict[str, Any] = {}
        for name, value, to_prompt in values.widgets(flat):
            if name and to_prompt and value is not UNDEFINED:
                inputs[name] = _wrap(value)
        for slot, inp in enumerate(flat.inputs):
            graph.last_promoted = None
            resolved = graph.resolve_input(flat, slot)
            if resolved is None:
                continue
            if resolved[0] == "value":
                if resolved[1] is not UNDEFINED:
                    inputs[str(inp.get("name"))] = _wrap(resolved[1])
                    if graph.last_promoted is not None:
                        uses.setdefault(graph.last_promoted, []).append((flat.exec_id, str(inp.get("name"))))
                continue
            _link, origin, origin_slot = resolved  # type: ignore[misc]
            inputs[str(inp.get("name"))] = [str(origin), int(origin_slot)]
        title = flat.node.get("title") or info.get("display_name") or flat.class_type
        prompt[flat.exec_id] = {"inputs": inputs, "class_type": flat.class_type, "_meta": {"title": title}}
    for node in prompt.values():
        for name, value in list(node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in prompt:
                del node["inputs"][name]
    return prompt, uses
