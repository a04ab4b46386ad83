"""Which model files a workflow loads, the models folder of each, and where to download it.

A model reference is any input value that names a model file (by extension), found in
loader inputs, in nested rows such as rgthree's Power Lora Loader, and in subgraphs.
Folder, strongest evidence first: overrides, the node's ``properties.models``, what the
index learned about this (class type, input), the input's name, the index entry for the
filename, then the class name and finally words in the filename. URL: overrides, the
node's ``properties.models``, links in the workflow's own notes, then the index.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import comfyfleet.analysis.rules as rules
from comfyfleet.analysis.index import KnowledgeIndex
from comfyfleet.analysis.overrides import Overrides
from comfyfleet.analysis.workflow import NodeUse
from comfyfleet.manifest import ModelRef, UnresolvedModel
from comfyfleet.safety import normalize_model_name, unsafe_model_name_reason

# Inputs holding prose, where a model-like ending is a coincidence.
_TEXT_INPUTS = frozenset(
    {"text", "prompt", "string", "positive", "negative", "text_g", "text_l", "value", "wildcard_text"}
)
_URL = re.compile(r"https?://[^\s)\]>\"'`]+")
# Packs that download their own weights into their own folder: their enum values are not installs.
PACK_MANAGED_REPOS = frozenset(
    {
        "https://github.com/Fannovel16/comfyui_controlnet_aux",
        "https://github.com/Fannovel16/ComfyUI-Frame-Interpolation",
    }
)
# kijai's convention: "DownloadAndLoad..." nodes fetch their weights themselves on first use.
SELF_DOWNLOADING = re.compile(r"^DownloadAndLoad")


@dataclass
class ModelResolution:
    """Models of one workflow, and those needing a person's attention."""

    models: list[ModelRef] = field(default_factory=list)
    unresolved: list[UnresolvedModel] = field(default_factory=list)


def note_urls(notes: list[str]) -> dict[str, str]:
    """Download links mentioned in the workflow's notes, keyed by the file name they end in."""
    found: dict[str, str] = {}
    for text in notes:
        for url in _URL.findall(text):
            url = url.rstrip(".,;")
            name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
            if rules.looks_like_model_file(name):
                found.setdefault(name, url)
    return found


def model_values(node: NodeUse) -> Iterator[tuple[str | None, str]]:
    """(input name, value) for every value of a node that names a model file."""
    for name, value in node.values:
        yield from _scan(name, value, 0)


def _scan(name: str | None, value: Any, depth: int) -> Iterator[tuple[str | None, str]]:
    if depth > 4:
        return
    if isinstance(value, str):
        # Prompts may end in "embedding:name.pt"; that is prompt syntax, not a loader input.
        if name in _TEXT_INPUTS or "\n" in value or "embedding:" in value:
            return
        if rules.looks_like_model_file(value.strip()):
            yield name, value.strip()
    elif isinstance(value, dict):
        # Disabled rows of stacked loaders ({"on": false, "lora": ...}) load nothing.
        if value.get("on") is False or value.get("enabled") is False:
            return
        for key, inner in value.items():
            yield from _scan(str(key), inner, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            yield from _scan(name, inner, depth + 1)


def resolve_models(
    nodes: list[NodeUse],
    notes: list[str],
    index: KnowledgeIndex,
    overrides: Overrides | None,
    pack_of: dict[str, str] | None = None,
) -> ModelResolution:
    """Every model file the nodes load, resolved to folder/url where the evidence allows."""
    links = note_urls(notes)
    refs: dict[tuple[str, str], ModelRef] = {}
    unsafe: dict[str, UnresolvedModel] = {}
    unknown_folder: dict[str, UnresolvedModel] = {}
    for node in nodes:
        if (pack_of and pack_of.get(node.class_type) in PACK_MANAGED_REPOS) or SELF_DOWNLOADING.match(
            node.class_type
        ):
            continue
        declared = _declared_models(node)
        for input_name, raw in model_values(node):
            reason = unsafe_model_name_reason(raw)
            if reason:
                entry = unsafe.setdefault(
                    raw,
                    UnresolvedModel(
                        filename=raw,
                        reason=f"unsafe model name: {reason}; it will not be installed. Fix the value in the workflow",
                    ),
                )
                entry.node_ids.append(node.node_id)
                continue
            filename = normalize_model_name(raw)
            folder, url, sha256, source = _locate(
                node, input_name, filename, declared, links, index, overrides
            )
            if folder is None:
                entry = unknown_folder.setdefault(
                    filename,
                    UnresolvedModel(
                        filename=filename,
                        reason=(
                            f"cannot tell which models folder it belongs in (node {node.node_id}, "
                            f"{node.class_type}.{input_name or '?'}); add it under 'models:' in "
                            "workflows/overrides.yaml with folder and url"
                        ),
                    ),
                )
                entry.node_ids.append(node.node_id)
                continue
            ref = refs.get((folder, filename))
            if ref is None:
                ref = refs[(folder, filename)] = ModelRef(
                    filename=filename, folder=folder, url=url, sha256=sha256, source=source
                )
            else:
                ref.url = ref.url or url
                ref.sha256 = ref.sha256 or sha256
            if node.node_id not in ref.node_ids:
                ref.node_ids.append(node.node_id)

    result = ModelResolution(models=sorted(refs.values(), key=lambda r: (r.folder, r.filename)))
    result.unresolved.extend(unsafe.values())
    result.unresolved.extend(unknown_folder.values())
    for ref in result.models:
        problems = []
        if ref.source == "heuristic":
            # Never a silent guess: the folder came from words in a class or file name.
            problems.append(
                f"folder {ref.folder!r} is a guess from the node's or file's name; confirm it (folder) under "
                "'models:' in workflows/overrides.yaml"
            )
        if ref.url is None:
            problems.append(
                "no download URL known; add its url under 'models:' in workflows/overrides.yaml "
                "or place the file on the host yourself"
            )
        if problems:
            result.unresolved.append(
                UnresolvedModel(
                    filename=ref.filename,
                    folder=ref.folder,
                    node_ids=list(ref.node_ids),
                    reason="; ".join(problems),
                )
            )
    return result


def _declared_models(node: NodeUse) -> dict[str, dict[str, Any]]:
    declared: dict[str, dict[str, Any]] = {}
    entries = node.properties.get("models")
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            name = normalize_model_name(entry["name"])
            declared[name] = entry
            declared.setdefault(name.rsplit("/", 1)[-1], entry)
    return declared


def _locate(
    node: NodeUse,
    input_name: str | None,
    filename: str,
    declared: dict[str, dict[str, Any]],
    links: dict[str, str],
    index: KnowledgeIndex,
    overrides: Overrides | None,
) -> tuple[str | None, str | None, str | None, str]:
    """(folder, url, sha256, source of the folder) for one referenced file."""
    base = filename.rsplit("/", 1)[-1]
    override = overrides.model(filename) if overrides else None
    props = declared.get(filename) or declared.get(base)
    indexed = index.model(filename)

    folder: str | None = None
    source = ""
    candidates: list[tuple[str | None, str]] = [
        (override.folder if override else None, "override"),
        (_text(props.get("directory")) if props else None, "node_properties"),
        (_class_input_folder(node.class_type, input_name, index), "class_input"),
        (rules.folder_for_input(input_name), "input_name"),
        (indexed.folder if indexed else None, "index"),
        (_class_folder(node.class_type, index) if input_name is None else None, "class_input"),
    ]
    if filename.lower().endswith(rules.NO_NAME_GUESS_EXTENSIONS):
        # A TensorRT engine, ONNX graph or patch lives where its pack says: no guess from names.
        pass
    elif rules.MULTI_MODEL_LOADERS.search(node.class_type):
        candidates += [(rules.folder_for_filename(filename), "heuristic"), ("checkpoints", "heuristic")]
    else:
        candidates += [
            (rules.folder_for_class(node.class_type) if _is_generic(input_name) else None, "heuristic"),
            (rules.folder_for_filename(filename), "heuristic"),
        ]
    for found, how in candidates:
        if found:
            folder, source = rules.folder_without_name_prefix(rules.canonical_folder(found), filename), how
            break

    url = (
        (override.url if override else None)
        or (_text(props.get("url")) if props else None)
        or links.get(base)
        or (indexed.url if indexed else None)
    )
    sha256 = override.sha256 if override else None
    return folder, rules.download_url(url) if url else None, sha256, source


def _class_folder(class_type: str, index: KnowledgeIndex) -> str | None:
    """For a value whose input name is unknown: the folder, if all the class's model inputs share one."""
    learned = index.input_folders.get(class_type) or {}
    folders = set(learned.values()) | set(rules.CLASS_FOLDERS.get(class_type, ()))
    return folders.pop() if len(folders) == 1 else None


def _class_input_folder(class_type: str, input_name: str | None, index: KnowledgeIndex) -> str | None:
    learned = index.input_folders.get(class_type) or {}
    if not input_name:
        return None
    if input_name in learned:
        return learned[input_name]
    return rules.CLASS_INPUT_FOLDERS.get((class_type, input_name))


def _is_generic(input_name: str | None) -> bool:
    return input_name is None or rules.folder_for_input(input_name) is None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
