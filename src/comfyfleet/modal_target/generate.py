"""Write one Modal app file from the workflows' manifest: image, model volume, API service.

Every value that comes from a workflow (pack repos and versions, model names, URLs,
hashes, workflow names) is checked here and reaches the generated Python only as a
literal written by :func:`py_literal`, so the file can be read, reviewed and imported
without any of it becoming code.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from comfyui_api.names import BadWorkflowName, check_workflow_name

import comfyfleet
from comfyfleet.analysis import analyze_paths
from comfyfleet.deploys.nodes import clone_url, pack_dir
from comfyfleet.errors import BadInput
from comfyfleet.manifest import Lock, Manifest, ModelRef, NodePack
from comfyfleet.modal_target.options import ModalOptions
from comfyfleet.safety import normalize_model_name, unsafe_model_name_reason

TEMPLATE = "app.py.j2"
DEFAULT_OUT = Path("deploy/modal_app.py")

_PACK_REPO = re.compile(r"^https://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/-]+$")
_COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_MODEL_URL = re.compile(r"^(https?://[^\s\x00-\x1f\x7f]+|civitai:[0-9]+)$")


@dataclass
class AppInputs:
    """What the generated file is made from: the combined manifest and the workflow files."""

    lock: Lock
    workflow_files: dict[str, Path] = field(default_factory=dict)  # name in the container -> local file


@dataclass
class GeneratedApp:
    """A rendered app file and the facts a deploy needs."""

    path: Path
    text: str
    app_name: str
    workflows: list[str]


# ---------------------------------------------------------------------------
# literals


def _py_str(value: str) -> str:
    text = repr(value)
    if text.startswith("'") and '"' not in value:
        return '"' + text[1:-1] + '"'
    return text


def py_literal(value: Any, indent: int = 0) -> str:
    """A Python literal for value (str, int, bool, None, lists, dicts); nothing else is accepted."""
    pad = " " * indent
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _py_str(value)
    if isinstance(value, list):
        if not value:
            return "[]"
        inner = "".join(f"{pad}    {py_literal(v, indent + 4)},\n" for v in value)
        return f"[\n{inner}{pad}]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        if any(not isinstance(k, str) for k in value):
            raise TypeError("dict keys must be strings")
        one_line = "{" + ", ".join(f"{_py_str(k)}: {py_literal(v, indent)}" for k, v in value.items()) + "}"
        if indent and len(one_line) + indent <= 100 and "\n" not in one_line:
            return one_line
        inner = "".join(f"{pad}    {_py_str(k)}: {py_literal(v, indent + 4)},\n" for k, v in value.items())
        return f"{{\n{inner}{pad}}}"
    raise TypeError(f"no Python literal for {type(value).__name__}")


def doc_text(value: str) -> str:
    """value as text inside a triple-quoted docstring: quotes, backslashes and control characters escaped.

    The docstring names local paths (a folder may be called anything); escaped this way no
    character can end the literal, and the docstring still reads as the original path.
    """
    out = []
    for ch in str(value):
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif not ch.isprintable() or ch in "\u2028\u2029":
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


# ---------------------------------------------------------------------------
# checking what the manifest says


def _pack_entry(pack: NodePack) -> dict[str, Any]:
    """The pack as the host installer's plan names it (same folder, clone URL and version)."""
    where = f"node pack {pack.id!r}"
    if not _PACK_REPO.match(pack.repo) or "/../" in pack.repo + "/" or "/./" in pack.repo + "/":
        raise BadInput(
            f"{where}: repo {pack.repo!r} is not an https git URL; fix it in workflows/overrides.yaml"
        )
    if pack.version is not None and not _VERSION.match(pack.version):
        raise BadInput(f"{where}: version {pack.version!r} is not a registry version, tag or commit")
    return {
        "id": pack.id,
        "repo": clone_url(pack.repo, {}),
        "version": pack.version,
        "dir": pack_dir(pack),
        "registry": bool(pack.version) and not _COMMIT.match(pack.version or ""),
        "provides": sorted(pack.provides),
    }


def _model_entry(model: ModelRef) -> dict[str, Any]:
    where = f"model {model.filename!r} ({model.folder})"
    reason = unsafe_model_name_reason(model.filename)
    if reason:
        raise BadInput(f"{where}: file name {reason}; rename it in the workflow")
    folder_reason = unsafe_model_name_reason(model.folder)
    if folder_reason or "/" in normalize_model_name(model.folder):
        raise BadInput(f"{where}: folder {model.folder!r} is not a ComfyUI models folder name")
    if not model.url:
        raise BadInput(f"{where}: no download URL; add one under models: in workflows/overrides.yaml")
    if not _MODEL_URL.match(model.url):
        raise BadInput(f"{where}: URL {model.url!r} is not http(s); fix it in workflows/overrides.yaml")
    if model.sha256 is not None and not _SHA256.match(model.sha256):
        raise BadInput(f"{where}: sha256 {model.sha256!r} is not 64 hex digits")
    if model.size is not None and (not isinstance(model.size, int) or model.size < 0):
        raise BadInput(f"{where}: size {model.size!r} is not a byte count")
    return {
        "folder": model.folder,
        "filename": normalize_model_name(model.filename),
        "url": model.url,
        "sha256": model.sha256.lower() if model.sha256 else None,
        "size": model.size,
    }


def check_lock(
    lock: Lock, allow_unresolved: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Node pack and model entries for the app, or BadInput for what would make it fail on Modal."""
    if lock.conflicts:
        c = lock.conflicts[0]
        versions = "; ".join(f"{v} for {', '.join(ws)}" for v, ws in c.versions.items())
        raise BadInput(
            f"node pack {c.repo}: workflows need different versions ({versions}); pin one in workflows/overrides.yaml"
        )
    if lock.unresolved and not allow_unresolved:
        what = [
            f"node class {n.class_type} (node {', '.join(n.node_ids) or '?'}): {n.reason}"
            for n in lock.unresolved.nodes
        ]
        what += [f"model {m.filename}: {m.reason}" for m in lock.unresolved.models]
        raise BadInput(
            f"unresolved: {what[0]}"
            + (f" (and {len(what) - 1} more)" if len(what) > 1 else "")
            + "; fix workflows/overrides.yaml or pass --allow-unresolved"
        )
    packs = [_pack_entry(p) for p in sorted(lock.custom_nodes, key=lambda p: p.repo)]
    seen: dict[str, str] = {}
    for pack in packs:
        other = seen.setdefault(pack["dir"].lower(), pack["repo"])
        if other != pack["repo"]:
            raise BadInput(f"node packs {other} and {pack['repo']} would share custom_nodes/{pack['dir']}")
    models = [_model_entry(m) for m in sorted(lock.models, key=lambda m: (m.folder, m.filename))]
    return packs, models


def workflow_files_of(manifests: Iterable[Manifest]) -> dict[str, Path]:
    """Files the API needs per workflow: the JSON and its optional <name>.api.yaml."""
    files: dict[str, Path] = {}
    for manifest in manifests:
        try:
            check_workflow_name(manifest.workflow, manifest.source)
        except BadWorkflowName as exc:
            raise BadInput(str(exc)) from None
        source = Path(manifest.source)
        if f"{manifest.workflow}.json" in files:
            raise BadInput(f"{source}: two workflows are named {manifest.workflow!r}; rename one file")
        files[f"{manifest.workflow}.json"] = source
        api_yaml = source.with_name(f"{manifest.workflow}.api.yaml")
        if api_yaml.is_file():
            files[api_yaml.name] = api_yaml
    return files


# ---------------------------------------------------------------------------
# where the shipped sources are


def hostside_source(name: str) -> Path:
    """A host-side script (fetch_models.py, install_nodes.py), shipped so Modal does what the hosts do."""
    return Path(comfyfleet.__file__).resolve().parent / "hostside" / name


def default_api_source() -> Path:
    """comfyui-api/ of this checkout (next to src/), where the API service's package lives."""
    return Path(comfyfleet.__file__).resolve().parents[2] / "comfyui-api"


def _relative(path: Path, start: Path) -> str:
    """path as the app file should name it: relative when both share a tree, else absolute."""
    path, start = path.resolve(), start.resolve()
    if os.path.commonpath([path, start]) == path.anchor:
        return path.as_posix()
    return Path(os.path.relpath(path, start)).as_posix()


# ---------------------------------------------------------------------------
# rendering


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - the output is Python source; values pass through the py filter
    )
    env.filters["py"] = py_literal
    env.filters["doc"] = doc_text
    return env


def render_app(
    inputs: AppInputs,
    options: ModalOptions,
    out_path: Path,
    api_source: Path | None = None,
    allow_unresolved: bool = False,
) -> str:
    """The app file's text for inputs, with paths relative to out_path's folder."""
    options = options.checked()
    packs, models = check_lock(inputs.lock, allow_unresolved)
    api_dir = api_source or default_api_source()
    if not (api_dir / "pyproject.toml").is_file():
        raise BadInput(
            f"{api_dir}: no comfyui-api package here (pyproject.toml missing); pass --api-source DIR"
        )
    for name, path in inputs.workflow_files.items():
        if not path.is_file():
            raise BadInput(f"{path}: workflow file not found (for {name})")
    here = out_path.parent
    root = _display_root(inputs, out_path)
    # A secret that does not exist fails the deploy, so only the ones these models need are named.
    model_secrets: dict[str, str] = {}
    if any(_host(m["url"]).endswith("civitai.com") for m in models):
        model_secrets[options.civitai_secret] = "CIVITAI_API_TOKEN"
    if options.hf_secret:
        model_secrets[options.hf_secret] = "HF_TOKEN"
    template = _environment().get_template(TEMPLATE)
    return template.render(
        app_name=options.app_name,
        options=options,
        sources=", ".join(
            _shown(p, root) for n, p in sorted(inputs.workflow_files.items()) if n.endswith(".json")
        ),
        recipe=hashlib.sha256(Path(str(template.filename)).read_bytes()).hexdigest()[:16],
        out_name=_shown(out_path, root),
        node_packs=packs,
        models=models,
        workflow_files={name: _relative(p, here) for name, p in sorted(inputs.workflow_files.items())},
        workflows=sorted(n[: -len(".json")] for n in inputs.workflow_files if n.endswith(".json")),
        model_secrets=model_secrets,
        api_source=_relative(api_dir, here),
        fetch_models_source=_relative(hostside_source("fetch_models.py"), here),
        install_nodes_source=_relative(hostside_source("install_nodes.py"), here),
    )


def _host(url: str) -> str:
    if url.startswith("civitai:"):
        return "civitai.com"
    return url.split("/")[2].split("@")[-1].split(":")[0].lower() if "://" in url else ""


def inputs_from_paths(paths: Sequence[Path]) -> AppInputs:
    """Analyze workflow files or folders (the same analysis the hosts' manifests come from)."""
    result = analyze_paths([Path(p) for p in paths])
    if result.errors:
        first = result.errors[0]
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise BadInput(f"{first}{more}")
    if not result.manifests:
        raise BadInput(f"{', '.join(str(p) for p in paths)}: no workflow found")
    manifests = list(result.manifests)
    return AppInputs(
        lock=result.lock,
        workflow_files=workflow_files_of(manifests),
    )


def _display_root(inputs: AppInputs, out_path: Path) -> Path | None:
    """The folder the app file and the workflows share: names shown in the file start there."""
    files = [p.resolve() for p in inputs.workflow_files.values()]
    root = Path(os.path.commonpath([out_path.resolve().parent, *files]))
    return None if root == Path(root.anchor) else root


def _shown(path: Path, root: Path | None) -> str:
    return path.resolve().relative_to(root).as_posix() if root else path.resolve().as_posix()


def generate_app(
    paths: Sequence[Path],
    options: ModalOptions,
    out_path: Path = DEFAULT_OUT,
    api_source: Path | None = None,
    allow_unresolved: bool = False,
    write: bool = True,
) -> GeneratedApp:
    """Analyze the workflows and write the Modal app file to out_path."""
    inputs = inputs_from_paths(paths)
    text = render_app(inputs, options, out_path, api_source, allow_unresolved)
    if write:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(out_path)
    workflows = sorted(n[: -len(".json")] for n in inputs.workflow_files if n.endswith(".json"))
    return GeneratedApp(path=out_path, text=text, app_name=options.app_name, workflows=workflows)
