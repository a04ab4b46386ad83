#!/usr/bin/env python3
"""Evaluate pack and model resolution on real-world workflows whose truth is known.

How we measure (data is never committed: point the script at fetched repositories):

- Sources: every git directory (bare, as the search tool's ``fetch`` leaves them in
  /work/.mirror/*/repo) or plain folder under ``--mirror`` (or ``$COMFYFLEET_EVAL_MIRROR``).
  Workflows are UI-format ``*.json`` files and PNGs with an embedded ``workflow`` chunk;
  real API exports are API-format ``*.json`` files and PNG ``prompt`` chunks. All are
  deduplicated by content.
- Pack truth, compared as lowercased ``owner/repo``: each executed node's
  ``properties.cnr_id`` (``comfy-core`` = core; a registry id is mapped to its repo through
  ComfyUI-Manager's data by id, repo name, or repo name without "comfyui"/punctuation),
  else its ``aux_id``. With ``--truth all`` (default), a node without metadata is labelled
  by the one fetched source tree whose NODE_CLASS_MAPPINGS / ``node_id=`` registers its
  class (ComfyUI's own tree means core; a repo the Manager knows only under another owner
  with the same name, e.g. an archived original, maps to that one). Frontend-only nodes and
  nodes without truth are not scored, but take part in the analysis.
- Model truth: ``properties.models`` ``{name, directory}`` of the node loading the file,
  else the folder the class's source lists for that input
  (``folder_paths.get_filename_list("X")``, with the pack's own ``add_model_folder_path`` /
  ``folder_names_and_paths`` registrations resolved to their paths). Unnamed values of a node
  loading several files are not scored.
- Analyzer input: ``ui`` = the workflow with ``cnr_id``, ``aux_id``, ``ver`` and ``models``
  removed from every node; ``api`` = the same converted to API format (executed nodes,
  subgraphs flattened, widget values named from the node's inputs; models are scored only
  where names were known); ``real-api`` = API exports as found, scored against their UI
  twin's truth (PNG) or the source trees.
- Scores: per workflow, truth packs T (of scored classes) vs predicted packs P (the packs
  the analysis gives those same classes, core counted as no pack); recall = sum |T∩P| /
  sum |T|, precision = sum |T∩P| / sum |P|. Models: share of truth references that come
  back with the same filename in the same top-level models folder. Baseline
  ``first-match``: ComfyUI-Manager's resolution (the first pack of its data listing or
  pattern-matching the class, core when core; the curated registry-only packs excluded).
- Split: workflows go to half A (tune) or B (held out) by a hash of repository and
  directory, so near-copies in one folder stay in one half. Misses are listed by category
  (pack absent from the Manager data, fork/renamed repo, class newer than the map,
  ambiguous class, core class given a pack, guess for an unknown pack).

Usage: .venv/bin/python scripts/eval_analysis.py [--mirror DIR] [--truth all|metadata]
       [--misses N] [--half A|B|all]
Prints numbers and exits 0 (it is a measurement, not a gate).
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.analysis import analyze_data, rules
from comfyfleet.analysis.index import KnowledgeIndex, default_index, plain_name
from comfyfleet.analysis.index_build import class_model_inputs
from comfyfleet.analysis.rules import FRONTEND_ONLY, SUBGRAPH_ID, canonical_folder, install_folder
from comfyfleet.analysis.workflow import align_widget_names
from comfyfleet.errors import BadInput

CORE = "core"
STRIPPED = ("cnr_id", "aux_id", "ver", "models")


# ---------------------------------------------------------------- gathering


@dataclass
class Sample:
    """One real-world UI workflow and where it came from."""

    repo: str
    path: str
    data: dict[str, Any] | None
    api: dict[str, Any] | None = None  # a real API-format export (PNG "prompt" chunk or JSON)

    @property
    def group(self) -> str:
        return f"{self.repo}/{self.path.rsplit('/', 1)[0] if '/' in self.path else ''}"


def _png_texts(blob: bytes) -> dict[str, str]:
    """tEXt / zTXt / iTXt chunks of a PNG, keyword -> text."""
    out: dict[str, str] = {}
    if not blob.startswith(b"\x89PNG\r\n\x1a\n"):
        return out
    pos = 8
    while pos + 8 <= len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        kind = blob[pos + 4 : pos + 8]
        body = blob[pos + 8 : pos + 8 + length]
        pos += 12 + length
        try:
            if kind == b"tEXt":
                key, _, text = body.partition(b"\0")
                out[key.decode("latin-1")] = text.decode("utf-8", "replace")
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("utf-8", "replace")
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed = rest[0]
                rest = rest[2:]
                _, _, rest = rest.partition(b"\0")  # language
                _, _, text = rest.partition(b"\0")  # translated keyword
                out[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode(
                    "utf-8", "replace"
                )
            elif kind == b"IEND":
                break
        except (zlib.error, IndexError, UnicodeDecodeError):
            continue
    return out


def _json_of(blob: bytes, path: str, png_chunk: str) -> Any:
    """Parsed JSON of a file, or of a PNG's text chunk; None when there is none."""
    if path.lower().endswith(".png"):
        text = _png_texts(blob).get(png_chunk)
        if not text:
            return None
        blob = text.encode()
    try:
        return json.loads(blob.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        return None


def _as_ui(blob: bytes, path: str) -> dict[str, Any] | None:
    data = _json_of(blob, path, "workflow")
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and data["nodes"]:
        return data
    return None


def _as_api(blob: bytes, path: str) -> dict[str, Any] | None:
    data = _json_of(blob, path, "prompt")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(v, dict) and isinstance(v.get("class_type"), str) for v in data.values())
    ):
        return data
    return None


def _git_files(git_dir: Path) -> Iterator[tuple[str, bytes]]:
    listing = subprocess.run(
        ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "HEAD"], capture_output=True, text=True
    )
    wanted = []
    for line in listing.stdout.splitlines():
        meta, _, name = line.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] == "blob" and name.lower().endswith((".json", ".png")):
            wanted.append((parts[2], name))
    if not wanted:
        return
    proc = subprocess.Popen(
        ["git", "--git-dir", str(git_dir), "cat-file", "--batch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin and proc.stdout
    for sha, name in wanted:
        proc.stdin.write(f"{sha}\n".encode())
        proc.stdin.flush()
        header = proc.stdout.readline().split()
        if len(header) != 3:
            continue  # "<sha> missing": large files may be absent from a snapshot
        size = int(header[2])
        blob = proc.stdout.read(size)
        proc.stdout.read(1)
        if size < 32 * 2**20:
            yield name, blob
    proc.stdin.close()
    proc.wait()


def gather(root: Path) -> list[Sample]:
    """UI workflows from every git dir / folder under root, deduplicated by content."""
    samples: list[Sample] = []
    seen: set[str] = set()
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        git_dir = entry / "repo" if (entry / "repo" / "HEAD").is_file() else entry
        if (git_dir / "HEAD").is_file() and (git_dir / "objects").is_dir():
            files: Iterator[tuple[str, bytes]] = _git_files(git_dir)
        else:
            files = (
                (str(p.relative_to(entry)), p.read_bytes())
                for p in sorted(entry.rglob("*"))
                if p.suffix.lower() in (".json", ".png") and p.is_file()
            )
        for name, blob in files:
            data = _as_ui(blob, name)
            api = _as_api(blob, name)
            if data is not None:
                digest = hashlib.sha256(json.dumps(data.get("nodes"), sort_keys=True).encode()).hexdigest()
                data = None if digest in seen else data
                seen.add(digest)
            if api is not None:
                digest = "api:" + hashlib.sha256(json.dumps(api, sort_keys=True).encode()).hexdigest()
                api = None if digest in seen else api
                seen.add(digest)
            if data is not None or api is not None:
                samples.append(Sample(repo=entry.name.replace("+", "/"), path=name, data=data, api=api))
    return samples


def half_of(sample: Sample) -> str:
    """A or B, stable, by repository and directory."""
    return "A" if hashlib.sha256(sample.group.encode()).digest()[0] % 2 == 0 else "B"


# ---------------------------------------------------------------- truth


def repo_key(repo: str) -> str:
    key = repo.strip().lower().rstrip("/").removesuffix(".git")
    for prefix in ("https://github.com/", "http://github.com/", "github.com/"):
        key = key.removeprefix(prefix)
    return key


class Truth:
    """Maps node metadata to a repo key ('owner/name', lowercased) the way a person would."""

    def __init__(self, index: KnowledgeIndex) -> None:
        self.by_id: dict[str, str] = {}
        self.by_name: dict[str, list[str]] = defaultdict(list)
        self.by_plain: dict[str, list[str]] = defaultdict(list)
        for pack in index.packs:
            key = repo_key(pack.repo)
            self.by_id.setdefault(pack.id.lower(), key)
            self.by_name[key.rsplit("/", 1)[-1].replace("_", "-")].append(key)
            self.by_plain[plain_name(key.rsplit("/", 1)[-1])].append(key)
        self.stars = {repo_key(p.repo): p.stars for p in index.packs}
        self.index = index

    def moved(self, pack: str, ctype: str) -> str:
        """The Manager's home for a fetched repo it does not list but lists a same-named repo
        for this class (WASasquatch/was-node-suite-comfyui, archived -> ltdrdata's copy)."""
        if self.index.pack_by_repo(pack) is not None:
            return pack
        name = pack.rsplit("/", 1)[-1]
        for i in self.index.packs_listing(ctype):
            if repo_key(self.index.packs[i].repo).rsplit("/", 1)[-1] == name:
                return repo_key(self.index.packs[i].repo)
        return pack

    def pack(self, props: dict[str, Any]) -> str | None:
        """Registry id first (it names the pack, whoever's git remote aux_id shows), then aux_id."""
        cnr, aux = props.get("cnr_id"), props.get("aux_id")
        if cnr == "comfy-core":
            return CORE
        if isinstance(cnr, str) and cnr:
            low = cnr.lower()
            if low in self.by_id:
                return self.by_id[low]
            named = self.by_name.get(low.replace("_", "-")) or self.by_plain.get(plain_name(low))
            if named:
                return max(named, key=lambda k: self.stars.get(k, 0))
        if isinstance(aux, str) and "/" in aux:
            return repo_key(aux)
        if isinstance(cnr, str) and cnr:
            return f"cnr:{cnr.lower()}"
        return None


def _executed(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(node id path, node, enclosing subgraph definition) for nodes that run."""
    subs = {
        str(s.get("id")): s
        for s in ((data.get("definitions") or {}).get("subgraphs") or [])
        if isinstance(s, dict)
    }

    def walk(nodes: list[Any], prefix: str, sub: dict[str, Any] | None, depth: int) -> Iterator[Any]:
        for node in nodes:
            if not isinstance(node, dict) or not isinstance(node.get("type"), str) or depth > 16:
                continue
            if node.get("mode") in (2, 4) or node["type"] in FRONTEND_ONLY:
                continue
            if node["type"] in subs:
                inner = subs[node["type"]]
                yield from walk(inner.get("nodes") or [], f"{prefix}{node.get('id')}:", inner, depth + 1)
                continue
            yield f"{prefix}{node.get('id')}", node, sub

    yield from walk(data["nodes"], "", None, 0)


def widget_names(node: dict[str, Any]) -> list[tuple[str | None, Any]] | None:
    """widgets_values paired with names from the node's inputs, or None when they do not align."""
    values = node.get("widgets_values")
    if isinstance(values, dict):
        return [(str(k), v) for k, v in values.items()]
    if not isinstance(values, list):
        return []
    names = [
        str(i["widget"]["name"])
        for i in node.get("inputs") or []
        if isinstance(i, dict) and isinstance(i.get("widget"), dict) and i["widget"].get("name")
    ]
    return align_widget_names(names, values)


class SourceFolders:
    """(class type, input) -> models folder, read from ComfyUI's and mirrored packs' source."""

    def __init__(self, root: Path) -> None:
        self.inputs: dict[str, dict[str, str]] = defaultdict(dict)
        # class type -> repo keys whose source registers it (core for ComfyUI itself)
        self.defined_by: dict[str, set[str]] = defaultdict(set)
        self.key_paths: dict[str, str] = {}
        for entry in sorted(root.iterdir()):
            git_dir = entry / "repo"
            if (git_dir / "HEAD").is_file():
                self._read(git_dir, entry.name.replace("+", "/").lower())

    def _read(self, git_dir: Path, repo: str) -> None:
        listing = subprocess.run(
            ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "HEAD"], capture_output=True, text=True
        )
        names = [line.split("\t", 1)[1] for line in listing.stdout.splitlines() if "\t" in line]
        is_core = "nodes.py" in names and "comfy/model_management.py" in names
        if not is_core and "__init__.py" not in names:
            return  # not a node pack (a workflow collection, an app): its Python registers nothing
        shas = [
            line.split()[2]
            for line in listing.stdout.splitlines()
            if line.endswith(".py")
            and " blob " in line
            and "/tests/" not in line
            and (
                not is_core
                or line.split("\t", 1)[1] == "nodes.py"
                or line.split("\t", 1)[1].startswith(("comfy_extras/", "comfy_api_nodes/"))
            )
        ]
        owner = CORE if is_core else repo
        if not shas:
            return
        proc = subprocess.run(
            ["git", "--git-dir", str(git_dir), "cat-file", "--batch"],
            input="\n".join(shas).encode() + b"\n",
            capture_output=True,
        )
        blob, pos = proc.stdout, 0
        texts = []
        while pos < len(blob):
            end = blob.index(b"\n", pos)
            header = blob[pos:end].split()
            if len(header) != 3:
                pos = end + 1  # missing object: header line only
                continue
            size = int(header[2])
            texts.append(blob[end + 1 : end + 1 + size].decode("utf-8", "replace"))
            pos = end + 1 + size + 1
        class_inputs: dict[str, dict[str, str]] = {}
        mappings: dict[str, str] = {}
        for text in texts:
            if "folder_names_and_paths" in text or "add_model_folder_path" in text:
                self._folder_paths(text)
            try:
                tree = ast.parse(text)
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    found = {k: canonical_folder(v) for k, v in class_model_inputs(node)[1].items()}
                    if found:
                        class_inputs.setdefault(node.name, {}).update(found)
                elif isinstance(node, ast.Dict):
                    for key, value in zip(node.keys, node.values, strict=True):
                        if (
                            isinstance(key, ast.Constant)
                            and isinstance(key.value, str)
                            and isinstance(value, ast.Name)
                        ):
                            mappings.setdefault(key.value, value.id)
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                    targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
                    if any("NODE_CLASS_MAPPINGS" in t for t in targets):
                        for key in node.value.keys:
                            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                                self.defined_by[key.value].add(owner)
                elif isinstance(node, ast.keyword) and node.arg == "node_id":
                    if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                        self.defined_by[node.value.value].add(owner)
        for ctype, cls in mappings.items():
            if cls in class_inputs:
                self.inputs[ctype].update(class_inputs[cls])
        for cls, inputs in class_inputs.items():
            self.inputs.setdefault(cls, dict(inputs))

    def _folder_paths(self, text: str) -> None:
        """Folder keys a pack registers under another path ("xlabs_controlnets" -> xlabs/controlnets)."""
        paths: dict[str, str] = {"folder_paths.models_dir": "", "models_dir": ""}
        for var, base, parts in re.findall(r"(\w+)\s*=\s*os\.path\.join\(\s*([\w.]+)\s*,([^)]*)\)", text):
            if base in paths:
                parts = "/".join(re.findall(r"[\"']([^\"']+)[\"']", parts))
                paths[var] = f"{paths[base]}/{parts}".strip("/")
        for key, var in re.findall(
            r"folder_names_and_paths\[[\"'](\w+)[\"']\]\s*=\s*\(\s*\[\s*(\w+)\s*\]", text
        ):
            if paths.get(var):
                self.key_paths[key] = paths[var]
        for key, base, parts in re.findall(
            r"add_model_folder_path\(\s*[\"'](\w+)[\"']\s*,\s*os\.path\.join\(\s*([\w.]+)\s*,([^)]*)\)", text
        ):
            if base in paths:
                self.key_paths[key] = "/".join(re.findall(r"[\"']([^\"']+)[\"']", parts))

    def folder(self, ctype: str, input_name: str | None) -> str | None:
        found = self._folder(ctype, input_name)
        return self.key_paths.get(found, found) if found else None

    def _folder(self, ctype: str, input_name: str | None) -> str | None:
        inputs = self.inputs.get(ctype)
        if not inputs:
            return None
        if input_name is not None:
            return inputs.get(input_name)
        folders = set(inputs.values())
        return folders.pop() if len(folders) == 1 else None


def _model_like(value: Any) -> bool:
    return isinstance(value, str) and value.lower().endswith(
        (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft", ".onnx")
    )


@dataclass
class Labelled:
    """What a workflow's metadata says: pack of each class, folder of each model file."""

    packs: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    model_nodes: dict[str, bool] = field(default_factory=dict)  # filename -> names known for API
    model_where: dict[str, str] = field(default_factory=dict)  # filename -> "Class.input" (for reports)


def label(sample: Sample, truth: Truth, sources: SourceFolders, use_source: bool = True) -> Labelled:
    """Truth for a UI workflow: node metadata first, then (use_source) the fetched source trees."""
    out = Labelled()
    for _, node, _ in _executed(sample.data or {"nodes": []}):
        props: dict[str, Any] = node["properties"] if isinstance(node.get("properties"), dict) else {}
        pack = truth.pack(props)
        if pack is None and use_source:
            # No metadata (older exports): the one fetched source tree that registers the class.
            owners = sources.defined_by.get(node["type"], set())
            pack = next(iter(owners)) if len(owners) == 1 else None
            if pack is not None and pack != CORE:
                pack = truth.moved(pack, node["type"])
        if pack is not None:
            out.packs.setdefault(node["type"], pack)
        named = widget_names(node)
        names_of = {v: n for n, v in named or [] if isinstance(v, str) and n}
        for model in props.get("models") or []:
            if (
                isinstance(model, dict)
                and isinstance(model.get("name"), str)
                and isinstance(model.get("directory"), str)
            ):
                # The value the node loads may carry a subfolder the declared name lacks.
                value = next(
                    (v for v in _strings(node.get("widgets_values")) if _same_file(v, model["name"])), None
                )
                if value is not None:
                    name = value.replace("\\", "/")
                    out.models[name] = install_folder(model["directory"])
                    out.model_nodes[name] = value in names_of
                    out.model_where[name] = f"{node['type']}.{names_of.get(value)}"
        pairs = named or [(None, v) for v in _list(node.get("widgets_values"))]
        several = sum(1 for _, v in pairs if _model_like(v)) > 1
        for input_name, value in pairs:
            if not _model_like(value) or (input_name is None and several):
                # Unnamed values of a node loading several files cannot be told apart.
                continue
            name = value.replace("\\", "/")
            if name in out.models:
                continue
            folder = sources.folder(node["type"], input_name)
            if folder:
                out.models[name] = install_folder(folder)
                out.model_nodes[name] = input_name is not None
                out.model_where[name] = f"{node['type']}.{input_name}"
    return out


def label_api(prompt: dict[str, Any], ui: Labelled | None, truth: Truth, sources: SourceFolders) -> Labelled:
    """Truth for a real API export: its UI twin's labels where it has one, else the source trees."""
    out = Labelled()
    for node in prompt.values():
        ctype = node["class_type"]
        if ui is not None:
            if ctype in ui.packs:
                out.packs[ctype] = ui.packs[ctype]
        else:
            owners = sources.defined_by.get(ctype, set())
            if len(owners) == 1:
                owner = next(iter(owners))
                out.packs[ctype] = owner if owner == CORE else truth.moved(owner, ctype)
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        for input_name, value in inputs.items():
            if not _model_like(value):
                continue
            name = value.replace("\\", "/")
            folder = (ui.models.get(name) if ui is not None else None) or sources.folder(ctype, input_name)
            if folder:
                out.models[name] = install_folder(folder)
                out.model_nodes[name] = True
                out.model_where[name] = f"{ctype}.{input_name}"
    return out


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for inner in value:
            yield from _strings(inner)
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _strings(inner)


def _same_file(value: str, name: str) -> bool:
    value, name = value.replace("\\", "/"), name.replace("\\", "/")
    return value == name or value.endswith("/" + name)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ---------------------------------------------------------------- analyzer inputs


def stripped_ui(data: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    nodes = list(data.get("nodes") or [])
    for sub in (data.get("definitions") or {}).get("subgraphs") or []:
        if isinstance(sub, dict):
            nodes += sub.get("nodes") or []
    for node in nodes:
        if isinstance(node, dict) and isinstance(node.get("properties"), dict):
            for key in STRIPPED:
                node["properties"].pop(key, None)
    return data


def to_api(data: dict[str, Any]) -> dict[str, Any]:
    """API-format prompt of the executed nodes: class_type and named widget values only."""
    prompt: dict[str, Any] = {}
    for node_id, node, _ in _executed(data):
        if SUBGRAPH_ID.match(node["type"]) or node["type"].startswith("workflow>"):
            continue
        named = widget_names(node) or []
        inputs = {name: value for name, value in named if name and name != "control_after_generate"}
        title = node.get("title") if isinstance(node.get("title"), str) else node["type"]
        prompt[node_id] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    return prompt


# ---------------------------------------------------------------- scoring


@dataclass
class Score:
    tp: int = 0
    truth: int = 0
    predicted: int = 0
    models: int = 0
    models_ok: int = 0
    workflows: int = 0
    misses: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    model_misses: Counter[str] = field(default_factory=Counter)

    def line(self, name: str) -> str:
        r = self.tp / self.truth if self.truth else 0.0
        p = self.tp / self.predicted if self.predicted else 0.0
        m = self.models_ok / self.models if self.models else 0.0
        return (
            f"{name:<28} workflows {self.workflows:4d}  pack recall {r:.3f} ({self.tp}/{self.truth})  "
            f"precision {p:.3f} ({self.tp}/{self.predicted})  model folder {m:.3f} ({self.models_ok}/{self.models})"
        )


def score_packs(
    score: Score, labelled: Labelled, predicted: dict[str, str | None], index: KnowledgeIndex
) -> None:
    truth_set = {p for p in labelled.packs.values() if p != CORE}
    pred_set = {predicted.get(c) for c in labelled.packs} - {None, CORE}
    score.tp += len(truth_set & pred_set)
    score.truth += len(truth_set)
    score.predicted += len(pred_set)
    for pack in sorted(truth_set - pred_set):
        classes = sorted(c for c, p in labelled.packs.items() if p == pack)
        got = sorted({str(predicted.get(c)) for c in classes})
        score.misses[f"missed {pack} ({', '.join(classes[:4])}) got {', '.join(got)}"] += 1
        score.categories[f"missed: {miss_category(pack, classes, index)}"] += 1
    for extra in sorted(p for p in pred_set - truth_set if p is not None):
        classes = sorted(c for c in labelled.packs if predicted.get(c) == extra)
        truth = sorted({labelled.packs[c] for c in classes})
        score.misses[f"extra {extra} ({', '.join(classes[:4])}) truth {', '.join(truth)}"] += 1
        if truth == [CORE]:
            kind = "core class given a pack"
        elif all(miss_category(t, classes, index) == "pack not in Manager data" for t in truth):
            kind = "pack guessed for a pack the Manager data lacks"
        else:
            kind = "other pack chosen"
        score.categories[f"extra: {kind}"] += 1


def miss_category(pack: str, classes: list[str], index: KnowledgeIndex) -> str:
    """Why a truth pack was missed, in the terms of the brief's miss categories."""
    found = index.pack_by_repo(pack) if not pack.startswith("cnr:") else None
    if found is None:
        name = pack.rsplit("/", 1)[-1]
        if any(repo_key(p.repo).rsplit("/", 1)[-1] == name for p in index.packs):
            return "fork / renamed repo of a known pack"
        return "pack not in Manager data"
    if not any(found in index.packs_listing(c) or found in index.packs_by_pattern(c) for c in classes):
        return "class not listed for its pack (newer than the map)"
    return "ambiguous class, other pack chosen"


def first_match(labelled: Labelled, all_classes: set[str], index: KnowledgeIndex) -> dict[str, str | None]:
    """ComfyUI-Manager's own resolution: first pack of its data listing (or matching) the class."""
    curated = {repo_key(r) for r in getattr(rules, "REGISTRY_ONLY_PACKS", {})}
    out: dict[str, str | None] = {}
    for ctype in all_classes:
        matched = [i for i in index.packs_by_pattern(ctype) if repo_key(index.packs[i].repo) not in curated]
        if index.is_core(ctype):
            out[ctype] = CORE
        elif listed := index.packs_listing(ctype):
            out[ctype] = repo_key(index.packs[listed[0]].repo)
        elif matched:
            out[ctype] = repo_key(index.packs[matched[0]].repo)
        else:
            out[ctype] = None
    return out


def predicted_packs(manifest: Any) -> dict[str, str | None]:
    out: dict[str, str | None] = {c: CORE for c in manifest.core_classes}
    for pack in manifest.custom_nodes:
        for ctype in pack.provides:
            out[ctype] = repo_key(pack.repo)
    return out


def score_models(score: Score, labelled: Labelled, manifest: Any, api: bool) -> None:
    got = {m.filename: install_folder(m.folder) for m in manifest.models}
    for name, folder in labelled.models.items():
        if api and not labelled.model_nodes.get(name):
            continue
        score.models += 1
        if got.get(name) == folder:
            score.models_ok += 1
        else:
            where = labelled.model_where.get(name)
            score.model_misses[f"{name} ({where}): truth {folder} got {got.get(name)}"] += 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mirror", type=Path, default=Path(os.environ.get("COMFYFLEET_EVAL_MIRROR", "/work/.mirror"))
    )
    parser.add_argument(
        "--half", choices=("A", "B", "all"), default="all", help="which half's misses to list"
    )
    parser.add_argument(
        "--truth",
        choices=("metadata", "all"),
        default="all",
        help="metadata: only nodes' cnr_id/aux_id; all: also classes registered by one fetched source tree",
    )
    parser.add_argument(
        "--repos", help="comma-separated owner+name folders whose workflows are scored (default: all)"
    )
    parser.add_argument("--misses", type=int, default=0, help="list this many most common misses")
    args = parser.parse_args(argv)
    if not args.mirror.is_dir():
        print(f"no mirror directory {args.mirror}; fetch repositories there or pass --mirror")
        return 0
    index = default_index()
    truth = Truth(index)
    sources = SourceFolders(args.mirror)
    samples = gather(args.mirror)
    if args.repos:
        wanted = {r.strip().replace("+", "/").lower() for r in args.repos.split(",")}
        samples = [x for x in samples if x.repo.lower() in wanted]
    per_repo: dict[str, Score] = defaultdict(Score)
    kinds = ("ui", "api", "real-api", "first-match")
    scores = {(h, kind): Score() for h in ("A", "B") for kind in kinds}
    used = real_api = 0
    for sample in samples:
        half = half_of(sample)
        where = f"{sample.repo}:{sample.path}"
        stem = Path(sample.path).stem
        labelled = label(sample, truth, sources, use_source=args.truth == "all") if sample.data else None
        if sample.api is not None and (args.truth == "all" or labelled is not None):
            # A real API export (PNG "prompt" chunk or API JSON): no metadata at all.
            api_truth = label_api(sample.api, labelled, truth, sources)
            if any(p != CORE for p in api_truth.packs.values()) or api_truth.models:
                try:
                    real = analyze_data(sample.api, stem, where, index=index)
                except BadInput as exc:
                    print(f"skipped {where} (API): {exc}")
                else:
                    real_api += 1
                    s = scores[(half, "real-api")]
                    s.workflows += 1
                    score_packs(s, api_truth, predicted_packs(real), index)
                    score_models(s, api_truth, real, api=True)
        if sample.data is None or labelled is None:
            continue
        if not any(p != CORE for p in labelled.packs.values()) and not labelled.models:
            continue
        used += 1
        try:
            ui = analyze_data(stripped_ui(sample.data), stem, where, index=index)
            api_prompt = to_api(sample.data)
            api = analyze_data(api_prompt, stem, where, index=index) if api_prompt else None
        except BadInput as exc:
            print(f"skipped {where}: {exc}")
            continue
        ui_pred = predicted_packs(ui)
        for kind, manifest in (("ui", ui), ("api", api)):
            if manifest is None:
                continue
            s = scores[(half, kind)]
            s.workflows += 1
            score_packs(s, labelled, predicted_packs(manifest), index)
            score_models(s, labelled, manifest, api=kind == "api")
        repo_score = per_repo[sample.repo]
        repo_score.workflows += 1
        score_packs(repo_score, labelled, ui_pred, index)
        score_models(repo_score, labelled, ui, api=False)
        fm = scores[(half, "first-match")]
        fm.workflows += 1
        all_classes = {n["type"] for _, n, _ in _executed(sample.data)}
        score_packs(fm, labelled, first_match(labelled, all_classes, index), index)
    ui_count = sum(1 for x in samples if x.data is not None)
    api_count = sum(1 for x in samples if x.api is not None)
    print(
        f"mirror {args.mirror}: {ui_count} distinct UI workflows, {used} with metadata to score; "
        f"{api_count} real API exports, {real_api} scored"
    )
    print(
        f"index sources: {index.sources.get('comfyui-manager')=} {index.sources.get('comfyui-workflow-templates-json')=}"
    )
    print(
        "ui = UI with metadata stripped; api = the same converted to API format; real-api = API exports as found"
    )
    for h in ("A", "B"):
        for kind in kinds:
            print(scores[(h, kind)].line(f"half {h} {kind}"))
    total = {kind: Score() for kind in kinds}
    for (_, kind), s in scores.items():
        t = total[kind]
        t.tp += s.tp
        t.truth += s.truth
        t.predicted += s.predicted
        t.models += s.models
        t.models_ok += s.models_ok
        t.workflows += s.workflows
    for kind, s in total.items():
        print(s.line(f"all {kind}"))
    print("\nmiss categories (UI; half A / half B):")
    cats = sorted(set(scores[("A", "ui")].categories) | set(scores[("B", "ui")].categories))
    for cat in cats:
        print(f"  {scores[('A', 'ui')].categories[cat]:3d} / {scores[('B', 'ui')].categories[cat]:3d}  {cat}")
    if args.misses:
        print("\nper repository (UI):")
        for repo, s in sorted(per_repo.items()):
            print("  " + s.line(repo[:28]))
        halves = ("A", "B") if args.half == "all" else (args.half,)
        for kind in ("ui", "api", "real-api"):
            misses: Counter[str] = Counter()
            model_misses: Counter[str] = Counter()
            for h in halves:
                misses.update(scores[(h, kind)].misses)
                model_misses.update(scores[(h, kind)].model_misses)
            print(f"\npack misses ({kind}, half {args.half}):")
            for text, n in misses.most_common(args.misses):
                print(f"  {n:3d} {text}")
            print(f"model misses ({kind}, half {args.half}):")
            for text, n in model_misses.most_common(args.misses):
                print(f"  {n:3d} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
