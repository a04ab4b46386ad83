"""Build the offline knowledge index from upstream data files.

Sources (all public, downloaded as wheels from PyPI so no GitHub access is needed):

- ``comfyui-manager``: extension-node-map.json (class type -> pack repo, nodename_pattern),
  custom-node-list.json (pack ids, preemptions), github-stats.json (stars),
  model-list.json (filename -> folder, url).
- ``comfyui-workflow-templates-json``: real UI workflows whose nodes carry
  ``properties.models`` ({name, url, directory}) and ``cnr_id``: they teach model URLs,
  which (class type, input) loads into which folder, the order of each class's widgets,
  and which class types are ComfyUI core.
- ``rules.REGISTRY_ONLY_PACKS``: a short curated list of registry-only packs (with a
  nodename_pattern) that the Manager's git-based lists lack; dropped once the Manager knows them.
- A ComfyUI source tree (optional): NODE_CLASS_MAPPINGS keys and ``node_id=`` of
  nodes.py, comfy_extras/ and comfy_api_nodes/, read with ``ast`` (names only, no code).
  Without one, the core list recorded in the previous index is carried over.

The result is a gzip JSON file in comfyfleet/data/ that ``index.py`` loads at run time.
"""

from __future__ import annotations

import ast
import datetime as dt
import gzip
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from comfyfleet.analysis.rules import (
    MANAGER_TYPE_FOLDERS,
    REGISTRY_ONLY_PACKS,
    SUBGRAPH_ID,
    canonical_folder,
    download_url,
    install_folder,
    looks_like_model_file,
)

INDEX_FORMAT = 1
DEFAULT_INDEX_PATH = Path(__file__).resolve().parent.parent / "data" / "index.json.gz"
MANAGER_PACKAGE = "comfyui-manager"
TEMPLATES_PACKAGE = "comfyui-workflow-templates-json"
CORE_REPO = "https://github.com/comfyanonymous/ComfyUI"
_MANAGER_FILES = ("extension-node-map.json", "custom-node-list.json", "github-stats.json", "model-list.json")


def download_wheels(
    dest: Path, manager_version: str | None, templates_version: str | None
) -> dict[str, Path]:
    """pip-download the two source wheels (no dependencies) into dest."""
    wanted = {
        MANAGER_PACKAGE: f"{MANAGER_PACKAGE}=={manager_version}" if manager_version else MANAGER_PACKAGE,
        TEMPLATES_PACKAGE: f"{TEMPLATES_PACKAGE}=={templates_version}"
        if templates_version
        else TEMPLATES_PACKAGE,
    }
    found: dict[str, Path] = {}
    for name, spec in wanted.items():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
                str(dest),
                spec,
            ],
            check=True,
        )
        prefix = name.replace("-", "_") + "-"
        wheels = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix))
        if not wheels:
            raise RuntimeError(f"pip download of {spec} produced no wheel in {dest}")
        found[name] = wheels[-1]
    return found


def wheel_version(wheel: Path) -> str:
    """Version part of a wheel file name (name-VERSION-py3-none-any.whl)."""
    return wheel.name.split("-")[1]


def read_manager_wheel(wheel: Path) -> dict[str, Any]:
    """The four Manager data files, parsed, keyed by file name."""
    out: dict[str, Any] = {}
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename.rsplit("/", 1)[-1]
            if name in _MANAGER_FILES and name not in out:
                out[name] = json.loads(zf.read(info))
    missing = set(_MANAGER_FILES) - set(out)
    if missing:
        raise RuntimeError(f"{wheel.name} lacks {', '.join(sorted(missing))}")
    return out


def iter_template_workflows(wheel_or_dir: Path) -> Iterator[dict[str, Any]]:
    """Every UI workflow of the templates package (wheel file or installed templates dir)."""
    if wheel_or_dir.is_dir():
        blobs: Iterable[bytes] = (p.read_bytes() for p in sorted(wheel_or_dir.glob("*.json")))
        yield from _workflows(blobs)
        return
    with zipfile.ZipFile(wheel_or_dir) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".json") and "/templates/" in n)
        yield from _workflows(zf.read(n) for n in names)


def _workflows(blobs: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    for blob in blobs:
        try:
            data = json.loads(blob)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("nodes"), list):
            yield data


def _all_nodes(workflow: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from (n for n in workflow.get("nodes", []) if isinstance(n, dict))
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
        yield from (n for n in sub.get("nodes", []) if isinstance(n, dict))


def filename_list_folder(node: ast.AST) -> str | None:
    """'loras' for folder_paths.get_filename_list("loras") (also inside a list concatenation)."""
    if isinstance(node, ast.BinOp):
        return filename_list_folder(node.left) or filename_list_folder(node.right)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("get_filename_list", "get_filename_list_")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.args[0].value
    return None


def class_model_inputs(cls: ast.ClassDef) -> tuple[set[str], dict[str, str]]:
    """node_id= values and {input name: models folder} found inside one class body."""
    ids: set[str] = set()
    inputs: dict[str, str] = {}
    for node in ast.walk(cls):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and isinstance(key.value, str)
                    and isinstance(value, (ast.Tuple, ast.List))
                    and value.elts
                ):
                    folder = filename_list_folder(value.elts[0])
                    if folder:
                        inputs[key.value] = folder
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                if (
                    kw.arg == "node_id"
                    and isinstance(kw.value, ast.Constant)
                    and isinstance(kw.value.value, str)
                ):
                    ids.add(kw.value.value)
                elif kw.arg == "options" and node.args and isinstance(node.args[0], ast.Constant):
                    folder = filename_list_folder(kw.value)
                    if folder and isinstance(node.args[0].value, str):
                        inputs[node.args[0].value] = folder
    return ids, inputs


def _source_files(src: Path) -> tuple[dict[str, str], str]:
    files: dict[str, str] = {}
    if (src / "nodes.py").is_file():
        paths = [
            src / "nodes.py",
            *sorted((src / "comfy_extras").rglob("*.py")),
            *sorted((src / "comfy_api_nodes").rglob("*.py")),
        ]
        for path in paths:
            files[str(path.relative_to(src))] = path.read_text(errors="replace")
        version_file = src / "comfyui_version.py"
        version_text = version_file.read_text() if version_file.is_file() else ""
        described = src.name
    else:
        git = ["git", "--git-dir", str(src)]
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        listing = subprocess.run(
            [*git, "ls-tree", "-r", "--name-only", "HEAD"], capture_output=True, text=True, check=True
        )
        for name in listing.stdout.split():
            if name.endswith(".py") and (
                name == "nodes.py" or name.startswith(("comfy_extras/", "comfy_api_nodes/"))
            ):
                files[name] = subprocess.run(
                    [*git, "show", f"HEAD:{name}"], capture_output=True, text=True, check=True
                ).stdout
        shown = subprocess.run([*git, "show", "HEAD:comfyui_version.py"], capture_output=True, text=True)
        version_text = shown.stdout if shown.returncode == 0 else ""
        described = f"commit {commit}"
    match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", version_text)
    if match:
        described = f"ComfyUI {match.group(1)} ({described})"
    return files, described


def core_classes_from_source(src: Path) -> tuple[set[str], dict[str, dict[str, str]], str]:
    """Core class types of a ComfyUI checkout or bare git dir, their model inputs, and a label.

    Reads names only (NODE_CLASS_MAPPINGS keys, ``node_id=``, inputs whose choices are
    ``folder_paths.get_filename_list(FOLDER)``); no code is kept.
    """
    files, described = _source_files(src)
    names: set[str] = set()
    input_folders: dict[str, dict[str, str]] = {}
    for text in files.values():
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        class_ids: dict[str, set[str]] = defaultdict(set)
        class_inputs: dict[str, dict[str, str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                ids, inputs = class_model_inputs(node)
                class_ids[node.name].update(ids)
                names.update(ids)
                class_inputs[node.name] = inputs
            elif isinstance(node, ast.Call):
                names.update(
                    kw.value.value
                    for kw in node.keywords
                    if kw.arg == "node_id"
                    and isinstance(kw.value, ast.Constant)
                    and isinstance(kw.value.value, str)
                )
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                if any(isinstance(t, ast.Name) and t.id == "NODE_CLASS_MAPPINGS" for t in node.targets):
                    for key, value in zip(node.value.keys, node.value.values, strict=True):
                        if isinstance(key, ast.Constant) and isinstance(key.value, str):
                            names.add(key.value)
                            if isinstance(value, ast.Name):
                                class_ids[value.id].add(key.value)
        for cls_name, inputs in class_inputs.items():
            for node_id in class_ids.get(cls_name) or ():
                if inputs:
                    input_folders[node_id] = {k: canonical_folder(v) for k, v in inputs.items()}
    if not names:
        raise RuntimeError(f"no node classes found in {src}; is it a ComfyUI checkout?")
    return names, input_folders, described


def _manager_folder(entry: dict[str, Any]) -> str | None:
    save_path = str(entry.get("save_path") or "")
    if not save_path or save_path == "default":
        return MANAGER_TYPE_FOLDERS.get(str(entry.get("type", "")).lower())
    return install_folder(save_path)


def _align_widgets(values: list[Any], named: dict[str, Any]) -> list[str | None] | None:
    """Names for each position of widgets_values, from the templates' widgets_values_named."""
    order: list[str | None] = []
    keys = list(named)
    k = 0
    for value in values:
        if k < len(keys) and value == named[keys[k]]:
            order.append(keys[k])
            k += 1
        else:
            order.append(None)
    return order if k == len(keys) else None


def _widget_input_of(node: dict[str, Any], value: str) -> str | None:
    named = node.get("widgets_values_named")
    if isinstance(named, dict):
        for key, val in named.items():
            if val == value:
                return str(key)
    return None


def build_index(
    manager: dict[str, Any],
    templates: Iterable[dict[str, Any]],
    sources: dict[str, Any],
    source_core: set[str],
    source_inputs: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The index document from parsed Manager data and template workflows."""
    ext_map: dict[str, Any] = manager["extension-node-map.json"]
    node_list: list[dict[str, Any]] = manager["custom-node-list.json"]["custom_nodes"]
    stats: dict[str, Any] = manager["github-stats.json"]

    by_repo: dict[str, dict[str, Any]] = {}
    for entry in node_list:
        for url in [entry.get("reference"), *(entry.get("files") or [])]:
            if isinstance(url, str) and url.startswith("https://"):
                by_repo.setdefault(url.rstrip("/"), entry)

    packs: list[list[Any]] = []
    pack_index: dict[str, int] = {}
    classes: dict[str, list[int]] = defaultdict(list)
    patterns: list[list[Any]] = []
    manager_core: set[str] = set()
    for repo, value in ext_map.items():
        names, meta = value[0], value[1] if len(value) > 1 else {}
        repo = repo.rstrip("/")
        if repo == CORE_REPO:
            manager_core.update(names)
            continue
        entry = by_repo.get(repo, {})
        pack_id = str(entry.get("id") or repo.rsplit("/", 1)[-1])
        stars = int((stats.get(repo) or {}).get("stars") or 0)
        pack_index[repo] = len(packs)
        packs.append([repo, pack_id, stars, str(meta.get("title_aux") or entry.get("title") or pack_id)])
        for name in names:
            if isinstance(name, str):
                classes[name].append(pack_index[repo])
        if meta.get("nodename_pattern"):
            try:
                re.compile(meta["nodename_pattern"])
            except re.error:
                continue
            patterns.append([meta["nodename_pattern"], pack_index[repo]])
    known = {r.lower() for r in pack_index}
    for repo, pattern in REGISTRY_ONLY_PACKS.items():
        if repo.lower() in known:
            continue  # the Manager data has caught up: its class list is better than a pattern
        stars = int((stats.get(repo) or {}).get("stars") or 0)
        pack_index[repo] = len(packs)
        packs.append([repo, repo.rsplit("/", 1)[-1], stars, repo.rsplit("/", 1)[-1]])
        patterns.append([pattern, pack_index[repo]])
    preemptions: dict[str, int] = {}
    for entry in node_list:
        repo = str(entry.get("reference", "")).rstrip("/")
        for name in entry.get("preemptions") or []:
            if repo in pack_index:
                preemptions[name] = pack_index[repo]
    pack_ids: dict[str, int] = {}
    for i, pack in enumerate(packs):
        pack_ids.setdefault(pack[1], i)

    # Models: templates first (what ComfyUI's own docs use), the Manager list fills gaps.
    model_votes: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    input_votes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    order_votes: dict[str, Counter[tuple[str | None, ...]]] = defaultdict(Counter)
    template_core: set[str] = set()
    for workflow in templates:
        for node in _all_nodes(workflow):
            ctype = node.get("type")
            if not isinstance(ctype, str) or SUBGRAPH_ID.match(ctype):
                continue
            props = node.get("properties") or {}
            if props.get("cnr_id") == "comfy-core":
                template_core.add(ctype)
            values = node.get("widgets_values")
            named = node.get("widgets_values_named")
            if isinstance(values, list) and isinstance(named, dict) and named:
                order = _align_widgets(values, named)
                if order is not None:
                    order_votes[ctype][tuple(order)] += 1
            for model in props.get("models") or []:
                if not isinstance(model, dict):
                    continue
                name, url, folder = model.get("name"), model.get("url"), model.get("directory")
                if not (isinstance(name, str) and isinstance(folder, str)):
                    continue
                folder = canonical_folder(folder)
                model_votes[name][(folder, download_url(url) if isinstance(url, str) else "")] += 1
                input_name = _widget_input_of(node, name)
                if input_name:
                    input_votes[(ctype, input_name)][folder] += 1

    models: dict[str, list[Any]] = {}
    for name, votes in model_votes.items():
        (folder, url), _ = votes.most_common(1)[0]
        models[name] = [folder, url or None, "templates"]
    for entry in manager["model-list.json"]["models"]:
        name, folder = entry.get("filename"), _manager_folder(entry)
        if isinstance(name, str) and folder and name not in models and looks_like_model_file(name):
            url = entry.get("url")
            models[name] = [
                folder,
                download_url(url) if isinstance(url, str) and url else None,
                "comfyui-manager",
            ]

    input_folders: dict[str, dict[str, str]] = defaultdict(dict)
    for ctype, inputs in (source_inputs or {}).items():
        input_folders[ctype].update(inputs)
    for (ctype, input_name), folder_votes in sorted(input_votes.items()):
        folder, count = folder_votes.most_common(1)[0]
        # A pair seen loading into two folders teaches nothing reliable.
        if count == sum(folder_votes.values()):
            input_folders[ctype][input_name] = folder
    widget_order = {ctype: list(orders.most_common(1)[0][0]) for ctype, orders in sorted(order_votes.items())}

    core = sorted(source_core | manager_core | template_core)
    return {
        "format": INDEX_FORMAT,
        "sources": sources,
        "core_classes": core,
        "packs": packs,
        "classes": dict(sorted(classes.items())),
        "patterns": patterns,
        "preemptions": dict(sorted(preemptions.items())),
        "pack_ids": dict(sorted(pack_ids.items())),
        "models": dict(sorted(models.items())),
        "input_folders": dict(input_folders),
        "widget_order": widget_order,
    }


def write_index(index: dict[str, Any], path: Path) -> None:
    """Write the index as compact gzip JSON (mtime 0, so rebuilds are byte-stable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(index, separators=(",", ":"), sort_keys=False).encode()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw)
    tmp.replace(path)


def _previous_source(path: Path) -> tuple[set[str], dict[str, dict[str, str]], dict[str, Any]]:
    """What the last index learned from a ComfyUI source tree, carried over when none is given."""
    if not path.is_file():
        return set(), {}, {}
    with gzip.open(path) as fh:
        old = json.load(fh)
    return (
        set(old.get("source_core_classes") or []),
        dict(old.get("source_input_folders") or {}),
        dict(old.get("sources", {}).get("comfyui_source") or {}),
    )


def refresh(
    out: Path = DEFAULT_INDEX_PATH,
    manager_version: str | None = None,
    templates_version: str | None = None,
    comfyui_src: Path | None = None,
    wheel_dir: Path | None = None,
) -> dict[str, Any]:
    """Download the source wheels (or use wheel_dir), rebuild the index, write it to out."""
    with tempfile.TemporaryDirectory(prefix="comfyfleet-index-") as tmp:
        if wheel_dir is not None:
            wheels = {
                MANAGER_PACKAGE: max(wheel_dir.glob("comfyui_manager-*.whl")),
                TEMPLATES_PACKAGE: max(wheel_dir.glob("comfyui_workflow_templates_json-*.whl")),
            }
        else:
            wheels = download_wheels(Path(tmp), manager_version, templates_version)
        manager = read_manager_wheel(wheels[MANAGER_PACKAGE])
        if comfyui_src is not None:
            source_core, source_inputs, described = core_classes_from_source(comfyui_src)
            core_source: dict[str, Any] = {"from": described, "classes": len(source_core)}
        else:
            # Carry over what the index being replaced (or the packaged one) learned from source.
            source_core, source_inputs, core_source = _previous_source(
                out if out.is_file() else DEFAULT_INDEX_PATH
            )
        sources = {
            MANAGER_PACKAGE: wheel_version(wheels[MANAGER_PACKAGE]),
            TEMPLATES_PACKAGE: wheel_version(wheels[TEMPLATES_PACKAGE]),
            "comfyui_source": core_source,
            "built": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        templates = iter_template_workflows(wheels[TEMPLATES_PACKAGE])
        index = build_index(manager, templates, sources, source_core, source_inputs)
        index["source_core_classes"] = sorted(source_core)
        index["source_input_folders"] = dict(sorted(source_inputs.items()))
        write_index(index, out)
    return index
