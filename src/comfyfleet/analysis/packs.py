"""Which custom node packs provide a workflow's class types.

Order of evidence, strongest first: the user's overrides, the node's own metadata
(``cnr_id`` / ``aux_id`` / ``ver``), ComfyUI core, then ComfyUI-Manager's
extension-node-map (exact names, then ``nodename_pattern``). When several packs list a
class, the workflow's classes are covered with as few packs as possible (packs already
needed win), then the pack a custom-node-list "preemption" names, then the more starred.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from comfyfleet.analysis.index import KnowledgeIndex, first_word
from comfyfleet.analysis.overrides import Overrides
from comfyfleet.analysis.workflow import NodeUse
from comfyfleet.manifest import NodePack, UnresolvedNode

# Strength of the evidence behind a pack; a pack keeps its strongest.
RESOLUTION_RANK = {
    "override": 0,
    "node_metadata": 1,
    "extension_map": 2,
    "pattern": 3,
    "set_cover": 4,
    "name_guess": 5,
}
# A pack guessed from a shared name prefix alone must be this popular (GitHub stars).
_PREFIX_MIN_STARS = 100
# ... and own at least this share of the classes under that prefix (see _guess_by_name).
_PREFIX_OWN_SHARE = 0.5


@dataclass
class PackResolution:
    """Packs, core classes and unresolved classes of one workflow."""

    core_classes: list[str] = field(default_factory=list)
    packs: list[NodePack] = field(default_factory=list)
    unresolved: list[UnresolvedNode] = field(default_factory=list)


@dataclass
class _Chosen:
    id: str
    repo: str
    version: str | None
    resolved_by: str
    provides: set[str] = field(default_factory=set)


def resolve_packs(nodes: list[NodeUse], index: KnowledgeIndex, overrides: Overrides | None) -> PackResolution:
    """Resolve every class type used by nodes to core, a pack, or unresolved."""
    node_ids: dict[str, list[str]] = defaultdict(list)
    metadata: dict[str, dict[str, str]] = {}
    for node in nodes:
        node_ids[node.class_type].append(node.node_id)
        props = node.properties
        if (props.get("cnr_id") or props.get("aux_id")) and node.class_type not in metadata:
            metadata[node.class_type] = {
                k: str(props[k]) for k in ("cnr_id", "aux_id", "ver") if props.get(k)
            }

    result = PackResolution()
    chosen: dict[str, _Chosen] = {}
    open_classes: dict[str, tuple[list[int], str]] = {}
    unlisted: list[str] = []

    def choose(key: str, pack_id: str, repo: str, version: str | None, how: str, ctype: str) -> None:
        entry = chosen.get(key)
        if entry is None:
            entry = chosen[key] = _Chosen(id=pack_id, repo=repo, version=version, resolved_by=how)
        elif RESOLUTION_RANK[how] < RESOLUTION_RANK[entry.resolved_by]:
            entry.resolved_by = how
        if entry.version is None and version:
            entry.version = version
        entry.provides.add(ctype)

    def unresolved(ctype: str, reason: str) -> None:
        result.unresolved.append(UnresolvedNode(class_type=ctype, node_ids=node_ids[ctype], reason=reason))

    for ctype in sorted(node_ids):
        override = overrides.nodes.get(ctype) if overrides else None
        meta = metadata.get(ctype, {})
        if override is not None:
            pack_id = override.id or override.repo.rsplit("/", 1)[-1].lower()
            choose(_key(override.repo), pack_id, override.repo, override.version, "override", ctype)
        elif meta.get("cnr_id") == "comfy-core":
            result.core_classes.append(ctype)
        elif meta and (found := _repo_from_metadata(meta, ctype, index))[0] is not None:
            choose(_key(str(found[0])), found[1], str(found[0]), meta.get("ver"), "node_metadata", ctype)
        elif index.is_core(ctype):
            result.core_classes.append(ctype)
        elif listed := index.packs_listing(ctype):
            open_classes[ctype] = (listed, "extension_map")
        elif matched := index.packs_by_pattern(ctype):
            open_classes[ctype] = (matched, "pattern")
        else:
            unlisted.append(ctype)

    for ctype, pack_index in _cover(open_classes, index, {c.repo for c in chosen.values()}).items():
        info = index.packs[pack_index]
        candidates, how = open_classes[ctype]
        choose(
            _key(info.repo),
            info.registry_id,
            info.repo,
            None,
            how if len(set(candidates)) == 1 else "set_cover",
            ctype,
        )

    for ctype in unlisted:
        guess = _guess_by_name(
            ctype, index, {i for c in chosen.values() if (i := index.pack_by_repo(c.repo)) is not None}
        )
        if guess is None:
            named = (
                f" (its metadata names pack {metadata[ctype]['cnr_id']!r})"
                if metadata.get(ctype, {}).get("cnr_id")
                else ""
            )
            unresolved(
                ctype,
                f"class type is neither ComfyUI core nor listed by any pack in ComfyUI-Manager's "
                f"extension-node-map{named}; add it under 'nodes:' in workflows/overrides.yaml with its repo",
            )
        else:
            info = index.packs[guess]
            choose(_key(info.repo), info.registry_id, info.repo, None, "name_guess", ctype)

    result.packs = [
        NodePack(
            id=c.id, repo=c.repo, version=c.version, provides=sorted(c.provides), resolved_by=c.resolved_by
        )
        for c in sorted(chosen.values(), key=lambda c: c.repo.lower())
    ]
    return result


def _cover(
    open_classes: dict[str, tuple[list[int], str]], index: KnowledgeIndex, already: set[str]
) -> dict[str, int]:
    """Assign each class one of its candidate packs, using as few packs as possible."""
    assigned: dict[str, int] = {}
    in_use: set[int] = {i for repo in already if (i := index.pack_by_repo(repo)) is not None}

    def settle() -> None:
        for ctype, (candidates, _) in open_classes.items():
            if ctype in assigned:
                continue
            usable = [i for i in candidates if i in in_use]
            if usable:
                assigned[ctype] = max(usable, key=lambda i: index.packs[i].stars)

    # Forced choices: the only candidate, or the pack that preempts the name.
    for ctype, (candidates, _) in open_classes.items():
        distinct = set(candidates)
        preempting = index.preempting_pack(ctype)
        if len(distinct) == 1:
            in_use.add(candidates[0])
        elif preempting is not None and preempting in distinct:
            assigned[ctype] = preempting
            in_use.add(preempting)
    settle()
    # Greedy cover of the rest: most classes covered, then most stars, then Manager order.
    while len(assigned) < len(open_classes):
        counts: dict[int, int] = defaultdict(int)
        first_seen: dict[int, int] = {}
        for ctype, (candidates, _) in open_classes.items():
            if ctype not in assigned:
                for position, i in enumerate(dict.fromkeys(candidates)):
                    counts[i] += 1
                    first_seen[i] = min(first_seen.get(i, position), position)
        best = max(counts, key=lambda i: (counts[i], index.packs[i].stars, -first_seen[i]))
        in_use.add(best)
        settle()
    return assigned


def _guess_by_name(ctype: str, index: KnowledgeIndex, in_use: set[int]) -> int | None:
    """A pack for a class the map does not list yet, from the names of the classes it does list.

    First a naming tag only one pack uses ("...KJ", "...|pysssss"), or a pack whose repo
    is named like the class or its tag ("... (LoraManager)" -> ComfyUI-Lora-Manager); a
    repo named like the class's first word only counts after the prefix evidence below.
    Then the longest shared name prefix: a pack the workflow already needs wins (a new
    "LTXV..." class in a workflow using ComfyUI-LTXVideo); otherwise only a popular pack
    with more classes under that prefix than ComfyUI core has (else it may be a newer
    core node) and at least half of all packs' classes under it; last, a needed pack with
    3+ classes whose first word is the same.
    Guesses stay rare on purpose: a wrong pack costs as much as a missing one.
    """
    tagged = index.pack_by_tag(ctype)
    if tagged is None:
        tagged = index.pack_named_like(ctype)
    if tagged is not None:
        return tagged
    if index.has_tag(ctype):
        # "Save Image (Foo)": the shared words are generic, the tag is what counts.
        return None
    candidates, core_count = index.packs_by_prefix(ctype)
    used = [i for i in candidates if i in in_use]
    if used:
        return max(used, key=lambda i: index.packs[i].stars)
    # A pack the workflow does not need otherwise is only guessed when the prefix is mostly
    # its own: a prefix many packs share ("Qwen3...", "FilmGrain...") names a model family
    # or an effect, not a pack, and a wrong pack costs as much as a missing one.
    shared = sum(candidates.values())
    popular = [
        i
        for i, n in candidates.items()
        if index.packs[i].stars >= _PREFIX_MIN_STARS and n > core_count and n >= _PREFIX_OWN_SHARE * shared
    ]
    if popular:
        return max(popular, key=lambda i: index.packs[i].stars)
    named = index.pack_named_like(ctype, by_first_word=True)
    if named is not None:
        return named
    # A pack the workflow needs anyway that names 3+ classes with the same first word.
    word = first_word(ctype)
    if len(word) >= 3:
        same_word = [i for i in in_use if sum(first_word(c) == word for c in index.classes_of_pack(i)) >= 3]
        if same_word:
            return max(same_word, key=lambda i: index.packs[i].stars)
    return None


def _repo_from_metadata(meta: dict[str, str], ctype: str, index: KnowledgeIndex) -> tuple[str | None, str]:
    """(repo URL, pack id) a node's cnr_id / aux_id points at."""
    cnr_id = meta.get("cnr_id")
    aux_id = meta.get("aux_id")
    if cnr_id:
        found = index.pack_by_repo(aux_id) if aux_id else None
        if found is None:
            # Registry ids are mostly the repo name; prefer a pack that also lists the class.
            same_name = [
                i
                for i in index.packs_listing(ctype)
                if index.packs[i].registry_id.replace("_", "-") == cnr_id.lower().replace("_", "-")
            ]
            if same_name:
                found = max(same_name, key=lambda i: index.packs[i].stars)
        if found is None:
            found = index.pack_by_name(cnr_id)
        if found is None:
            found = index.pack_by_id(cnr_id)
        if found is None:
            # Registry ids drop or add the "comfyui-" affix and punctuation of the repo name.
            found = index.pack_by_plain_name(cnr_id)
        if found is not None:
            return index.packs[found].repo, cnr_id
        if aux_id and "/" in aux_id:
            return f"https://github.com/{aux_id.strip('/')}", cnr_id
        return None, cnr_id
    if aux_id and "/" in aux_id:
        found = index.pack_by_repo(aux_id)
        repo = index.packs[found].repo if found is not None else f"https://github.com/{aux_id.strip('/')}"
        pack_id = index.packs[found].registry_id if found is not None else aux_id.rsplit("/", 1)[-1].lower()
        return repo, pack_id
    return None, aux_id or ""


def _key(repo: str) -> str:
    return repo.lower().rstrip("/").removesuffix(".git")
