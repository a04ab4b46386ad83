"""`comfyfleet bootstrap` and `comfyfleet common`: the operators' runbook flags over deploy tasks.

Each flag names a task of ``deploy/common.py`` (and the host data it reads); the work
is done by :func:`comfyfleet.runner.run` through pyinfra's Python API.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from comfyfleet.cli.output import out, show_progress
from comfyfleet.errors import BadInput
from comfyfleet.gateway import drain_around, gateway_targets, inventory_with_gateway
from comfyfleet.runner import HostResult, RunOptions, RunResult, check_options, parallel_ssh, run

STATUS_STYLE = {
    "changed": "green",
    "no change": "cyan",
    "would change": "yellow",
    "failed": "red",
    "unreachable": "red",
    "skipped": "yellow",
}
COMPONENTS = ("comfyui", "api", "all")
UPDATE_TARGETS = ("comfyui", "nodes", "manager", "api")

TargetArg = typer.Argument(..., help="IP or host name, a,b list, inventory file, or FILE:GROUP")
DryRun = typer.Option(False, "--dry-run", help="show what would change, change nothing")
# Numbers are parsed here rather than by typer so a bad value gives our one-line error.
Parallel = typer.Option(None, "--parallel", metavar="N", help="at most N hosts at once")
Serial = typer.Option(False, "--serial", help="one host after another")
Rolling = typer.Option(
    None, "--rolling", metavar="N", help="N hosts at a time; each batch healthy before the next"
)
FailPercent = typer.Option(
    None, "--fail-percent", metavar="P", help="stop when more than P percent of hosts failed"
)
InventoryData = typer.Option(None, "--inventory-data", help="host data override key=value (repeatable)")


def register(app: typer.Typer) -> None:
    """Add `bootstrap` and `common` to the main app."""
    app.command("bootstrap")(bootstrap)
    app.command("common")(common)


def bootstrap(
    target: str = TargetArg,
    provider: str | None = typer.Option(
        None, "--provider", help="lambda | datacrunch (default: each host's `provider` data)"
    ),
    dry_run: bool = DryRun,
    parallel: str | None = Parallel,
    serial: bool = Serial,
    rolling: str | None = Rolling,
    fail_percent: str | None = FailPercent,
    inventory_data: list[str] | None = InventoryData,
) -> None:
    """Turn fresh GPU machines into ComfyUI hosts: docker, NVIDIA toolkit, volume, ComfyUI.

    Example: comfyfleet bootstrap 203.0.113.7 --provider lambda

    Example: comfyfleet bootstrap inventory/datacrunch.py:gpu --dry-run
    """
    if provider is not None and provider not in ("lambda", "datacrunch", "generic"):
        raise BadInput(f"--provider {provider!r}: use lambda or datacrunch")
    data = parse_data(inventory_data)
    opts = run_options(dry_run, parallel, serial, rolling, fail_percent)
    parallel_ssh()
    quiet_ssh_library()
    result = run(target, "bootstrap", data, opts, provider=provider)
    show(result)
    raise typer.Exit(result.exit_code)


def common(
    target: str = TargetArg,
    ref: str | None = typer.Argument(None, help="with --update-comfyui-core: the ref to move to"),
    status: bool = typer.Option(False, "--status", help="containers, health, GPU, disk, memory, processes"),
    logs: bool = typer.Option(False, "--logs", help="recent ComfyUI and API logs, errors highlighted"),
    export: str | None = typer.Option(None, "--export", help="with --logs: write DIR/<host>.log"),
    restart: str | None = typer.Option(None, "--restart", help="comfyui | api | all"),
    restart_comfyui: bool = typer.Option(False, "--restart-comfyui", help="same as --restart comfyui"),
    restart_api_only: bool = typer.Option(False, "--restart-api-only", help="restart only the API service"),
    update_comfyui_core: bool = typer.Option(
        False,
        "--update-comfyui-core",
        help="move ComfyUI to REF (default: the inventory's), roll back if unhealthy",
    ),
    update: str | None = typer.Option(None, "--update", help="comfyui | nodes | manager | api"),
    update_binary: bool = typer.Option(
        False, "--update-binary", help="upload the API artifact if it changed"
    ),
    verify_endpoints: bool = typer.Option(
        False, "--verify-endpoints", help="health, ready, one run per workflow"
    ),
    install_nodes: str | None = typer.Option(
        None, "--install-nodes", help="workflow whose node packs to install"
    ),
    install_missing: bool = typer.Option(False, "--install-missing", help="node packs of every workflow"),
    list_installed_nodes: bool = typer.Option(
        False, "--list-installed-nodes", help="packs, commits, import state"
    ),
    download_models: str | None = typer.Option(
        None, "--download-models", help="workflow whose models to fetch"
    ),
    organize_models: bool = typer.Option(False, "--organize-models", help="move models to the right folders"),
    cleanup_models: bool = typer.Option(False, "--cleanup-models", help="list unreferenced models"),
    yes: bool = typer.Option(
        False, "--yes", help="with --cleanup-models --plan ID: delete that reviewed list"
    ),
    plan: str | None = typer.Option(
        None, "--plan", help="with --cleanup-models --yes: the id a listing printed"
    ),
    storage_report: bool = typer.Option(
        False, "--storage-report", help="sizes per folder, largest files, free"
    ),
    deploy_all: bool = typer.Option(
        False, "--deploy-all", help="ComfyUI, nodes, models, API, restart, verify"
    ),
    dry_run: bool = DryRun,
    parallel: str | None = Parallel,
    serial: bool = Serial,
    rolling: str | None = Rolling,
    fail_percent: str | None = FailPercent,
    inventory_data: list[str] | None = InventoryData,
) -> None:
    """Maintenance on running hosts (the operators' runbook flags); one action per run.

    Example: comfyfleet common inventory/lambda.py --status

    Example: comfyfleet common inventory/lambda.py:gpu --deploy-all --rolling 1
    """
    chosen: list[tuple[str, str, dict[str, Any]]] = []

    def pick(flag: str, on: Any, task: str, **data: Any) -> None:
        if on:
            chosen.append((flag, task, data))

    pick("--status", status, "status")
    pick("--logs", logs, "logs", **({"export_dir": export_folder(export)} if export and logs else {}))
    if restart is not None and restart not in COMPONENTS:
        raise BadInput(f"--restart {restart!r}: use comfyui, api or all")
    pick("--restart", restart, "restart", component=restart)
    pick("--restart-comfyui", restart_comfyui, "restart", component="comfyui")
    pick("--restart-api-only", restart_api_only, "restart-api-only")
    pick("--update-comfyui-core", update_comfyui_core, "update-comfyui-core", **({"ref": ref} if ref else {}))
    if update is not None and update not in UPDATE_TARGETS:
        raise BadInput(f"--update {update!r}: use comfyui, nodes, manager or api")
    pick("--update", update, "update", update=update)
    pick("--update-binary", update_binary, "update-binary")
    pick("--verify-endpoints", verify_endpoints, "verify-endpoints")
    pick("--install-nodes", install_nodes, "install-nodes", workflow=install_nodes)
    pick("--install-missing", install_missing, "install-missing")
    pick("--list-installed-nodes", list_installed_nodes, "list-installed-nodes")
    pick("--download-models", download_models, "download-models", workflow=download_models)
    pick("--organize-models", organize_models, "organize-models")
    pick(
        "--cleanup-models",
        cleanup_models,
        "cleanup-models",
        yes=yes,
        **({"cleanup_plan": plan} if plan else {}),
    )
    pick("--storage-report", storage_report, "storage-report")
    pick("--deploy-all", deploy_all, "deploy-all")

    if len(chosen) != 1:
        named = ", ".join(flag for flag, _, _ in chosen) or "none"
        raise BadInput(f"give exactly one action flag (got {named}): see `comfyfleet common --help`")
    flag, task, task_data = chosen[0]
    workflow = task_data.get("workflow")
    if workflow and not Path(workflow).exists():
        # Checked here too: the task itself only looks once a host is connected.
        raise BadInput(f"{flag} {workflow}: workflow file not found: give a workflow JSON file or folder")
    if ref and flag != "--update-comfyui-core":
        raise BadInput(f"unexpected argument {ref!r}: only --update-comfyui-core takes a REF")
    if export and flag != "--logs":
        raise BadInput("--export only goes with --logs")
    if (yes or plan) and flag != "--cleanup-models":
        raise BadInput("--yes and --plan only go with --cleanup-models")
    data = {**parse_data(inventory_data), **task_data, "task": task}
    opts = run_options(dry_run, parallel, serial, rolling, fail_percent)
    parallel_ssh()
    show_progress()
    quiet_ssh_library()
    # Behind a gateway, a rolling batch is drained there first; --status adds the gateway's view.
    fleet_file = inventory_with_gateway(target)
    around = drain_around(fleet_file) if fleet_file and opts.rolling and not opts.dry_run else None
    result = run(target, task, data, opts, around_batch=around)
    show(result)
    if fleet_file and task == "status":
        show(run(gateway_targets(fleet_file)[0], "gateway-status"))
    raise typer.Exit(result.exit_code)


def export_folder(path: str) -> str:
    """The ``--export`` folder, created now so a bad path is one line before any host is asked."""
    folder = Path(path).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--export {path}: {exc.strerror or exc}: give a folder you can write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"--export {path}: not writable: give a folder you can write to")
    return str(folder)


def quiet_ssh_library() -> None:
    """Keep paramiko's tracebacks (a port that does not speak SSH) off the screen.

    The results table already names the host and the error in one line.
    """
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def run_options(
    dry_run: bool, parallel: str | None, serial: bool, rolling: str | None, fail_percent: str | None
) -> RunOptions:
    """The strategy flags as checked :class:`RunOptions` (BadInput names the flag and the fix)."""
    opts = RunOptions(
        dry_run=dry_run,
        parallel=whole_number("--parallel", parallel),
        serial=serial,
        rolling=whole_number("--rolling", rolling),
        fail_percent=whole_number("--fail-percent", fail_percent),
    )
    check_options(opts)
    return opts


def whole_number(flag: str, value: str | None) -> int | None:
    """``value`` of ``flag`` as an int, or None when the flag was not given."""
    if value is None:
        return None
    if not re.fullmatch(r"\s*-?[0-9]+\s*", value):
        raise BadInput(f"{flag} {value!r}: give a whole number, such as {flag} 2")
    return int(value)


def parse_data(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings to a dict; whole numbers become ints and true/false bools (pyinfra's
    ``ssh_port`` must be an int), everything else stays a string for host data validation."""
    data: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[a-z_][a-z0-9_]*$", key):
            raise BadInput(f"--inventory-data {item!r}: use key=value with a lower-case key")
        if re.fullmatch(r"[0-9]+", value):
            data[key] = int(value)
        elif value.lower() in ("true", "false"):
            data[key] = value.lower() == "true"
        else:
            data[key] = value
    return data


def show(result: RunResult) -> None:
    """Results table, then each host's report sections, then one summary line."""
    title = f"{result.task}{' (dry run)' if result.dry_run else ''}"
    table = Table(title=title, title_justify="left")
    for col in ("host", "result", "changed", "reason"):
        table.add_column(col, overflow="fold")
    for res in result.hosts:
        style = STATUS_STYLE.get(res.status, "white")
        table.add_row(res.host, Text(res.status, style=style), _changed(res), res.reason)
    out.print(table)
    for res in result.hosts:
        _show_report(res)
    counts: dict[str, int] = {}
    for res in result.hosts:
        counts[res.status] = counts.get(res.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    bad = [r.host for r in result.hosts if not r.ok]
    line = f"{len(result.hosts)} hosts: {summary}"
    if bad:
        line += f"; not ok: {', '.join(bad)}"
    if result.stopped:
        line += f"; stopped: {result.stopped}"
    out.print(Text(line, style="red" if bad else "green"))
    sys.stdout.flush()


def _changed(res: HostResult) -> str:
    if not res.changed:
        return "-"
    names = [n.split(" | ")[-1] for n in res.changed]
    return ", ".join(names[:4]) + (f" (+{len(names) - 4})" if len(names) > 4 else "")


def _show_report(res: HostResult) -> None:
    rep = res.report
    if not rep.sections and not rep.notes:
        return
    out.rule(f"{res.host}")
    for note in rep.notes:
        out.print(f"- {note}")
    for section in rep.sections.values():
        if section.text is not None:
            out.print(Text(section.title, style="bold"))
            pattern = re.compile(section.highlight) if section.highlight else None
            for line in section.text.splitlines() or ["(empty)"]:
                out.print(Text(line, style="red" if pattern and pattern.search(line) else ""))
        else:
            table = Table(title=section.title, title_justify="left")
            for col in section.columns:
                table.add_column(col, overflow="fold")
            for row in section.rows:
                table.add_row(*row)
            out.print(table)
