"""The dependency manifest: the one contract between analysis, host tiers and Modal.

A manifest lists what one workflow needs; a lock combines the manifests of a whole
workflows/ directory. Both are plain YAML on disk (JSON with --format json), meant to
be read and reviewed by a person in a pull request.

Keys other tools rely on (see shared/DESIGN.md): ``custom_nodes[].repo``,
``custom_nodes[].version``, ``custom_nodes[].provides``, ``models[].filename``,
``models[].folder``, ``models[].url``, ``models[].sha256``, ``unresolved.nodes[]``,
``unresolved.models[]``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

MANIFEST_SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodePack(_Model):
    """A custom node pack a workflow needs, at a pinned version."""

    id: str = Field(description="Comfy Registry id (cnr_id) or the repo's name")
    repo: str = Field(description="https git URL of the pack")
    version: str | None = Field(
        default=None, description="registry version (1.2.3) or git commit; null = latest"
    )
    provides: list[str] = Field(default_factory=list, description="class types this workflow uses from it")
    resolved_by: str = Field(
        description="how the pack was chosen: node_metadata | override | extension_map | pattern | set_cover | name_guess"
    )
    workflows: list[str] = Field(default_factory=list, description="in a lock: workflows needing it")


class ModelRef(_Model):
    """A model file a workflow loads, relative to ComfyUI's models/<folder>/."""

    filename: str = Field(description="path below the folder, '/' separated (may contain subfolders)")
    folder: str = Field(description="ComfyUI models subfolder: checkpoints, loras, vae, ...")
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    source: str = Field(
        default="",
        description="where the folder came from: override | node_properties | class_input | input_name | index | heuristic",
    )
    node_ids: list[str] = Field(default_factory=list)
    workflows: list[str] = Field(default_factory=list, description="in a lock: workflows needing it")


class UnresolvedNode(_Model):
    class_type: str
    node_ids: list[str] = Field(default_factory=list)
    reason: str


class UnresolvedModel(_Model):
    filename: str
    folder: str | None = None
    node_ids: list[str] = Field(default_factory=list)
    reason: str


class Unresolved(_Model):
    nodes: list[UnresolvedNode] = Field(default_factory=list)
    models: list[UnresolvedModel] = Field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.nodes or self.models)


class SkippedNode(_Model):
    node_id: str
    class_type: str
    reason: str = Field(description="frontend-only | muted | bypassed")


class Manifest(_Model):
    """What one workflow needs."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    workflow: str = Field(description="workflow name (file stem)")
    source: str = Field(description="path of the workflow file")
    format: str = Field(description="ui | api")
    core_classes: list[str] = Field(default_factory=list, description="ComfyUI core class types used")
    custom_nodes: list[NodePack] = Field(default_factory=list)
    models: list[ModelRef] = Field(default_factory=list)
    unresolved: Unresolved = Field(default_factory=Unresolved)
    skipped_nodes: list[SkippedNode] = Field(default_factory=list)

    def digest(self) -> str:
        """Stable hash of what the workflow needs (packs, versions, models)."""
        return content_digest(self.model_dump(exclude={"source"}))


class PackConflict(_Model):
    repo: str
    versions: dict[str, list[str]] = Field(description="version -> workflows asking for it")


class Lock(_Model):
    """The combined, deduplicated needs of every workflow in a directory."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    workflows: dict[str, str] = Field(default_factory=dict, description="workflow name -> manifest digest")
    custom_nodes: list[NodePack] = Field(default_factory=list)
    models: list[ModelRef] = Field(default_factory=list)
    conflicts: list[PackConflict] = Field(default_factory=list)
    unresolved: Unresolved = Field(default_factory=Unresolved)


def content_digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def to_yaml(model: BaseModel) -> str:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def to_json(model: BaseModel) -> str:
    return json.dumps(model.model_dump(mode="json"), indent=2)


def load_manifest(path: Path) -> Manifest:
    return Manifest.model_validate(yaml.safe_load(path.read_text()))


def load_lock(path: Path) -> Lock:
    return Lock.model_validate(yaml.safe_load(path.read_text()))
