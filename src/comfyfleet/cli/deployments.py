"""`comfyfleet deployments ...`: list, show, stop, start, delete, history and schedules."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated

import typer
from rich.table import Table

from comfyfleet.cli.output import err, fail, out
from comfyfleet.cli.ship import result_table
from comfyfleet.errors import BadInput
from comfyfleet.registry import Deployment, HistoryEntry, Registry, StepRecord, utcnow
from comfyfleet.schedules import add_schedule, run_scheduled
from comfyfleet.ship import HostsBusy, hold_hosts
from comfyfleet.ship.serving import set_serving

app = typer.Typer(
    name="deployments",
    help="Deployments made by `comfyfleet ship`: list, inspect, stop, start, delete, schedule.\n\n"
    "Example: comfyfleet deployments list --active --env prod",
    no_args_is_help=True,
)
schedule_app = typer.Typer(
    name="schedule",
    help="Recurring health checks, warmups and workflow runs, run by `comfyfleet watch`.\n\n"
    "Example: comfyfleet deployments schedule add portraits --action health --every 5m",
    no_args_is_help=True,
)
app.add_typer(schedule_app)

STATUS_STYLE = {"active": "green", "inactive": "yellow", "error": "red"}

EnvOption = typer.Option(None, "--env", help="environment (dev, prod); needed when a name is in both")


class Action(str, Enum):
    health = "health"
    warmup = "warmup"
    run = "run"


def register(parent: typer.Typer) -> None:
    """Add the `deployments` group to the main app."""
    parent.add_typer(app)


def _registry() -> Registry:
    return Registry()


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _when(stamp: str | None) -> str:
    """ISO time without microseconds and offset, for tables (the registry keeps UTC)."""
    return stamp[:19].replace("T", " ") if stamp else "-"


@app.command("list")
def list_(
    active: bool = typer.Option(False, "--active", help="only active deployments"),
    env: str | None = EnvOption,
) -> None:
    """List deployments (name, environment, workflow, status, endpoint, counters).

    Example: comfyfleet deployments list --active --env prod
    """
    deployments = _registry().deployments(active_only=active, environment=env)
    if not deployments:
        out.print(
            "no deployments"
            + (" matching the filters" if active or env else "")
            + ": ship one with `comfyfleet ship WORKFLOW --to TARGET`"
        )
        return
    table = Table(title="deployments")
    for col in (
        "name",
        "env",
        "workflow",
        "status",
        "target",
        "endpoint",
        "deployed (UTC)",
        "runs",
        "errors",
    ):
        table.add_column(col, justify="right" if col in ("runs", "errors") else "left")
    for d in deployments:
        more = f" (+{len(d.endpoints) - 1})" if len(d.endpoints) > 1 else ""
        table.add_row(
            d.name,
            d.environment,
            d.workflow,
            _status(d.status),
            d.target,
            d.endpoint_url + more,
            _when(d.deployed_at),
            str(d.execution_count),
            str(d.error_count),
        )
    out.print(table)


@app.command()
def show(name: str, env: str | None = EnvOption) -> None:
    """Show one deployment: where it runs, what it serves, its schedules and last runs.

    Example: comfyfleet deployments show portraits --env prod
    """
    reg = _registry()
    d = reg.get(name, env)
    table = Table(show_header=False, title=f"deployment {d.name} ({d.environment})")
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = [
        ("id", str(d.id)),
        ("name", d.name),
        ("environment", d.environment),
        ("workflow", d.workflow),
        ("workflow file", d.workflow_path),
        ("manifest hash", d.manifest_hash),
        ("target", d.target),
        ("status", _status(d.status)),
        ("deployed at", d.deployed_at),
        ("stopped at", d.stopped_at or "-"),
        ("executions", str(d.execution_count)),
        ("errors", str(d.error_count)),
    ]
    if d.last_error:
        rows.append(("last error", d.last_error))
    rows += [(f"endpoint ({e.host})", e.url) for e in d.endpoints]
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)
    schedules = reg.schedules(d.id)
    if schedules:
        out.print("schedules: " + ", ".join(f"#{s.id} {s.action} {s.when}" for s in schedules))
    recent = reg.history(d.name, d.environment, limit=5)
    if recent:
        out.print(_history_table(recent, title="last runs (see `history` for all)", steps=False))


def _switch(name: str, env: str | None, enabled: bool) -> Deployment:
    """Turn a deployment's endpoint on or off on every host, then record it."""
    reg = _registry()
    d = reg.get(name, env)
    started = utcnow()
    kind = "start" if enabled else "stop"

    try:
        with hold_hosts([e.host for e in d.endpoints], f"{kind} of {d.name} ({d.environment})"):
            results = set_serving(d, enabled)
    except HostsBusy as exc:
        fail(f"{kind} not started: {exc}", soft_wrap=True)
    failed = {host: cause for host, (ok, cause, _s) in results.items() if not ok}
    steps = [StepRecord(kind, host, ok, 1, seconds, cause) for host, (ok, cause, seconds) in results.items()]
    summary = "ok" if not failed else "; ".join(f"{h}: {c}" for h, c in failed.items())
    reg.record_history(
        name=d.name,
        environment=d.environment,
        kind=kind,
        trigger="cli",
        started_at=started,
        ok=not failed,
        summary=summary,
        steps=steps,
        manifest_hash=d.manifest_hash,
    )
    if failed:
        for host, cause in failed.items():
            err.print(f"{kind} {d.name} ({d.environment}) failed on host {host}: {cause}", markup=False)
        err.print(
            f"status left as {d.status}: fix the host and run `comfyfleet deployments {kind} {d.name}` again"
        )
        raise typer.Exit(1)
    return reg.set_status(d.id, "active" if enabled else "inactive") or d


@app.command()
def stop(name: str, env: str | None = EnvOption) -> None:
    """Stop serving a deployment's workflow (soft: the record and its statistics stay).

    Example: comfyfleet deployments stop portraits
    """
    d = _switch(name, env, enabled=False)
    out.print(
        f"stopped {d.name} ({d.environment}): {d.workflow} no longer served on "
        f"{len(d.endpoints)} host(s); `comfyfleet deployments start {d.name}` serves it again"
    )


@app.command()
def start(name: str, env: str | None = EnvOption) -> None:
    """Serve a stopped deployment's workflow again.

    Example: comfyfleet deployments start portraits
    """
    d = _switch(name, env, enabled=True)
    out.print(f"started {d.name} ({d.environment}): {d.endpoint_url}")


@app.command()
def verify(name: str, env: str | None = EnvOption) -> None:
    """Check a deployment now: /health and /ready on every host, one generation, output fetched.

    Example: comfyfleet deployments verify portraits --env prod
    """
    reg = _registry()
    d = reg.get(name, env)
    if d.status == "inactive":
        raise BadInput(
            f"{d.name} ({d.environment}) is stopped: `comfyfleet deployments start {d.name}` first"
        )
    outcome = run_scheduled(reg, d.id, "run", trigger="cli", kind="verify")
    if outcome is None:
        raise BadInput(f"{d.name} ({d.environment}) was stopped or deleted meanwhile")
    out.print(result_table(outcome.result, f"verify {d.name} ({d.environment})"))
    if outcome.result.failure is not None:
        fail(f"verify failed: {outcome.result.failure}; {d.name} is now in status error")


@app.command()
def delete(
    name: str,
    env: str | None = EnvOption,
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Delete a deployment's record, history and schedules (hard; stops serving it first).

    Example: comfyfleet deployments delete portraits --env dev --yes
    """
    reg = _registry()
    d = reg.get(name, env)
    if not yes:
        if sys.stdin is None or not sys.stdin.isatty():
            raise BadInput(
                f"refusing to delete {d.name} ({d.environment}) without confirmation: "
                "no terminal to ask on; pass --yes"
            )
        typer.confirm(
            f"delete deployment {d.name} ({d.environment}) with its history and schedules?", abort=True
        )
    if d.status != "inactive":
        d = _switch(d.name, d.environment, enabled=False)
    reg.delete(d.id)
    out.print(f"deleted {d.name} ({d.environment}); model files and workflows on the hosts were kept")


def _seconds_between(start: str, end: str) -> float | None:
    """Wall-clock seconds of a run (hosts run in parallel: not the sum of its steps)."""
    from datetime import datetime

    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


def _history_table(entries: list[HistoryEntry], title: str, steps: bool = True) -> Table:
    table = Table(title=title)
    for col in ("started (UTC)", "kind", "by", "result", "step", "host", "tries", "seconds", "detail"):
        table.add_column(col, justify="right" if col in ("tries", "seconds") else "left")
    for h in entries:
        result = "[green]ok[/]" if h.ok else "[red]failed[/]"
        total = _seconds_between(h.started_at, h.finished_at)
        detail = "" if h.ok else h.summary
        table.add_row(
            _when(h.started_at),
            h.kind,
            h.trigger,
            result,
            "total" if h.steps else "-",
            "",
            "",
            f"{total:.2f}" if total is not None else "",
            detail,
            end_section=not steps or not h.steps,
        )
        if steps:
            for i, s in enumerate(h.steps):
                mark = "" if s.ok else "[red]✗[/] "
                table.add_row(
                    "",
                    "",
                    "",
                    "",
                    mark + s.step,
                    s.host,
                    str(s.attempts),
                    f"{s.seconds:.2f}",
                    s.error or "",
                    end_section=i == len(h.steps) - 1,
                )
    return table


@app.command()
def history(
    name: str,
    env: str | None = EnvOption,
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="most recent runs to show"),
) -> None:
    """Ship runs, verifications, scheduled runs, stops and starts, newest first, with every step.

    Example: comfyfleet deployments history portraits -n 10
    """
    reg = _registry()
    found = reg.find(name, env)
    if found is not None:
        environment = found.environment
    else:
        # A first ship that failed leaves history but no deployment record.
        envs = reg.has_history(name, env)
        if not envs:
            reg.get(name, env)  # raises the clear "no deployment named ..." error
        if len(envs) > 1:
            raise BadInput(f"{name!r} has history in {' and '.join(envs)}: pass --env to choose one")
        environment = envs[0]
    entries = reg.history(name, environment, limit=limit)
    out.print(_history_table(entries, title=f"history of {name} ({environment}), newest first"))


@schedule_app.command("add")
def schedule_add(
    name: str,
    action: Annotated[Action, typer.Option("--action", help="health | warmup | run")] = Action.health,
    every: str | None = typer.Option(None, "--every", help="interval: 30s, 5m, 2h, 1d"),
    cron: str | None = typer.Option(None, "--cron", help="crontab line in UTC, e.g. '*/5 * * * *'"),
    env: str | None = EnvOption,
) -> None:
    """Add a recurring action to a deployment (exactly one of --every or --cron).

    Example: comfyfleet deployments schedule add portraits --action warmup --cron '0 8 * * 1-5'
    """
    reg = _registry()
    d = reg.get(name, env)
    s = add_schedule(reg, d, action.value, cron=cron, every=every)
    out.print(
        f"schedule #{s.id}: {s.action} of {d.name} ({d.environment}) {s.when}; `comfyfleet watch` runs it"
    )


@schedule_app.command("list")
def schedule_list(name: str | None = typer.Argument(None), env: str | None = EnvOption) -> None:
    """List schedules, of all deployments or of one.

    Example: comfyfleet deployments schedule list portraits
    """
    reg = _registry()
    schedules = reg.schedules(reg.get(name, env).id if name else None)
    if env and not name:
        schedules = [s for s in schedules if s.environment == env]
    if not schedules:
        out.print("no schedules: add one with `comfyfleet deployments schedule add NAME --every 5m`")
        return
    table = Table(title="schedules")
    for col in ("id", "deployment", "env", "action", "when", "created (UTC)"):
        table.add_column(col)
    for s in schedules:
        table.add_row(str(s.id), s.deployment, s.environment, s.action, s.when, _when(s.created_at))
    out.print(table)


@schedule_app.command("remove")
def schedule_remove(schedule_id: int = typer.Argument(..., metavar="ID")) -> None:
    """Remove a schedule by its id (see `schedule list`).

    Example: comfyfleet deployments schedule remove 3
    """
    _registry().remove_schedule(schedule_id)
    out.print(f"removed schedule #{schedule_id}")
