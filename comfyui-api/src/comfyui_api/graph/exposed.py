"""The inputs a workflow's author exposed: the promoted widgets of its top-level subgraph instances.

A subgraph's inputs that feed widgets inside it (and are not wired to anything outside) show up as
widgets on the instance: they are the knobs the author chose to show, so they make natural request
parameters. Each is traced to the prompt inputs its value reaches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from comfyui_api.graph.convert import build_prompt
from comfyui_api.graph.flatten import FlatGraph
from comfyui_api.graph.formats import as_dict, is_link


@dataclass
class Exposed:
    """One promoted widget: its name on the instance, and the (prompt node id, input) pairs it sets."""

    name: str
    instance: str
    targets: list[tuple[str, str]]
    label: str = ""  # the name the author gave it in ComfyUI, when renamed


@dataclass
class Conversion:
    """A UI workflow converted: the API prompt, and the inputs its author exposed (may be empty)."""

    prompt: dict[str, Any]
    exposed: list[Exposed] = field(default_factory=list)


def convert(workflow: dict[str, Any], object_info: dict[str, Any], where: str = "workflow") -> Conversion:
    """The prompt ComfyUI's frontend makes of ``workflow`` plus the exposed inputs of its top-level subgraphs."""
    graph = FlatGraph(workflow, where)
    prompt, uses = build_prompt(graph, object_info, where)
    exposed: list[Exposed] = []
    for flat in graph.nodes.values():
        if flat.kind != "subgraph" or flat.path:
            continue
        promoted: dict[str, Exposed] = {}
        labels = {str(i.get("name")): i.get("label") for i in flat.definition_inputs if isinstance(i, dict)}
        for slot in flat.inputs:
            name = str(slot.get("name"))
            targets = uses.get((flat.exec_id, name))
            if slot.get("link") is None and targets:
                label = slot.get("label") or labels.get(name) or ""
                promoted[name] = Exposed(name, flat.exec_id, targets, str(label))
        proxies = as_dict(flat.node.get("properties")).get("proxyWidgets")
        if not isinstance(proxies, list):
            exposed += promoted.values()
            continue
        # Newer files list the instance's widgets in order: ["-1", name] for an input-promoted
        # widget, [inner node id, widget name] for an inner widget shown directly.
        for entry in proxies:
            if not (isinstance(entry, list) and len(entry) == 2):
                continue
            node_id, name = str(entry[0]), str(entry[1])
            if node_id == "-1":
                if name in promoted:
                    exposed.append(promoted.pop(name))
                continue
            target = f"{flat.exec_id}:{node_id}"
            inputs = prompt.get(target, {}).get("inputs", {})
            if name in inputs and not is_link(inputs[name]):
                exposed.append(Exposed(name, flat.exec_id, [(target, name)]))
        exposed += promoted.values()
    return Conversion(prompt, exposed)


def param_name(label: str) -> str:
    """A request field name from a subgraph input's name: lower case, words joined by '_'."""
    name = re.sub(r"[^0-9A-Za-z]+", "_", label).strip("_").lower()
    return name if name and not name[0].isdigit() else f"input_{name}"
