"""`comfyfleet ship WORKFLOW --to TARGET` and `comfyfleet watch`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from comfyfleet.cli.output import show_progress
from comfyfleet.registry import Registry
from comfyfleet.schedules import RunEvent, Watcher
from comfyfleet.schedules import watch as run_watch
from comfyfleet.ship import (
    HostsBusy,
    PipelineResult,
    describe,
    hold_hosts,
    prepare_ship,
    run_ship,
    standard_steps,
)

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class Env(str, Enum):
    dev = "dev"
    prod = "prod"


def register(app: typer.Typer) -> None:
    """Add `ship` and `watch` to the main app."""
    app.command("ship")(ship)
    app.command("watch")(watch)


class RichReporter:
    """Progress per step and host: a spinner while it runs, a mark and seconds when done."""

    def __init__(self, console: Console) -> None:
        # No refresh thread: the CLI makes threads gevent-aware before a host run
        # (runner.parallel_ssh), and a thread started across that patch fails at exit. The
        # display is redrawn on every event instead.
        self.progress = Progress(
            SpinnerColumn(finished_text=""),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            auto_refresh=False,
        )
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    @staticmethod
    def _label(step: str, host: str) -> str:
        return f"{step:<9} {host}"

    def step_started(self, step: str, hosts: Sequence[str]) -> None:
        """A spinner per host of the step."""
        for host in hosts:
            self._tasks[(step, host)] = self.progress.add_task(self._label(step, host), total=None)
        self.progress.refresh()

    def attempt_failed(
        self, step: str, host: str, attempt: int, error: BaseException, retry_in: float
    ) -> None:
        """Say why an attempt failed and when the next one starts."""
        self.progress.console.print(
            f"  [yellow]{step} {host}: attempt {attempt} failed: {describe(error)}; "
            f"retrying in {retry_in:.1f}s[/]",
            markup=True,
            highlight=False,
        )

    def note(self, step: str, host: str, message: str) -> None:
        """What a failed step's compensation did on a host."""
        self.progress.console.print(f"  [yellow]{step} {host}: {message}[/]", markup=True, highlight=False)

    def host_finished(self, step: str, host: str, ok: bool, seconds: float, error: str | None) -> None:
        """Replace the spinner with the outcome."""
        task = self._tasks.get((step, host))
        if task is None:
            return
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        tail = "" if ok else f" [red]{error}[/]"
        self.progress.update(
            task, description=f"{mark} {self._label(step, host)}{tail}", total=1, completed=1
        )
        self.progress.refresh()


def result_table(result: PipelineResult, title: str) -> Table:
    """Per-step and per-host outcome with timings, and the total."""
    table = Table(title=title)
    for col in ("step", "host", "result", "tries", "seconds"):
        table.add_column(col, justify="right" if col in ("tries", "seconds") else "left")
    for r in result.results:
        if r.skipped:
            verdict = "[dim]skipped[/]"
        else:
            verdict = "[green]ok[/]" if r.ok else "[red]failed[/]"
        table.add_row(
            r.step,
            r.host,
            verdict,
            str(r.attempts) if not r.skipped else "",
            f"{r.seconds:.2f}" if not r.skipped else "",
        )
    table.add_section()
    table.add_row("total", "", "[green]ok[/]" if result.ok else "[red]failed[/]", "", f"{result.seconds:.2f}")
    return table


def ship(
    workflow: Annotated[Path, typer.Argument(help="workflow JSON file (UI or API format)")],
    to: Annotated[
        str, typer.Option("--to", help="IP or host name, inventory file, or group in it; or modal")
    ],
    env: Annotated[Env, typer.Option("--env", help="environment the deployment belongs to")] = Env.dev,
    name: Annotated[
        str | None, typer.Option("--name", help="deployment name (default: the workflow's file name)")
    ] = None,
    bootstrap: Annotated[
        bool,
        typer.Option(
            "--bootstrap",
            help="bare hosts: run the provider bootstrap too (the `provider` host data), behind the model downloads",
        ),
    ] = False,
) -> None:
    """Ship a workflow: analyze, install, update the API, check health, generate once, record.

    Example: comfyfleet ship workflows/txt2img.json --to inventory/lambda.py --env prod
    """
    registry = Registry()
    ctx = prepare_ship(workflow, to, env.value, name, registry)
    if bootstrap:
        ctx.data["bootstrap"] = True
    steps = standard_steps(ctx, registry)
    show_progress()
    out.print(
        f"shipping {ctx.workflow_path} as {ctx.name} ({ctx.environment}) to {ctx.target}: "
        f"{', '.join(ctx.hosts) or 'modal'}"
    )
    try:
        with hold_hosts(ctx.hosts, f"shipping {ctx.name} ({ctx.environment})"), RichReporter(out) as reporter:
            outcome = run_ship(ctx, steps, registry, reporter)
    except HostsBusy as exc:
        err.print(f"ship not started: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    out.print(result_table(outcome.result, f"ship {ctx.name} ({ctx.environment})"))
    failure = outcome.result.failure
    if failure is not None:
        err.print(f"ship failed: {failure}", markup=False, soft_wrap=True)
        err.print(
            "whatever served before this ship is still serving; "
            f"see `comfyfleet deployments history {ctx.name} --env {ctx.environment}`"
        )
        raise typer.Exit(2 if failure.bad_input else 1)
    dep = outcome.deployment
    if dep is not None:
        for e in dep.endpoints:
            out.print(f"[green]serving[/] {e.url}  ({e.host})")
            if e.api_key_file:
                out.print(
                    f"  API key: {e.api_key_file}  (send it as: Authorization: Bearer <key>)", markup=False
                )


def watch(
    refresh: Annotated[
        float, typer.Option("--refresh", min=0.5, help="seconds between registry re-reads")
    ] = 5.0,
) -> None:
    """Run the deployments' schedules (health checks, warmups, runs) until Ctrl-C or SIGTERM.

    Example: comfyfleet deployments schedule add portraits --every 5m && comfyfleet watch
    """
    registry = Registry()

    def on_event(event: RunEvent) -> None:
        s = event.schedule
        label = (
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} {s.action} {s.deployment} ({s.environment})"
        )
        if event.error is not None:
            err.print(f"{label}: crashed: {event.error}", markup=False)
        elif event.outcome is None:
            out.print(f"{label}: skipped (stopped or deleted)")
        elif event.outcome.result.ok:
            out.print(f"{label}: [green]ok[/] in {event.outcome.result.seconds:.2f}s")
        else:
            out.print(f"{label}: [red]failed[/]: {event.outcome.result.failure}")

    watcher = Watcher(registry, refresh_seconds=refresh, on_event=on_event)
    count = watcher.sync()
    out.print(f"watching {count} schedule(s) from {registry.path}; Ctrl-C stops")
    run_watch(watcher, on_signal=lambda sig: out.print(f"{sig}: stopping after running checks finish"))
    out.print("stopped")
