"""Custom node packs on a host, through ``hostside/install_nodes.py`` and its JSON plan.

Install or update to the plan's pins, report how each pack was installed, prove every class
type loads (``/object_info``), list what ``custom_nodes/`` holds. Composed by
:mod:`comfyfleet.deploys.nodes`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra import host
from pyinfra.api import StringCommand, operation
from pyinfra.api.operation import OperationMeta

from comfyfleet.context import host_run, report
from comfyfleet.facts.hostside import HostsideJson, parse_tagged
from comfyfleet.operations.hostside import NODES_CHECK, probed_or_fact
from comfyfleet.shell import fail


@operation()
def node_packs(
    script_path: str, plan_path: str, packs: int, update: bool = False
) -> Generator[Any, None, None]:
    """Bring the plan's node packs to their pinned versions (no change when all already are).

    + script_path: ``install_nodes.py`` on the host
    + plan_path: the JSON plan on the host
    + packs: how many packs the plan names (for the no-op message)
    + update: move unpinned packs to their latest commit
    """
    # update: fetch first (in the check), so a pack already at its newest commit is no change.
    mode = (*NODES_CHECK, "--fetch") if update else NODES_CHECK
    state = probed_or_fact(("python3", script_path, "--plan", plan_path, *mode))
    if "VERIFY" in state:
        host_run(host).verified = state
    if "CHECK" not in state:
        yield fail(
            "; ".join(state.get("error", []))
            or "install_nodes.py check gave no answer (python3 on the host?)"
        )
        return
    todo = {row["dir"]: row["needs"] for row in state["CHECK"] if row["needs"]}
    if not todo:
        host.noop(f"{packs} node pack(s) {'up to date' if update else 'at their pinned versions'}")
        return
    yield StringCommand("python3", script_path, "--plan", plan_path, "update" if update else "install")


@operation()
def report_packs(install: OperationMeta) -> Generator[Any, None, None]:
    """Show how each pack was installed (path used and why), from the install step's output."""
    if install.is_complete() and install.did_change():
        result = parse_tagged(install.stdout_lines).get("RESULT", [])
        report(host).table(
            "node packs",
            ["pack", "folder", "via", "why", "commit", "changes", "warnings"],
            [
                [
                    r["id"],
                    r["dir"],
                    r.get("method", ""),
                    r.get("why", ""),
                    (r.get("commit") or "")[:12],
                    "; ".join(r.get("changed", [])) or "-",
                    "; ".join(r.get("warnings", [])),
                ]
                for r in result
            ],
        )
    host.noop("reported node packs")
    return
    yield


@operation()
def verify_classes(
    script_path: str, plan_path: str, reuse_check: OperationMeta | None = None
) -> Generator[Any, None, None]:
    """Every needed class type is in /object_info; else fail naming each pack and its import error.

    + reuse_check: the install step; when it changed nothing, the verification its check ran is used
    """
    # When the install step found nothing to do, its check already verified (same run, no restart since).
    reusable = reuse_check is not None and reuse_check.is_complete() and not reuse_check.did_change()
    run = host_run(host)
    state, run.verified = (run.verified if reusable else None), None
    if state is None:
        state = host.get_fact(HostsideJson, argv=("python3", script_path, "--plan", plan_path, "verify"))
    result = state.get("VERIFY")
    if result is None:
        yield fail("; ".join(state.get("error", [])) or "could not read /object_info")
        return
    rows = [
        [
            p["id"],
            p["dir"],
            "yes" if not p["missing"] else "NO",
            ", ".join(p["missing"]) or "-",
            p.get("error", ""),
        ]
        for p in result["packs"]
    ]
    report(host).table(
        "node classes in /object_info", ["pack", "folder", "loaded", "missing", "import error"], rows
    )
    problems = [f"pack {p['id']} failed to import: {p.get('error')}" for p in result["packs"] if p["missing"]]
    if result["missing_core"]:
        problems.append(f"core classes missing: {', '.join(result['missing_core'])} (raise comfyui_ref)")
    if problems:
        yield fail("; ".join(problems))
        return
    host.noop(f"all {sum(len(p.get('missing', [])) == 0 for p in result['packs'])} pack(s) loaded")


@operation()
def list_packs(script_path: str, plan_path: str) -> Generator[Any, None, None]:
    """Report every folder in custom_nodes/: repo, commit, locally modified, imported (no change)."""
    state = host.get_fact(HostsideJson, argv=("python3", script_path, "--plan", plan_path, "list"))
    rows = state.get("LIST")
    if rows is None:
        yield fail("; ".join(state.get("error", [])) or "could not list custom nodes")
        return
    imported = {True: "yes", False: "NO", None: "?"}
    report(host).table(
        "installed node packs",
        ["pack", "repo", "commit", "modified", "imported", "via", "error"],
        [
            [
                r["dir"],
                r["repo"],
                r["commit"][:12],
                "yes" if r["modified"] else "no",
                imported[r.get("imported")],
                r["via"],
                r.get("error", ""),
            ]
            for r in rows
        ],
    )
    host.noop(f"{len(rows)} node pack(s) listed")
