"""Which custom node packs provide a workflow's class types.

Order of evidence, strongest first: the user's overrides, the node's own metadata
(``cnr_id`` / ``aux_id`` / ``ver``), ComfyUI core, then ComfyUI-Manager's
extension-node-map (exact names, then ``nodename_pattern``). When several packs list a
class, the workflow's classes are covered with as few packs as possible (packs already
needed win), then the pack a custom-node-list "preemption" names, then the more starred.

Trusted sources only: a repository is installed when ComfyUI-Manager's data lists it, or
the user named it (``nodes:`` or ``trusted_repos:`` in overrides.yaml). A node's
``aux_id`` naming any other repository leaves the class unresolved, with the one
overrides line that allows it. As in ComfyUI-Manager, a node's ``cnr_id`` is looked up
before its ``aux_id``, and packs that would share one folder (a fork and the pack it
copies) are installed once: the one a ``cnr_id`` named, else the one the Manager lists,
else the more starred.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
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
# A pack guessed from a shared name prefix alone must be this popular (GitHub stars) ...
_PREFIX_MIN_STARS = 100
# ... list this many classes under the prefix (one shared name is a coincidence) ...
_PREFIX_MIN_CLASSES = 2
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
    by_cnr_id: bool = False


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
    untrusted: list[tuple[str, str]] = []

    def choose(
        key: str, pack_id: str, repo: str, version: str | None, how: str, ctype: str, by_cnr: bool = False
    ) -> None:
        entry = chosen.get(key)
        if entry is None:
            entry = chosen[key] = _Chosen(id=pack_id, repo=repo, version=version, resolved_by=how)
        elif RESOLUTION_RANK[how] < RESOLUTION_RANK[entry.resolved_by]:
            entry.resolved_by = how
        entry.by_cnr_id = entry.by_cnr_id or by_cnr
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
        elif meta and (found := _repo_from_metadata(meta, ctype, index)).repo is not None:
            repo = found.repo
            if found.known or (overrides is not None and overrides.trusts(repo)):
                choose(_key(repo), found.id, repo, meta.get("ver"), "node_metadata", ctype, found.by_cnr)
            elif listed := index.packs_listing(ctype) or index.packs_by_pattern(ctype):
                # ComfyUI-Manager's own fallback for an unknown aux_id: the packs it lists.
                open_classes[ctype] = (listed, "extension_map")
            else:
                untrusted.append((ctype, repo))
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

    for ctype, repo in untrusted:
        unresolved(
            ctype,
            f"its metadata names {repo}, which neither ComfyUI-Manager's data nor your overrides list, so it "
            f"is not installed; if you trust it, add this line under 'trusted_repos:' in "
            f"workflows/overrides.yaml:   - {repo}",
        )

    result.packs = [
        NodePack(
            id=c.id, repo=c.repo, version=c.version, provides=sorted(c.provides), resolved_by=c.resolved_by
        )
        for c in sorted(_one_per_folder(chosen.values(), index), key=lambda c: c.repo.lower())
    ]
    return result


def _one_per_folder(chosen: Iterable[_Chosen], index: KnowledgeIndex) -> list[_Chosen]:
    """Packs that would share a custom_nodes folder (a fork and its original) merged into one.

    ComfyUI-Manager resolves a node's cnr_id before its aux_id and installs one pack per
    folder name; the pack kept is the one the user named, else a cnr_id named, else the one the
    Manager lists, else the more starred. The others' classes move to it.
    """
    groups: dict[str, list[_Chosen]] = defaultdict(list)
    for entry in chosen:
        groups[_key(entry.repo).rsplit("/", 1)[-1]].append(entry)
    kept: list[_Chosen] = []
    for group in groups.values():

        def strength(c: _Chosen) -> tuple[bool, bool, bool, int]:
            found = index.pack_by_repo(c.repo)
            return (
                c.resolved_by == "override",
                c.by_cnr_id,
                found is not None,
                index.packs[found].stars if found is not None else -1,
            )

        winner = max(group, key=strength)
        for other in group:
            if other is not winner:
                winner.provides |= other.provides
                if RESOLUTION_RANK[other.resolved_by] < RESOLUTION_RANK[winner.resolved_by]:
                    winner.resolved_by = other.resolved_by
        kept.append(winner)
    return kept


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
        if index.packs[i].stars >= _PREFIX_MIN_STARS
        and n >= _PREFIX_MIN_CLASSES
        and n > core_count
        and n >= _PREFIX_OWN_SHARE * shared
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


@dataclass(frozen=True)
class _MetaRepo:
    repo: str | None
    id: str
    known: bool = False  # ComfyUI-Manager's data lists the repo
    by_cnr: bool = False  # found through the node's cnr_id


def _repo_from_metadata(meta: dict[str, str], ctype: str, index: KnowledgeIndex) -> _MetaRepo:
    """The repo a node's cnr_id (first, as ComfyUI-Manager does) or aux_id points at."""
    cnr_id = meta.get("cnr_id")
    aux_id = meta.get("aux_id")
    if cnr_id:
        found = _pack_of_registry_id(cnr_id, ctype, index)
        if found is not None:
            return _MetaRepo(index.packs[found].repo, cnr_id, known=True, by_cnr=True)
    if aux_id and "/" in aux_id:
        found = index.pack_by_repo(aux_id)
        if found is not None:
            return _MetaRepo(index.packs[found].repo, cnr_id or index.packs[found].registry_id, known=True)
        return _MetaRepo(
            f"https://github.com/{aux_id.strip('/')}", cnr_id or aux_id.rsplit("/", 1)[-1].lower()
        )
    return _MetaRepo(None, cnr_id or aux_id or "")


def _pack_of_registry_id(cnr_id: str, ctype: str, index: KnowledgeIndex) -> int | None:
    """The Manager-known pack a Comfy Registry id names, if any."""
    # Registry ids are mostly the repo name; prefer a pack that also lists the class.
    same_name = [
        i
        for i in index.packs_listing(ctype)
        if index.packs[i].registry_id.replace("_", "-") == cnr_id.lower().replace("_", "-")
    ]
    if same_name:
        return max(same_name, key=lambda i: index.packs[i].stars)
    found = index.pack_by_name(cnr_id)
    if found is None:
        found = index.pack_by_id(cnr_id)
    if found is None:
        # Registry ids drop or add the "comfyui-" affix and punctuation of the repo name.
        found = index.pack_by_plain_name(cnr_id)
    return found


def _key(repo: str) -> str:
    return repo.lower().rstrip("/").removesuffix(".git")
