"""User overrides (workflows/overrides.yaml): the strongest source for packs and models.

Format (both sections optional)::

    nodes:                      # class type -> the pack that provides it
      MyCustomSampler:
        repo: https://github.com/me/my-nodes   # required, https URL
        version: 1.2.0                          # optional: registry version or commit
        id: my-nodes                            # optional: defaults to the repo's name
    models:                     # filename as written in the workflow -> where to get it
      my_model.safetensors:
        folder: checkpoints                     # ComfyUI models subfolder
        url: https://example.org/my_model.safetensors
        sha256: 0123...                          # optional, 64 hex digits
    trusted_repos:              # packs a workflow's node metadata (aux_id) may name although
      - https://github.com/me/my-nodes         # neither ComfyUI-Manager nor the Comfy Registry knows them
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from comfyfleet.analysis.rules import canonical_folder
from comfyfleet.errors import BadInput
from comfyfleet.safety import normalize_model_name, unsafe_model_name_reason

OVERRIDES_FILENAME = "overrides.yaml"


class NodeOverride(BaseModel):
    """The pack that provides one class type."""

    model_config = ConfigDict(extra="forbid")
    repo: str
    version: str | None = None
    id: str | None = None

    @field_validator("repo")
    @classmethod
    def _https(cls, repo: str) -> str:
        if not repo.startswith("https://"):
            raise ValueError("repo must be an https:// git URL")
        return repo.rstrip("/").removesuffix(".git")

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: object) -> object:
        return None if value is None else str(value)


class ModelOverride(BaseModel):
    """Where one model file goes and where to get it."""

    model_config = ConfigDict(extra="forbid")
    folder: str | None = None
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    @field_validator("folder")
    @classmethod
    def _folder(cls, folder: str | None) -> str | None:
        if folder is None:
            return None
        if unsafe_model_name_reason(folder):
            raise ValueError(f"folder {folder!r} is not a plain relative folder name")
        return canonical_folder(folder)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("https://", "http://")):
            raise ValueError("url must start with https:// or http://")
        return url


class Overrides(BaseModel):
    """Everything an overrides file says."""

    model_config = ConfigDict(extra="forbid")
    nodes: dict[str, NodeOverride] = Field(default_factory=dict)
    models: dict[str, ModelOverride] = Field(default_factory=dict)
    trusted_repos: list[str] = Field(default_factory=list)

    @field_validator("trusted_repos")
    @classmethod
    def _trusted_https(cls, repos: list[str]) -> list[str]:
        for repo in repos:
            if not repo.startswith("https://"):
                raise ValueError(f"{repo!r} must be an https:// git URL")
        return [repo.rstrip("/").removesuffix(".git") for repo in repos]

    def trusts(self, repo: str) -> bool:
        """True when the user listed repo under trusted_repos (compared case-insensitively)."""
        key = repo.lower().rstrip("/").removesuffix(".git")
        return any(key == trusted.lower() for trusted in self.trusted_repos)

    @field_validator("models")
    @classmethod
    def _normalized_names(cls, models: dict[str, ModelOverride]) -> dict[str, ModelOverride]:
        return {normalize_model_name(k): v for k, v in models.items()}

    def model(self, filename: str) -> ModelOverride | None:
        """Override for a filename, matched exactly or by its base name."""
        found = self.models.get(filename)
        if found is None:
            found = self.models.get(filename.rsplit("/", 1)[-1])
        return found


def load_overrides(path: Path) -> Overrides:
    """Parse an overrides file; BadInput naming the file and the problem otherwise."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"{path}: cannot read overrides ({exc.strerror or exc})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"{path}: invalid YAML: {first}") from None
    if data is None:
        return Overrides()
    try:
        return Overrides.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise BadInput(
            f"{path}: {where}: {err['msg']} (see the format at the top of workflows/overrides.yaml)"
        ) from None


def overrides_for(directory: Path) -> Overrides | None:
    """The overrides file next to workflows in directory, if there is one."""
    path = directory / OVERRIDES_FILENAME
    return load_overrides(path) if path.is_file() else None
