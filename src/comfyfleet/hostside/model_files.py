#!/usr/bin/env python3
"""Look after the files in ComfyUI's models folder, on the GPU host (standard library only).

Plan (JSON, --plan): ``{"models_dir": "...", "data_root": "...",
"referenced": [{"folder": "checkpoints", "filename": "sd/x.safetensors"}, ...]}``.

Modes (each prints one ``WORD {json}`` line):

- ``organize --check`` / ``organize``: a referenced file that is missing from its folder
  but sits (same name, same relative path or same base name) in another folder is moved
  there with one rename. Never overwrites: when the target exists, the stray copy is
  reported and left alone. ``ORGANIZE``
- ``cleanup``: files below models/ that no workflow references, with sizes, and a plan id
  (a hash of the list with each file's size and mtime). ``cleanup --save-plan ID`` keeps
  that list on the host (``cleanup_plans_dir``) once the operator has seen it;
  ``cleanup --delete --plan-id ID`` deletes exactly the files of that saved list, never a
  list recomputed at delete time: a file changed since (size or mtime) is skipped and
  named. Symlinks are never followed, nothing outside models/ is touched. ``CLEANUP``
- ``report``: sizes per folder, the largest files, referenced vs unreferenced, free
  space on the data root. ``REPORT``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

# Not model files: ComfyUI's placeholders, editor and OS droppings, our own staging.
_IGNORED = {"put_checkpoints_here", "put_loras_here", "put_vae_here", ".DS_Store", "Thumbs.db"}


def walk(models_dir: str, folders: tuple[str, ...] = ()) -> list[tuple[str, str, int]]:
    """(folder, relative filename, size) of every regular file below models/<folder>/.

    ``folders`` are the (possibly nested, ``xlabs/loras``) folders the plan knows: a file
    below one of them is reported against the deepest one, so ``models/xlabs/loras/x``
    is ``("xlabs/loras", "x")``, not ``("xlabs", "loras/x")``.
    """
    nested = sorted((f for f in folders if "/" in f), key=len, reverse=True)
    out = []
    for folder in sorted(os.listdir(models_dir)) if os.path.isdir(models_dir) else []:
        top = os.path.join(models_dir, folder)
        if folder.startswith(".") or os.path.islink(top) or not os.path.isdir(top):
            continue
        for root, dirs, names in os.walk(top, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = os.path.join(root, name)
                if (
                    name in _IGNORED
                    or name.startswith(".")
                    or os.path.islink(path)
                    or not os.path.isfile(path)
                ):
                    continue
                full = os.path.relpath(path, models_dir).replace(os.sep, "/")
                owner = next((f for f in nested if full.startswith(f + "/")), folder)
                out.append((owner, full[len(owner) + 1 :], os.path.getsize(path)))
    return out


def _folders(plan: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted({str(r["folder"]) for r in plan.get("referenced", [])}))


def inside(root: str, path: str) -> bool:
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def organize(plan: dict[str, Any], apply: bool) -> dict[str, Any]:
    models_dir = plan["models_dir"]
    files = walk(models_dir, _folders(plan))
    moves: list[dict[str, str]] = []
    conflicts: list[dict[str, str]] = []
    for ref in plan.get("referenced", []):
        folder, filename = ref["folder"], ref["filename"]
        target = os.path.join(models_dir, folder, filename)
        if not inside(models_dir, target):
            conflicts.append({"file": f"{folder}/{filename}", "reason": "unsafe path"})
            continue
        base = filename.rsplit("/", 1)[-1]
        strays = [
            (f, r) for f, r, _ in files if f != folder and (r == filename or r.rsplit("/", 1)[-1] == base)
        ]
        strays += [
            (f, r) for f, r, _ in files if f == folder and r != filename and r.rsplit("/", 1)[-1] == base
        ]
        if not strays:
            continue
        if os.path.exists(target):
            for f, r in strays:
                conflicts.append(
                    {"file": f"{f}/{r}", "reason": f"{folder}/{filename} exists already: left in place"}
                )
            continue
        want = (ref.get("sha256") or "").lower()
        if want:
            # Same name is not same model: with a known hash, only the right content moves.
            matching = [(f, r) for f, r in strays if file_sha256(os.path.join(models_dir, f, r)) == want]
            for f, r in strays:
                if (f, r) not in matching:
                    conflicts.append(
                        {"file": f"{f}/{r}", "reason": f"same name as {folder}/{filename}, other content"}
                    )
            strays = matching
            if not strays:
                continue
        src_folder, src_rel = strays[0]
        src = os.path.join(models_dir, src_folder, src_rel)
        moves.append({"from": f"{src_folder}/{src_rel}", "to": f"{folder}/{filename}"})
        if apply:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            # link + unlink instead of rename: never replaces a file that appeared meanwhile.
            os.link(src, target)
            os.unlink(src)
        for f, r in strays[1:]:
            conflicts.append({"file": f"{f}/{r}", "reason": f"another copy of {base}: left in place"})
        files = [(f, r, s) for f, r, s in files if (f, r) != (src_folder, src_rel)]
    return {"moves": moves, "conflicts": conflicts, "applied": apply}


def unreferenced(plan: dict[str, Any]) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """(referenced, unreferenced) files. A name a workflow uses without a known folder
    (``referenced_anywhere``) protects that file in every folder."""
    wanted = {(r["folder"], r["filename"]) for r in plan.get("referenced", [])}
    anywhere = set(plan.get("referenced_anywhere", []))
    files = walk(plan["models_dir"], _folders(plan))

    def used(f: tuple[str, str, int]) -> bool:
        return (f[0], f[1]) in wanted or f[1] in anywhere or f[1].rsplit("/", 1)[-1] in anywhere

    return [f for f in files if used(f)], [f for f in files if not used(f)]


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cleanup_list(plan: dict[str, Any]) -> dict[str, Any]:
    """The unreferenced files and the id of exactly this list."""
    models_dir = plan["models_dir"]
    _, extra = unreferenced(plan)
    files = []
    for folder, rel, size in extra:
        st = os.lstat(os.path.join(models_dir, folder, rel))
        files.append({"file": f"{folder}/{rel}", "size": size, "mtime_ns": st.st_mtime_ns})
    plan_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "files": files,
        "bytes": sum(f["size"] for f in files),
        "plan_id": plan_id,
        "deleted": [],
        "skipped": [],
    }


def _plan_path(plan: dict[str, Any], plan_id: str) -> str:
    if not plan_id.isalnum() or not plan.get("cleanup_plans_dir"):
        raise SystemExit(f"cleanup plan {plan_id!r}: not a plan id")
    return os.path.join(plan["cleanup_plans_dir"], plan_id + ".json")


def save_plan(plan: dict[str, Any], plan_id: str) -> dict[str, Any]:
    """Keep the list the operator was shown, if it is still the one with that id."""
    listed = cleanup_list(plan)
    if listed["plan_id"] != plan_id:
        raise SystemExit(
            f"the unreferenced files changed while they were listed (plan {plan_id}): list them again"
        )
    path = _plan_path(plan, plan_id)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(listed["files"], f)
    os.replace(path + ".tmp", path)
    return listed


def delete_plan(plan: dict[str, Any], plan_id: str) -> dict[str, Any]:
    """Delete exactly the files of saved plan plan_id that are still what was reviewed."""
    models_dir = plan["models_dir"]
    path = _plan_path(plan, plan_id)
    try:
        with open(path) as f:
            files = json.load(f)
    except FileNotFoundError:
        raise SystemExit(
            f"no reviewed cleanup plan {plan_id} on this host: list with --cleanup-models first"
        ) from None
    deleted, skipped = [], []
    for entry in files:
        target = os.path.join(models_dir, entry["file"])
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            skipped.append({"file": entry["file"], "reason": "already gone"})
            continue
        if os.path.islink(target) or not inside(models_dir, target) or not os.path.isfile(target):
            skipped.append({"file": entry["file"], "reason": "no longer a plain file below models/"})
        elif (st.st_size, st.st_mtime_ns) != (entry["size"], entry["mtime_ns"]):
            skipped.append({"file": entry["file"], "reason": "changed since the plan was reviewed"})
        else:
            os.unlink(target)
            deleted.append(entry["file"])
    os.unlink(path)
    return {
        "files": files,
        "bytes": sum(f["size"] for f in files),
        "plan_id": plan_id,
        "deleted": deleted,
        "skipped": skipped,
    }


def storage(plan: dict[str, Any], top: int = 10) -> dict[str, Any]:
    used, extra = unreferenced(plan)
    files = used + extra
    per_folder: dict[str, list[int]] = {}
    for folder, _rel, size in files:
        per_folder.setdefault(folder, [0, 0])
        per_folder[folder][0] += 1
        per_folder[folder][1] += size
    st = os.statvfs(plan.get("data_root") or plan["models_dir"])
    ref_set = {(f, r) for f, r, _ in used}
    largest = sorted(files, key=lambda f: -f[2])[:top]
    return {
        "folders": [{"folder": k, "files": v[0], "bytes": v[1]} for k, v in sorted(per_folder.items())],
        "largest": [{"file": f"{f}/{r}", "bytes": s, "referenced": (f, r) in ref_set} for f, r, s in largest],
        "referenced": {"files": len(used), "bytes": sum(s for _, _, s in used)},
        "unreferenced": {"files": len(extra), "bytes": sum(s for _, _, s in extra)},
        "free_bytes": st.f_bavail * st.f_frsize,
        "total_bytes": st.f_blocks * st.f_frsize,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Organize, clean up and measure ComfyUI's models folder.")
    parser.add_argument("--plan", required=True)
    parser.add_argument("mode", choices=["organize", "cleanup", "report"])
    parser.add_argument("--check", action="store_true", help="organize: only say what would move")
    parser.add_argument("--save-plan", metavar="ID", help="cleanup: keep the listed files as plan ID")
    parser.add_argument("--delete", action="store_true", help="cleanup: delete the files of --plan-id")
    parser.add_argument("--plan-id", metavar="ID", help="cleanup --delete: the reviewed plan")
    args = parser.parse_args(argv)
    with open(args.plan) as f:
        plan = json.load(f)
    if args.mode == "organize":
        print("ORGANIZE " + json.dumps(organize(plan, apply=not args.check)), flush=True)
    elif args.mode == "cleanup":
        if args.delete:
            if not args.plan_id:
                raise SystemExit("cleanup --delete needs --plan-id: only a reviewed list is ever deleted")
            result = delete_plan(plan, args.plan_id)
        elif args.save_plan:
            result = save_plan(plan, args.save_plan)
        else:
            result = cleanup_list(plan)
        print("CLEANUP " + json.dumps(result), flush=True)
    else:
        print("REPORT " + json.dumps(storage(plan)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
