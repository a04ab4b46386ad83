"""The offline knowledge index shipped in comfyfleet/data/ (built by index_build.py)."""

from __future__ import annotations

import bisect
import functools
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyfleet.analysis.index_build import DEFAULT_INDEX_PATH, INDEX_FORMAT
from comfyfleet.analysis.rules import GENERIC_FILENAMES
from comfyfleet.errors import BadInput


@dataclass(frozen=True)
class PackInfo:
    """One node pack known to ComfyUI-Manager."""

    repo: str
    id: str
    stars: int
    title: str

    @property
    def registry_id(self) -> str:
        """Best guess at the Comfy Registry id: registry ids are mostly the lowercased repo name."""
        return self.repo.rstrip("/").rsplit("/", 1)[-1].lower()


@dataclass(frozen=True)
class IndexedModel:
    """What public data says about a model filename."""

    folder: str
    url: str | None
    source: str


class KnowledgeIndex:
    """Read-only lookups over the generated index document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        if doc.get("format") != INDEX_FORMAT:
            raise BadInput(
                f"analysis index has format {doc.get('format')!r}, expected {INDEX_FORMAT}; run `comfyfleet index refresh`"
            )
        self.sources: dict[str, Any] = doc.get("sources", {})
        self.core_classes: frozenset[str] = frozenset(doc["core_classes"])
        self.packs: list[PackInfo] = [
            PackInfo(repo=p[0], id=p[1], stars=int(p[2]), title=p[3]) for p in doc["packs"]
        ]
        self._classes: dict[str, list[int]] = doc["classes"]
        self._patterns: list[tuple[re.Pattern[str], int]] = [(re.compile(p), i) for p, i in doc["patterns"]]
        self._preemptions: dict[str, int] = doc["preemptions"]
        self._pack_ids: dict[str, int] = doc["pack_ids"]
        self._repo_index: dict[str, int] = {}
        self._name_index: dict[str, int] = {}
        for i, pack in enumerate(self.packs):
            self._repo_index.setdefault(_repo_key(pack.repo), i)
            name = _name_key(pack.registry_id)
            # Several forks share a name; the most starred one is the likely target.
            if name not in self._name_index or pack.stars > self.packs[self._name_index[name]].stars:
                self._name_index[name] = i
        self._models: dict[str, list[Any]] = doc["models"]
        self._models_by_base: dict[str, str] = {}
        for name in self._models:
            self._models_by_base.setdefault(name.rsplit("/", 1)[-1].lower(), name)
        self._pack_classes: dict[int, list[str]] | None = None
        self._tags: dict[str, dict[int, int]] | None = None
        self._by_plain_name: dict[str, int] | None = None
        self._sorted_classes: list[str] = sorted(set(self._classes) | self.core_classes)
        self.input_folders: dict[str, dict[str, str]] = doc["input_folders"]
        self.widget_order: dict[str, list[str | None]] = doc["widget_order"]

    def is_core(self, class_type: str) -> bool:
        """True when ComfyUI itself provides the class type."""
        return class_type in self.core_classes

    def packs_listing(self, class_type: str) -> list[int]:
        """Packs whose extension-node-map entry lists the class type (Manager order)."""
        return self._classes.get(class_type, [])

    def packs_by_pattern(self, class_type: str) -> list[int]:
        """Packs whose nodename_pattern matches the class type."""
        return [i for pattern, i in self._patterns if pattern.search(class_type)]

    def packs_by_prefix(self, class_type: str) -> tuple[dict[int, int], int]:
        """Packs listing the classes that share the longest name prefix with class_type.

        For class types newer than the Manager's map: "NunchakuQwenImageDiTLoader" shares
        "Nunchaku" with the nunchaku pack's classes. The prefix must be at least 4 characters
        and cover the name's first word (CamelCase, or up to a separator), unless it is one
        pack's signature (5+ characters on 3+ of its classes, used by no other pack nor core). Returns
        {pack: how many of its classes share the prefix} and how many core classes do.
        """
        first = first_word(class_type)
        pos = bisect.bisect_left(self._sorted_classes, class_type)
        best = 0
        for j in (pos - 1, pos):
            if 0 <= j < len(self._sorted_classes) and self._sorted_classes[j] != class_type:
                best = max(best, common_prefix(class_type, self._sorted_classes[j]))
        if best < 4:
            return {}, 0
        prefix = class_type[:best]
        start = bisect.bisect_left(self._sorted_classes, prefix)
        packs: dict[int, int] = {}
        core = 0
        for name in self._sorted_classes[start:]:
            if not name.startswith(prefix):
                break
            if len(first_word(name)) > best:
                # "Deno" is not the word "Denoise": the shared part must be whole words of both.
                continue
            core += name in self.core_classes
            for i in set(self._classes.get(name, [])):
                packs[i] = packs.get(i, 0) + 1
        # A prefix shorter than the name's first word ("Clown" of "ClownsharK...") only
        # counts when it is one pack's signature: 5+ characters, on 3+ of its classes,
        # used by no other pack nor core.
        if best < len(first) and (best < 5 or len(packs) != 1 or core or max(packs.values()) < 3):
            return {}, 0
        return packs, core

    def pack_by_plain_name(self, name: str) -> int | None:
        """The most starred pack whose repo name equals name once case, punctuation and a
        "comfyui" affix are ignored: registry id "listhelper" -> dseditor/ComfyUI-ListHelper."""
        key = plain_name(name)
        return self._plain_names().get(key) if len(key) >= 4 else None

    def _plain_names(self) -> dict[str, int]:
        if self._by_plain_name is None:
            by_name: dict[str, int] = {}
            for i, pack in enumerate(self.packs):
                key = plain_name(pack.registry_id)
                if len(key) >= 4 and (key not in by_name or pack.stars > self.packs[by_name[key]].stars):
                    by_name[key] = i
            self._by_plain_name = by_name
        return self._by_plain_name

    def pack_named_like(self, class_type: str, by_first_word: bool = False) -> int | None:
        """The pack whose repo name is the class's tag or whole name, or (by_first_word) its
        long first word.

        "Lora Loader (LoraManager)" -> ComfyUI-Lora-Manager, "FilmGrainLTXV" ->
        comfyui-filmgrainltxv; by first word "Trellis2ImageToShape" -> ComfyUI-Trellis2.
        A first word is weaker evidence ("INPAINT_..." is not every pack named Inpaint).
        """
        by_plain_name = self._plain_names()
        keys: list[str] = []
        if by_first_word:
            word = first_word(class_type)
            if len(word) >= 6:
                keys.append(plain_name(word))
        else:
            tag = _tag(class_type)
            keys = [plain_name(tag)] if tag and tag[0] in "(|/" else []
            keys.append(plain_name(class_type))
        for key in keys:
            if len(key) >= 4 and key in by_plain_name:
                return by_plain_name[key]
        return None

    def has_tag(self, class_type: str) -> bool:
        """True for names ending in an explicit pack tag: "(rgthree)", "|pysssss", "//Inspire"."""
        tag = _tag(class_type)
        return tag is not None and tag[0] in "(|/"

    def pack_by_tag(self, class_type: str) -> int | None:
        """The pack whose classes carry the same name tag: on 2+ of them and 80% of all such names."""
        tag = _tag(class_type)
        if tag is None:
            return None
        if self._tags is None:
            tags: dict[str, dict[int, int]] = {}
            for name, packs in self._classes.items():
                found = _tag(name)
                if found is not None:
                    for i in set(packs):
                        tags.setdefault(found, {})[i] = tags.setdefault(found, {}).get(i, 0) + 1
            for name in self.core_classes:
                found = _tag(name)
                if found is not None:
                    tags.setdefault(found, {})[-1] = tags.setdefault(found, {}).get(-1, 0) + 1
            self._tags = tags
        owners = self._tags.get(tag, {})
        if not owners:
            return None
        # Forks copy a few tagged classes; the owner of the tag has nearly all of them.
        pack, count = max(
            owners.items(), key=lambda item: (item[1], self.packs[item[0]].stars if item[0] >= 0 else 0)
        )
        if pack >= 0 and count >= 2 and count >= 0.8 * sum(owners.values()):
            return pack
        return None

    def classes_of_pack(self, pack: int) -> list[str]:
        """Class types the Manager's map lists for one pack."""
        if self._pack_classes is None:
            by_pack: dict[int, list[str]] = {}
            for name, packs in self._classes.items():
                for i in packs:
                    by_pack.setdefault(i, []).append(name)
            self._pack_classes = by_pack
        return self._pack_classes.get(pack, [])

    def preempting_pack(self, class_type: str) -> int | None:
        """The pack that claims a contested class name (custom-node-list 'preemptions')."""
        return self._preemptions.get(class_type)

    def pack_by_id(self, pack_id: str) -> int | None:
        """Pack index for a Comfy Registry / Manager id."""
        return self._pack_ids.get(pack_id)

    def pack_by_name(self, name: str) -> int | None:
        """Pack whose repo name matches a registry id ('comfyui-kjnodes' -> kijai/ComfyUI-KJNodes)."""
        return self._name_index.get(_name_key(name))

    def pack_by_repo(self, repo: str) -> int | None:
        """Pack index for a repo URL or 'owner/name', if known."""
        return self._repo_index.get(_repo_key(repo))

    def model(self, filename: str) -> IndexedModel | None:
        """What the index knows about a filename (exact, then by base name).

        Generic names (diffusers' diffusion_pytorch_model.safetensors, ...) say nothing alone.
        """
        if GENERIC_FILENAMES.match(filename.rsplit("/", 1)[-1]):
            return None
        entry = self._models.get(filename)
        if entry is None:
            alt = self._models_by_base.get(filename.rsplit("/", 1)[-1].lower())
            entry = self._models.get(alt) if alt else None
        if entry is None:
            return None
        return IndexedModel(folder=entry[0], url=entry[1], source=entry[2])


def _repo_key(repo: str) -> str:
    key = repo.strip().lower().removesuffix("/").removesuffix(".git")
    for prefix in ("https://github.com/", "http://github.com/", "git@github.com:"):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


_FIRST_WORD = re.compile(r"^[A-Z0-9]+(?=[A-Z][a-z])|^[A-Z]?[a-z0-9]+|^[A-Z0-9]+")


def first_word(name: str) -> str:
    """'LTXV' of 'LTXVGemmaLoader', 'Nunchaku' of 'NunchakuFluxDiTLoader', 'easy' of 'easy seed'."""
    match = _FIRST_WORD.match(name)
    return match.group(0) if match else name


# Trailing tags packs put on their class names.
_TAG = re.compile(r"(\([^()]+\)|\|\s*[\w.-]+|//\s*[\w.-]+|🐍|[a-z0-9](?P<caps>[A-Z]{2,3}))$")


def _tag(name: str) -> str | None:
    match = _TAG.search(name.strip())
    if match is None:
        return None
    return match.group("caps") or match.group(0).strip()


def plain_name(name: str) -> str:
    """'comfyui-lora-manager' and '(LoraManager)' both become 'loramanager'."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for affix in ("comfyui", "comfy"):
        key = key.removeprefix(affix).removesuffix(affix)
    return key


def _name_key(name: str) -> str:
    return name.lower().replace("_", "-")


def load_index(path: Path = DEFAULT_INDEX_PATH) -> KnowledgeIndex:
    """Load an index file (uncached)."""
    try:
        with gzip.open(path) as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise BadInput(f"analysis index {path} is missing; run `comfyfleet index refresh`") from None
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"analysis index {path} is unreadable ({exc}); run `comfyfleet index refresh`"
        ) from None
    return KnowledgeIndex(doc)


@functools.lru_cache(maxsize=1)
def default_index() -> KnowledgeIndex:
    """The packaged index, loaded once per process."""
    return load_index(DEFAULT_INDEX_PATH)
