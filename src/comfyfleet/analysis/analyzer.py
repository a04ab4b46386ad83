"""Workflow file(s) in, manifest(s) and lock out: the public entry points of analysis."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from comfyfleet.analysis.index import KnowledgeIndex, default_index
from comfyfleet.analysis.lock import build_lock
from comfyfleet.analysis.models import resolve_models
from comfyfleet.analysis.overrides import OVERRIDES_FILENAME, Overrides, overrides_for
from comfyfleet.analysis.packs import resolve_packs
from comfyfleet.analysis.workflow import parse_workflow, read_workflow_json
from comfyfleet.errors import BadInput
from comfyfleet.manifest import Lock, Manifest, Unresolved


@dataclass
class AnalysisResult:
    """Manifests of the workflows that could be read, their lock, and one line per bad file."""

    manifests: list[Manifest] = field(default_factory=list)
    lock: Lock = field(default_factory=Lock)
    errors: list[str] = field(default_factory=list)


def analyze_data(
    data: object,
    name: str,
    source: str,
    overrides: Overrides | None = None,
    index: KnowledgeIndex | None = None,
) -> Manifest:
    """Manifest of already-parsed workflow JSON (BadInput names `source`)."""
    index = index or default_index()
    try:
        parsed = parse_workflow(data, source, index)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
        # Shapes no real export produces; still one line, never a traceback.
        raise BadInput(
            f"{source}: malformed workflow structure ({type(exc).__name__}: {exc}); re-export it from ComfyUI"
        ) from None
    packs = resolve_packs(parsed.nodes, index, overrides)
    pack_of = {ctype: pack.repo for pack in packs.packs for ctype in pack.provides}
    models = resolve_models(parsed.nodes, parsed.notes, index, overrides, pack_of)
    return Manifest(
        workflow=name,
        source=source,
        format=parsed.format,
        core_classes=sorted(packs.core_classes),
        custom_nodes=packs.packs,
        models=models.models,
        unresolved=Unresolved(nodes=packs.unresolved, models=models.unresolved),
        skipped_nodes=parsed.skipped,
    )


def analyze_file(path: Path, overrides: Overrides | None = None) -> Manifest:
    """Manifest of one workflow file; BadInput with a one-line message naming the file otherwise.

    Without explicit overrides, the ``overrides.yaml`` next to the file applies (pass
    ``Overrides()`` to ignore it).
    """
    path = Path(path)
    data = read_workflow_json(path)
    if overrides is None:
        overrides = overrides_for(path.parent)
    return analyze_data(data, path.stem, str(path), overrides)


def workflow_files(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """JSON files named or found (recursively) in directories, plus errors for missing paths."""
    files: list[Path] = []
    errors: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*.json")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                errors.append(f"{path}: no workflow .json files in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or directory")
    return list(dict.fromkeys(files)), errors


def analyze_paths(paths: list[Path]) -> AnalysisResult:
    """Analyze files and directories; bad files become one-line errors, the rest still count.

    Overrides are read from ``overrides.yaml`` in each workflow's own directory.
    """
    files, errors = workflow_files(paths)
    result = AnalysisResult(errors=errors)
    cache: dict[Path, Overrides | None] = {}
    bad_overrides: dict[Path, str] = {}
    names: dict[str, int] = {}
    for file in files:
        directory = file.parent
        if directory not in cache and directory not in bad_overrides:
            try:
                cache[directory] = overrides_for(directory)
            except BadInput as exc:
                bad_overrides[directory] = str(exc)
                result.errors.append(str(exc))
        if directory in bad_overrides:
            result.errors.append(f"{file}: not analyzed because {directory / OVERRIDES_FILENAME} is invalid")
            continue
        try:
            data = read_workflow_json(file)
            name = file.stem
            names[name] = names.get(name, 0) + 1
            if names[name] > 1:
                # Same file name in two folders: keep both, distinguishable in the lock.
                name = f"{file.parent.name}/{file.stem}"
            result.manifests.append(analyze_data(data, name, str(file), cache.get(directory)))
        except BadInput as exc:
            result.errors.append(str(exc))
    result.lock = build_lock(result.manifests)
    return result
