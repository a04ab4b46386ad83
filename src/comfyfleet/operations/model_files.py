"""The models folder on a host, through ``hostside/model_files.py`` and its JSON plan.

Organize referenced files into their manifest folders (never overwriting), list unreferenced
files as a reviewed cleanup plan and delete exactly such a plan, report storage. Composed by
:mod:`comfyfleet.deploys.models`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from comfyfleet.context import report
from comfyfleet.facts.hostside import HostsideJson
from comfyfleet.shell import fail


@operation()
def organize(script_path: str, plan_path: str) -> Generator[Any, None, None]:
    """Move referenced files that sit in the wrong folder to the manifest's folder (never overwrites)."""
    state = host.get_fact(
        HostsideJson, argv=("python3", script_path, "--plan", plan_path, "organize", "--check")
    )
    result = state.get("ORGANIZE")
    if result is None:
        yield fail("; ".join(state.get("error", [])) or "model_files.py gave no answer")
        return
    rows = [[m["from"], m["to"], "move"] for m in result["moves"]]
    rows += [[c["file"], "-", c["reason"]] for c in result["conflicts"]]
    report(host).table("organize models", ["file", "to", "action"], rows)
    if not result["moves"]:
        host.noop("every referenced model is in its folder")
        return
    yield StringCommand("python3", script_path, "--plan", plan_path, "organize")


@operation()
def cleanup(script_path: str, plan_path: str, plan_id: str | None) -> Generator[Any, None, None]:
    """List model files no workflow references and keep that list as a plan; delete only a reviewed plan.

    + plan_id: None lists (and saves the list on the host under its id); an id deletes
      exactly the files of that saved list (a file changed since is skipped and named)
    """
    if plan_id:
        yield StringCommand(
            "python3",
            script_path,
            "--plan",
            plan_path,
            "cleanup",
            "--delete",
            "--plan-id",
            QuoteString(plan_id),
        )
        report(host).note(f"deleted the files of reviewed cleanup plan {plan_id} (changed ones are skipped)")
        return
    state = host.get_fact(HostsideJson, argv=("python3", script_path, "--plan", plan_path, "cleanup"))
    result = state.get("CLEANUP")
    if result is None:
        yield fail("; ".join(state.get("error", [])) or "model_files.py gave no answer")
        return
    report(host).table(
        "unreferenced models",
        ["file", "MB"],
        [[f["file"], f"{f['size'] / 1e6:.1f}"] for f in result["files"]],
    )
    if not result["files"]:
        host.noop("no unreferenced model files")
        return
    report(host).note(
        f"cleanup plan {result['plan_id']}: {len(result['files'])} file(s), "
        f"{result['bytes'] / 1e6:.1f} MB; to delete exactly these: --cleanup-models --yes "
        f"--plan {result['plan_id']} (pyinfra: --data cleanup_plan={result['plan_id']})"
    )
    yield StringCommand(
        "python3", script_path, "--plan", plan_path, "cleanup", "--save-plan", QuoteString(result["plan_id"])
    )


@operation()
def storage(script_path: str, plan_path: str) -> Generator[Any, None, None]:
    """Per-folder sizes, the largest files, referenced vs unreferenced, free space (a report)."""
    state = host.get_fact(HostsideJson, argv=("python3", script_path, "--plan", plan_path, "report"))
    r = state.get("REPORT")
    if r is None:
        yield fail("; ".join(state.get("error", [])) or "model_files.py gave no answer")
        return
    gb = 1e9
    report(host).table(
        "models per folder",
        ["folder", "files", "GB"],
        [[f["folder"], f["files"], f"{f['bytes'] / gb:.2f}"] for f in r["folders"]],
    )
    report(host).table(
        "largest model files",
        ["file", "GB", "referenced"],
        [[f["file"], f"{f['bytes'] / gb:.2f}", "yes" if f["referenced"] else "no"] for f in r["largest"]],
    )
    report(host).table(
        "storage",
        ["what", "files", "GB"],
        [
            ["referenced", r["referenced"]["files"], f"{r['referenced']['bytes'] / gb:.2f}"],
            ["unreferenced", r["unreferenced"]["files"], f"{r['unreferenced']['bytes'] / gb:.2f}"],
            ["free on data root", "-", f"{r['free_bytes'] / gb:.2f} of {r['total_bytes'] / gb:.2f}"],
        ],
    )
    host.noop("storage report")
