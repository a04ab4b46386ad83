"""Combine per-workflow manifests into one lock: deduplicated packs and models, and conflicts."""

from __future__ import annotations

from comfyfleet.analysis.packs import RESOLUTION_RANK
from comfyfleet.manifest import (
    Lock,
    Manifest,
    ModelRef,
    NodePack,
    PackConflict,
    Unresolved,
    UnresolvedModel,
    UnresolvedNode,
)


def build_lock(manifests: list[Manifest]) -> Lock:
    """Packs by repo and models by (folder, filename) across workflows; version clashes become conflicts."""
    lock = Lock()
    packs: dict[str, NodePack] = {}
    versions: dict[str, dict[str, list[str]]] = {}
    models: dict[tuple[str, str], ModelRef] = {}
    unresolved_nodes: dict[str, UnresolvedNode] = {}
    unresolved_models: dict[tuple[str | None, str, str], UnresolvedModel] = {}
    for manifest in manifests:
        name = manifest.workflow
        lock.workflows[name] = manifest.digest()
        for pack in manifest.custom_nodes:
            key = pack.repo.lower()
            merged = packs.get(key)
            if merged is None:
                merged = packs[key] = pack.model_copy(deep=True, update={"workflows": []})
            merged.provides = sorted(set(merged.provides) | set(pack.provides))
            if RESOLUTION_RANK.get(pack.resolved_by, 9) < RESOLUTION_RANK.get(merged.resolved_by, 9):
                merged.resolved_by = pack.resolved_by
            if name not in merged.workflows:
                merged.workflows.append(name)
            if pack.version:
                versions.setdefault(key, {}).setdefault(pack.version, []).append(name)
        for ref in manifest.models:
            mkey = (ref.folder, ref.filename)
            mref = models.get(mkey)
            if mref is None:
                mref = models[mkey] = ref.model_copy(deep=True, update={"workflows": [], "node_ids": []})
            mref.url = mref.url or ref.url
            mref.sha256 = mref.sha256 or ref.sha256
            if name not in mref.workflows:
                mref.workflows.append(name)
        for node in manifest.unresolved.nodes:
            unode = unresolved_nodes.setdefault(
                node.class_type, node.model_copy(deep=True, update={"node_ids": []})
            )
            unode.node_ids.extend(f"{name}:{i}" for i in node.node_ids)
        for model in manifest.unresolved.models:
            ukey = (model.folder, model.filename, model.reason.split(";")[0])
            umodel = unresolved_models.setdefault(ukey, model.model_copy(deep=True, update={"node_ids": []}))
            umodel.node_ids.extend(f"{name}:{i}" for i in model.node_ids)

    for key, by_version in versions.items():
        pack = packs[key]
        if len(by_version) > 1:
            lock.conflicts.append(PackConflict(repo=pack.repo, versions=dict(sorted(by_version.items()))))
            # The version most workflows ask for wins; the conflict stays visible for review.
            pack.version = max(by_version, key=lambda v: (len(by_version[v]), v))
        else:
            pack.version = next(iter(by_version))
        # A workflow that pins nothing accepts any version, so it is no conflict.
    lock.custom_nodes = sorted(packs.values(), key=lambda p: p.repo.lower())
    lock.models = sorted(models.values(), key=lambda m: (m.folder, m.filename))
    lock.unresolved = Unresolved(
        nodes=list(unresolved_nodes.values()), models=list(unresolved_models.values())
    )
    return lock
