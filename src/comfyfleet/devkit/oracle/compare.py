"""Compare a converted API prompt with the frontend's, node by node, on the inputs ComfyUI reads.

The inputs compared for a node are those its /object_info declares (required and optional), plus the
sub-inputs of dynamic inputs (`images.image0` for a COMFY_AUTOGROW_V3 `images`, `resize_type.multiplier`
for a COMFY_DYNAMICCOMBO_V3 `resize_type`). Inputs no definition declares (the frontend's own widgets
such as `preview`, `audioUI`, `control_after_generate`) are ignored: ComfyUI's backend ignores them.
For a class_type missing from /object_info every input either side has is compared.
"""

from __future__ import annotations

from typing import Any

_NUM = (int, float)


def declared_inputs(class_type: str, object_info: dict[str, Any]) -> set[str] | None:
    """Names of the inputs /object_info declares for `class_type`, or None when it is unknown."""
    info = object_info.get(class_type)
    if not isinstance(info, dict):
        return None
    spec = info.get("input") or {}
    names: set[str] = set()
    for section in ("required", "optional"):
        names.update((spec.get(section) or {}).keys())
    return names


def _compared(name: str, declared: set[str] | None) -> bool:
    if declared is None or name in declared:
        return True
    head = name.split(".", 1)[0]
    return head != name and head in declared


def _norm(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_norm(v) for v in value]
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    a, b = _norm(a), _norm(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, _NUM) and isinstance(b, _NUM):
        return a == b or abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare_prompts(ours: dict[str, Any], theirs: dict[str, Any], object_info: dict[str, Any]) -> list[str]:
    """Differences between our prompt and the frontend's (`theirs`), one readable line each.

    An empty list means: the same node ids, the same class_type for each, and equal values (links as
    [node id, output slot]) on every input the node's /object_info declares.
    """
    diffs: list[str] = []
    ours_ids, their_ids = set(ours), set(theirs)
    for nid in sorted(their_ids - ours_ids, key=_id_key):
        diffs.append(
            f"node {nid} ({theirs[nid].get('class_type')}): in the frontend's prompt, missing from ours"
        )
    for nid in sorted(ours_ids - their_ids, key=_id_key):
        diffs.append(f"node {nid} ({ours[nid].get('class_type')}): in ours, not in the frontend's prompt")
    for nid in sorted(ours_ids & their_ids, key=_id_key):
        o, t = ours[nid], theirs[nid]
        ct = t.get("class_type")
        if o.get("class_type") != ct:
            diffs.append(f"node {nid}: class_type ours {o.get('class_type')!r} != frontend {ct!r}")
            continue
        declared = declared_inputs(str(ct), object_info)
        o_in, t_in = o.get("inputs") or {}, t.get("inputs") or {}
        for name in sorted(set(o_in) | set(t_in)):
            if not _compared(name, declared):
                continue
            if name not in o_in:
                diffs.append(
                    f"node {nid} ({ct}): input {name}: missing from ours, frontend {_show(t_in[name])}"
                )
            elif name not in t_in:
                diffs.append(f"node {nid} ({ct}): input {name}: ours {_show(o_in[name])}, frontend has none")
            elif not _same(o_in[name], t_in[name]):
                diffs.append(
                    f"node {nid} ({ct}): input {name}: ours {_show(o_in[name])} != frontend {_show(t_in[name])}"
                )
    return diffs


def _id_key(nid: str) -> tuple[Any, ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(nid).split(":"))
