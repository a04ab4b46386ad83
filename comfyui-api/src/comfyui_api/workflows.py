"""Workflow files → endpoints: UI-to-API conversion, derived parameters, overrides, validation.

UI-format files become prompts through comfyui_api.graph (as ComfyUI's frontend converts them).
A workflow whose top-level subgraph shows widgets on its node takes those as its parameters;
otherwise parameters are derived deterministically: a fixed table says which node inputs users set
(prompt texts, seed, steps, cfg, sampler, scheduler, sizes, denoise, input images, ...),
/object_info gives their types, ranges and enums, and the workflow gives their defaults.
An optional `<name>.api.yaml` beside the workflow renames, hides, exposes or constrains them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from comfyui_api.graph import GraphError, detect_format, unwrap
from comfyui_api.graph import combo_options as _combo_options
from comfyui_api.graph import input_spec as _spec
from comfyui_api.graph import is_link as _is_link
from comfyui_api.graph.exposed import Conversion, convert, param_name
from comfyui_api.names import BadWorkflowName, workflow_name

MODEL_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf", ".onnx")

# (input name) on any sampler-like node → parameter name and description.
SAMPLER_INPUTS = {
    "seed": ("seed", "Random seed; the same seed and inputs give the same image."),
    "noise_seed": ("seed", "Random seed; the same seed and inputs give the same image."),
    "steps": ("steps", "Number of sampling steps."),
    "cfg": ("cfg", "Classifier-free guidance scale."),
    "sampler_name": ("sampler", "Sampler algorithm."),
    "scheduler": ("scheduler", "Noise schedule."),
    "denoise": ("denoise", "How much of the input latent to replace (1.0 = all)."),
}
SIZE_INPUTS = {
    "width": ("width", "Image width in pixels."),
    "height": ("height", "Image height in pixels."),
    "batch_size": ("batch_size", "Number of images to generate at once."),
    "length": ("length", "Number of frames."),
    "color": ("color", "Fill colour as 0xRRGGBB."),
}
CLASS_INPUTS = {
    ("LoraLoader", "strength_model"): ("lora_strength", "LoRA strength on the model."),
    ("LoraLoader", "strength_clip"): ("lora_clip_strength", "LoRA strength on the text encoder."),
    ("LoraLoaderModelOnly", "strength_model"): ("lora_strength", "LoRA strength on the model."),
    ("ImageScaleBy", "scale_by"): ("scale_by", "Resize factor."),
    ("ImageScale", "width"): ("width", "Output width in pixels."),
    ("ImageScale", "height"): ("height", "Output height in pixels."),
    ("FluxGuidance", "guidance"): ("guidance", "Flux guidance strength."),
}


PATHLIKE_INPUT = re.compile(r"(filename|prefix|path|dir|folder)", re.I)


def safe_relative_path(value: str) -> bool:
    """A relative path that stays inside whatever folder it is joined to."""
    if (
        not value
        or "\x00" in value
        or "\\" in value
        or value.startswith("/")
        or re.match(r"^[A-Za-z]:", value)
    ):
        return False
    return all(part not in ("..",) for part in value.split("/"))


class WorkflowError(Exception):
    """A workflow or override file that cannot become an endpoint; the message names file and node."""


@dataclass
class Param:
    """One request field of an endpoint and the node input it sets."""

    name: str
    node_id: str
    input: str
    kind: str  # integer | number | string | boolean | image
    default: Any
    description: str = ""
    enum: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    multiline: bool = False
    required: bool = False
    also: list[tuple[str, str]] = field(default_factory=list)  # more (node, input) pairs it sets

    def json_schema(self) -> dict[str, Any]:
        s: dict[str, Any]
        if self.kind == "image":
            s = {
                "type": "string",
                "description": (self.description + " " if self.description else "")
                + "An http(s) URL, a data: URI or plain base64 of the image, or the name of a file in ComfyUI's input folder.",
            }
        else:
            s = {"type": self.kind, "description": self.description}
        if self.default is not None:
            s["default"] = self.default
        if self.enum is not None:
            s["enum"] = self.enum
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        s["x-comfyui-node"] = self.node_id
        s["x-comfyui-input"] = self.input
        return s


@dataclass
class Endpoint:
    """A workflow served as POST /workflows/{name}."""

    name: str
    graph: dict[str, Any]
    params: dict[str, Param]
    source: str
    summary: str = ""
    description: str = ""
    output_nodes: list[str] = field(default_factory=list)
    model_inputs: list[tuple[str, str, str]] = field(default_factory=list)

    def request_schema(self) -> dict[str, Any]:
        props = {p.name: p.json_schema() for p in self.params.values()}
        required = [p.name for p in self.params.values() if p.required]
        s: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            s["required"] = required
        return s


def load_graph(path: Path, object_info: dict[str, Any]) -> Conversion:
    """API-format graph of a workflow file (UI format converted as ComfyUI's frontend does)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise WorkflowError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise WorkflowError(f"{path}: JSON nested too deeply to be a workflow") from None
    data = unwrap(data)
    kind = detect_format(data)
    if kind == "ui":
        if not isinstance(data.get("nodes"), list):
            raise WorkflowError(f"{path}: 'nodes' must be a list of node objects (UI format)")
        try:
            return convert(data, object_info, str(path))
        except GraphError as exc:
            raise WorkflowError(str(exc)) from None
    if kind == "api":
        return Conversion({str(k): v for k, v in data.items()})
    if not isinstance(data, dict):
        raise WorkflowError(f"{path}: top-level JSON is not an object; export the workflow from ComfyUI")
    raise WorkflowError(
        f"{path}: neither API format (node id → {{class_type, inputs}}) nor UI format ('nodes' list)"
    )


def _consumers(graph: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for nid, node in graph.items():
        for name, v in (node.get("inputs") or {}).items():
            if _is_link(v):
                out.setdefault(str(v[0]), []).append((nid, name))
    return out


def _text_role(
    graph: dict[str, Any], node_id: str, consumers: dict[str, list[tuple[str, str]]]
) -> str | None:
    """'positive' or 'negative' when the node's conditioning reaches a sampler input of that name."""
    seen = {node_id}
    frontier = [node_id]
    while frontier:
        nxt = []
        for n in frontier:
            for target, input_name in consumers.get(n, []):
                if input_name in ("positive", "negative"):
                    return input_name
                if target not in seen:
                    seen.add(target)
                    nxt.append(target)
        frontier = nxt
    return None


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def derive_params(graph: dict[str, Any], object_info: dict[str, Any]) -> list[Param]:
    """The parameters a workflow exposes by default, in a stable order."""
    consumers = _consumers(graph)
    found: list[tuple[str, str, str, str]] = []  # base name, node, input, description
    for nid in sorted(graph, key=_node_order):
        node = graph[nid]
        ctype = node.get("class_type", "")
        inputs = node.get("inputs") or {}
        info = object_info.get(ctype) or {}
        for name, value in inputs.items():
            if _is_link(value):
                continue
            spec = _spec(info, name)
            kind = spec[0] if spec else None
            if (ctype, name) in CLASS_INPUTS:
                base, desc = CLASS_INPUTS[(ctype, name)]
            elif ctype == "LoadImage" and name == "image":
                base, desc = "image", "Input image."
            elif name in ("text", "prompt") and kind == "STRING" and isinstance(value, str):
                role = _text_role(graph, nid, consumers)
                if role == "positive":
                    base, desc = "prompt", "What the image should show."
                elif role == "negative":
                    base, desc = "negative_prompt", "What the image should not show."
                else:
                    base, desc = f"text_{nid}", f"Text of node {nid}."
            elif name in SAMPLER_INPUTS and ("seed" in inputs or "noise_seed" in inputs or "steps" in inputs):
                base, desc = SAMPLER_INPUTS[name]
            elif name in SIZE_INPUTS and ctype.startswith("Empty"):
                base, desc = SIZE_INPUTS[name]
            else:
                continue
            found.append((base, nid, name, desc))
    counts: dict[str, int] = {}
    params = []
    for base, nid, name, desc in found:
        counts[base] = counts.get(base, 0) + 1
        pname = base if counts[base] == 1 else f"{base}_{nid}"
        params.append(make_param(pname, graph, object_info, nid, name, desc))
    return params


def exposed_params(conversion: Conversion, object_info: dict[str, Any]) -> list[Param]:
    """Parameters named after the inputs the workflow's subgraphs expose (empty when there are none)."""
    params: list[Param] = []
    taken: set[str] = set()
    for exposed in conversion.exposed:
        base = param_name(exposed.label or exposed.name)
        name = base if base not in taken else f"{base}_{exposed.instance}"
        taken.add(name)
        (nid, input_name), *rest = exposed.targets
        p = make_param(name, conversion.prompt, object_info, nid, input_name)
        p.also = [t for t in rest if t[0] in conversion.prompt]
        params.append(p)
    return params


def make_param(
    name: str, graph: dict[str, Any], object_info: dict[str, Any], nid: str, input_name: str, desc: str = ""
) -> Param:
    node = graph[nid]
    default = (node.get("inputs") or {}).get(input_name)
    info = object_info.get(node.get("class_type", "")) or {}
    spec = _spec(info, input_name)
    p = Param(name=name, node_id=nid, input=input_name, kind="string", default=default, description=desc)
    if node.get("class_type") == "LoadImage" and input_name == "image":
        p.kind = "image"
        return p
    if spec is None:
        p.kind = {bool: "boolean", int: "integer", float: "number"}.get(type(default), "string")
        return p
    kind, extra = spec
    options = _combo_options(kind, extra)
    if options is not None:
        p.enum = list(options)
        if default is not None and default not in p.enum:
            p.enum.append(default)
    elif kind == "INT":
        p.kind = "integer"
    elif kind == "FLOAT":
        p.kind = "number"
    elif kind == "BOOLEAN":
        p.kind = "boolean"
    if kind in ("INT", "FLOAT"):
        p.minimum = extra.get("min")
        p.maximum = extra.get("max")
    p.multiline = bool(extra.get("multiline"))
    if not desc and extra.get("tooltip"):
        p.description = str(extra["tooltip"])
    return p


_OVERRIDE_KEYS = {
    "rename",
    "hidden",
    "node",
    "input",
    "description",
    "default",
    "minimum",
    "maximum",
    "enum",
    "required",
}


def apply_overrides(
    params: list[Param], graph: dict[str, Any], object_info: dict[str, Any], path: Path, doc: Any
) -> tuple[dict[str, Param], str, str]:
    """Apply a <name>.api.yaml: rename / hide / expose / constrain; every mistake names the file and key."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise WorkflowError(
            f"{path}: must be a mapping with 'inputs:' (and optional 'summary', 'description')"
        )
    unknown = set(doc) - {"summary", "description", "inputs"}
    if unknown:
        raise WorkflowError(
            f"{path}: unknown key(s) {sorted(unknown)}; allowed: summary, description, inputs"
        )
    by_name = {p.name: p for p in params}
    for key, rule in (doc.get("inputs") or {}).items():
        where = f"{path}: inputs.{key}"
        if not isinstance(rule, dict):
            raise WorkflowError(
                f"{where}: must be a mapping (rename, hidden, node, input, minimum, maximum, enum, ...)"
            )
        bad = set(rule) - _OVERRIDE_KEYS
        if bad:
            raise WorkflowError(f"{where}: unknown key(s) {sorted(bad)}; allowed: {sorted(_OVERRIDE_KEYS)}")
        if "node" in rule or "input" in rule:
            nid, iname = str(rule.get("node", "")), str(rule.get("input", ""))
            if nid not in graph:
                raise WorkflowError(f"{where}: node {nid!r} is not in the workflow")
            if iname not in (graph[nid].get("inputs") or {}) or _is_link(graph[nid]["inputs"][iname]):
                raise WorkflowError(f"{where}: node {nid} has no literal input {iname!r} to expose")
            by_name.pop(key, None)
            by_name[key] = make_param(key, graph, object_info, nid, iname)
        if key not in by_name:
            raise WorkflowError(
                f"{where}: no derived input named {key!r}; known: {sorted(by_name)} "
                "(to expose another node input give node: and input:)"
            )
        p = by_name[key]
        for attr in ("description", "default", "minimum", "maximum", "enum", "required"):
            if attr in rule:
                setattr(p, attr, rule[attr])
        if p.enum is not None and p.default is not None and p.default not in p.enum and not p.required:
            raise WorkflowError(f"{where}: default {p.default!r} is not in enum {p.enum}")
        if rule.get("hidden"):
            del by_name[key]
            continue
        if "rename" in rule:
            new = str(rule["rename"])
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", new) or new in by_name:
                raise WorkflowError(f"{where}: cannot rename to {new!r} (must be a new identifier)")
            del by_name[key]
            p.name = new
            by_name[new] = p
    return by_name, str(doc.get("summary") or ""), str(doc.get("description") or "")


def build_endpoint(path: Path, object_info: dict[str, Any]) -> Endpoint:
    """One endpoint from a workflow file and its optional .api.yaml."""
    try:
        name = workflow_name(path)
    except BadWorkflowName as exc:
        raise WorkflowError(str(exc)) from None
    conversion = load_graph(path, object_info)
    graph = conversion.prompt
    for nid in sorted(graph, key=_node_order):
        ctype = graph[nid].get("class_type")
        if ctype not in object_info:
            raise WorkflowError(
                f"{path}: node {nid} ({ctype}) is not installed in ComfyUI; "
                "install its node pack, then restart"
            )
    params = exposed_params(conversion, object_info) or derive_params(graph, object_info)
    override_path = path.with_name(name + ".api.yaml")
    summary, description = "", ""
    if override_path.exists():
        try:
            doc = yaml.safe_load(override_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise WorkflowError(f"{override_path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        by_name, summary, description = apply_overrides(params, graph, object_info, override_path, doc)
    else:
        by_name = {p.name: p for p in params}
    outputs = [
        nid for nid, n in graph.items() if (object_info.get(n.get("class_type", "")) or {}).get("output_node")
    ]
    if not outputs:
        raise WorkflowError(f"{path}: no output node (SaveImage, PreviewImage, ...); ComfyUI would refuse it")
    models = []
    for nid, node in graph.items():
        info = object_info.get(node.get("class_type", "")) or {}
        for iname, v in (node.get("inputs") or {}).items():
            spec = _spec(info, iname)
            if (
                isinstance(v, str)
                and v.lower().endswith(MODEL_EXTENSIONS)
                and spec
                and _combo_options(*spec) is not None
            ):
                models.append((nid, iname, v))
    return Endpoint(
        name=name,
        graph=graph,
        params=by_name,
        source=str(path),
        summary=summary or f"Run workflow {name}",
        description=description,
        output_nodes=outputs,
        model_inputs=models,
    )


def workflow_files(directory: Path) -> list[Path]:
    """Workflow JSON files of a folder (generated lock/manifest files excluded)."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.glob("*.json")
        if not p.name.startswith(".") and not p.name.endswith((".lock.json", ".manifest.json"))
    )


def validate_request(ep: Endpoint, body: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Checked values for each parameter (defaults filled in) or 422 error entries naming the field."""
    errors: list[dict[str, Any]] = []
    if body is None:
        body = {}
    if not isinstance(body, dict):
        return {}, [{"loc": ["body", "input"], "msg": "input must be a JSON object", "type": "type_error"}]
    values: dict[str, Any] = {}
    for key in body:
        if key not in ep.params:
            errors.append(
                {
                    "loc": ["body", "input", key],
                    "type": "extra_forbidden",
                    "msg": f"unknown field {key!r}; this workflow accepts: {', '.join(sorted(ep.params)) or 'nothing'}",
                }
            )
    for name, p in ep.params.items():
        loc = ["body", "input", name]
        if name not in body:
            if p.required:
                errors.append({"loc": loc, "type": "missing", "msg": f"field {name!r} is required"})
            else:
                values[name] = p.default
            continue
        v = body[name]
        if p.kind == "integer":
            if isinstance(v, bool) or not isinstance(v, int):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                else:
                    errors.append({"loc": loc, "type": "int_type", "msg": f"{name} must be an integer"})
                    continue
        elif p.kind == "number":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                errors.append({"loc": loc, "type": "float_type", "msg": f"{name} must be a number"})
                continue
        elif p.kind == "boolean":
            if not isinstance(v, bool):
                errors.append({"loc": loc, "type": "bool_type", "msg": f"{name} must be true or false"})
                continue
        elif not isinstance(v, str):
            errors.append({"loc": loc, "type": "string_type", "msg": f"{name} must be a string"})
            continue
        if p.kind == "string" and PATHLIKE_INPUT.search(p.input) and not safe_relative_path(v):
            errors.append(
                {
                    "loc": loc,
                    "type": "path",
                    "msg": f"{name} must be a relative path without '..' (it names a file under ComfyUI's folders)",
                }
            )
            continue
        if p.enum is not None and v not in p.enum:
            shown = ", ".join(map(str, p.enum[:20])) + (" ..." if len(p.enum) > 20 else "")
            errors.append({"loc": loc, "type": "enum", "msg": f"{name} must be one of: {shown}"})
            continue
        if p.minimum is not None and v < p.minimum:
            errors.append({"loc": loc, "type": "greater_than_equal", "msg": f"{name} must be >= {p.minimum}"})
            continue
        if p.maximum is not None and v > p.maximum:
            errors.append({"loc": loc, "type": "less_than_equal", "msg": f"{name} must be <= {p.maximum}"})
            continue
        values[name] = v
    return values, errors


def apply_values(ep: Endpoint, values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the endpoint's graph with the parameter values set (shared sub-objects not mutated)."""
    graph = {nid: {**n, "inputs": dict(n.get("inputs") or {})} for nid, n in ep.graph.items()}
    for name, v in values.items():
        p = ep.params[name]
        for nid, input_name in [(p.node_id, p.input), *p.also]:
            graph[nid]["inputs"][input_name] = v
    return graph
