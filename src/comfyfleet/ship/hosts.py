"""A ship to hosts: the tier tasks through the runner, the install's compensation, the standard steps.

    analyze   strict analysis here; anything unresolved stops the ship before any host
    install   model downloads started (detached on the host), then custom nodes (tiers 2-3;
              ``ship --bootstrap``: the provider bootstrap between the two, for a bare host)
    api       tier 1: the API service with the new workflow (restarted only when it changed)
    models    waits for the downloads to end (every file's progress shown); their error fails the ship
              and puts the endpoint back as it was before the api step (previous definition, or stopped)
    health    /health and /ready on every host, retried while the service starts
    generate  one generation with the workflow's defaults; an output file must arrive
    record    the deployment in the registry

Nothing here stops a running service: the tiers recreate a container only when its spec
changed, a failed install puts back the node packs it added (a pack that keeps ComfyUI from
starting must not take the running workflows down), and the API tier only runs once the
install succeeded, so a failed ship leaves the previous deployment serving.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from comfyfleet import runner
from comfyfleet.deploys.api import fetch_key_deploy
from comfyfleet.deploys.put_back import endpoint_snapshot, nodes_snapshot, park_new_nodes, put_back_endpoint
from comfyfleet.deploys.serving import serving_deploy
from comfyfleet.errors import HostFailure
from comfyfleet.facts.serving import served
from comfyfleet.registry import Registry
from comfyfleet.ship.checks import generate_step, health_step
from comfyfleet.ship.modal import modal_steps
from comfyfleet.ship.pipeline import Backoff, HostOutcomes, Retryable, ShipContext, Step
from comfyfleet.ship.plan import MODAL, AnalyzeFn, HostSpecs, analyze_step
from comfyfleet.ship.record import record_step

# -- host tasks through the runner ----------------------------------------------------

HostTask = str | Callable[[], None]
"""A registered task name, or a pyinfra deploy function."""
TaskRun = Callable[[HostSpecs, HostTask, dict[str, Any]], Any]
"""runner.run(specs, task, data) -> RunResult (hosts[].host/status/reason/ok)."""


TASK_BACKOFF = Backoff(3, 5.0, 2.0, 30.0)
"""Host tasks: retried only when a host was unreachable."""


def _runner_run(specs: HostSpecs, task: HostTask, data: dict[str, Any]) -> Any:
    return runner.run(specs, task, data=data)


def task_step(
    name: str,
    tasks: Sequence[tuple[HostTask, Callable[[ShipContext], dict[str, Any]]]],
    timeout: float,
    backoff: Backoff = TASK_BACKOFF,
    run_task: TaskRun = _runner_run,
    preflight: Callable[[], None] | None = None,
) -> Step:
    """A step running pyinfra tasks on the pending hosts, in order; per-host outcomes.

    An unreachable host is a network error (retried); a failed operation is not
    (its reason names the operation and the line that says why). ``preflight`` runs
    first and may refuse (BadInput) before any host is touched.
    """

    def run(ctx: ShipContext, hosts: Sequence[str]) -> HostOutcomes:
        if preflight is not None:
            preflight()
        specs: HostSpecs = [(n, {**d}) for n, d in ctx.data.get("specs", []) if n in hosts]
        outcomes: dict[str, BaseException | None] = dict.fromkeys(hosts)
        for task, data_for in tasks:
            live = [(n, {**d, **data_for(ctx)}) for n, d in specs if outcomes[n] is None]
            if not live:
                break
            result = run_task(live, task, {})
            label = task if isinstance(task, str) else getattr(task, "__name__", "deploy")
            for hr in result.hosts:
                if hr.ok or hr.host not in outcomes:
                    continue
                reason = f"{label}: {hr.reason or hr.status}"
                if hr.status == "unreachable":
                    outcomes[hr.host] = Retryable(
                        f"{label}: host unreachable: {hr.reason or 'no connection'}"
                    )
                else:
                    outcomes[hr.host] = HostFailure(reason)
        return outcomes

    return Step(name, run, timeout, backoff, inline=True)


def put_back_nodes(run_task: TaskRun) -> Callable[[ShipContext, list[str]], dict[str, str]]:
    """The install step's compensation: park the packs it added, ComfyUI healthy again."""

    def compensate(ctx: ShipContext, hosts: list[str]) -> dict[str, str]:
        before = ctx.data.get("nodes_before") or {}
        specs = [(n, d) for n, d in ctx.data.get("specs", []) if n in hosts and n in before]
        if not specs:
            return {}
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        result = run_task(specs, park_new_nodes(before, stamp), {})
        notes: dict[str, str] = {}
        for hr in result.hosts:
            if hr.ok:
                moved = [c for c in hr.changed if "Park" in c]
                notes[hr.host] = (
                    (
                        "put back: node packs the ship added were moved to "
                        f".comfyfleet/parked-nodes/{stamp}/, ComfyUI answers again"
                    )
                    if moved
                    else "nothing to put back: no node pack was added, ComfyUI answers"
                )
            else:
                notes[hr.host] = f"putting back failed: {hr.reason or hr.status}"
        return notes

    return compensate


def put_back_api(
    run_task: TaskRun, stamp: str, until: str
) -> Callable[[ShipContext, list[str]], dict[str, str]]:
    """The compensation of every step after the api step (models, health, generate): the endpoint
    as before the api step (its serving files kept in ``ctx.data["endpoint_before"]`` by
    :func:`~comfyfleet.deploys.put_back.endpoint_snapshot`); ``until`` ends the taken-down note.

    On every host the api step changed, not only the failed ones: the registry does not record a
    failed ship, so no host may be left serving a definition the rest of the target does not."""

    def compensate(ctx: ShipContext, _failed: list[str]) -> dict[str, str]:
        before: dict[str, list[str]] = ctx.data.get("endpoint_before") or {}
        specs = [(n, d) for n, d in ctx.data.get("specs", []) if n in before]
        if not specs:
            return {}
        result = run_task(specs, put_back_endpoint(ctx.workflow, stamp, before), {})
        path = f"/workflows/{ctx.workflow}"
        notes: dict[str, str] = {}
        for hr in result.hosts:
            files = before.get(hr.host, [])
            if not hr.ok:
                notes[hr.host] = f"putting back {path} failed: {hr.reason or hr.status}"
            elif served(files, ctx.workflow):
                notes[hr.host] = f"put back: {path} serves the previous definition again"
            elif f"disabled/{ctx.workflow}" in files:
                notes[hr.host] = f"put back: {path} is stopped again, as before the ship"
            else:
                notes[hr.host] = f"taken down: {path} is not served until {until}"
        return notes

    return compensate


# -- the standard ship ----------------------------------------------------------------

HOST_TASKS = {
    "install": ("models-start", "install-nodes"),
    "api": ("update-binary",),
    "models": ("models-wait",),
}
"""Tier tasks each host step runs, in order: the model downloads start first (detached on the
host), nodes and the API run meanwhile, and the models step waits for the downloads to end."""
BOOTSTRAP_TASK = "bootstrap"
"""Run after ``models-start`` when ``ctx.data["bootstrap"]`` (``ship --bootstrap``: a bare host)."""


def _workflow_data(ctx: ShipContext) -> dict[str, Any]:
    return {"workflow": str(ctx.workflow_path)}


def check_tasks_available(names: Sequence[str]) -> None:
    """BadInput before any host is touched when a tier task is not in this version."""
    for name in names:
        runner.resolve_task(name)


def standard_steps(
    ctx: ShipContext,
    registry: Registry,
    *,
    analyze: AnalyzeFn | None = None,
    run_task: TaskRun = _runner_run,
    check_tasks: Callable[[Sequence[str]], None] = check_tasks_available,
) -> list[Step]:
    """analyze → install (tiers 2-3) → api (tier 1) → models → health → generate → record."""
    if ctx.target == MODAL:
        return modal_steps(ctx, registry, analyze=analyze)
    every_task = [t for group in HOST_TASKS.values() for t in group]
    before: dict[str, list[str]] = ctx.data.setdefault("nodes_before", {})
    endpoint_before: dict[str, list[str]] = ctx.data.setdefault("endpoint_before", {})
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    start, *rest = HOST_TASKS["install"]
    bootstrap = [(BOOTSTRAP_TASK, _workflow_data)] if ctx.data.get("bootstrap") else []
    install = task_step(
        "install",
        [
            (start, _workflow_data),
            *bootstrap,
            (nodes_snapshot(before), _workflow_data),
            *((t, _workflow_data) for t in rest),
        ],
        # Model bytes dominate; the budget is for a large checkpoint on a slow link. All tier
        # tasks are checked before the first one runs, so a missing one touches no host.
        timeout=3 * 3600,
        run_task=run_task,
        preflight=lambda: check_tasks(every_task),
    )
    return [
        analyze_step(analyze),
        # A pack that keeps ComfyUI from starting must not take the running workflows down with it.
        replace(install, on_failure=put_back_nodes(run_task)),
        task_step(
            "api",
            [
                # What the endpoint was, for the models step to put back should the downloads fail.
                (endpoint_snapshot(ctx.workflow, stamp, endpoint_before), _workflow_data),
                *((t, _workflow_data) for t in HOST_TASKS["api"]),
                # A ship serves the workflow even if it had been stopped before.
                (serving_deploy(ctx.workflow, True), _workflow_data),
                # A key the host generated comes to this machine for the checks and for the user.
                (fetch_key_deploy(ctx.data.get("fetched_key_files") or {}), _workflow_data),
            ],
            timeout=600,
            run_task=run_task,
        ),
        # The downloads started by the install step; the API and health never needed them.
        # A ship that fails from here on (a download, the health check, the first generation)
        # must not leave its new definition serving: the endpoint goes back to what it was.
        replace(
            task_step(
                "models", [(t, _workflow_data) for t in HOST_TASKS["models"]], 3 * 3600, run_task=run_task
            ),
            on_failure=put_back_api(run_task, stamp, "its models are in place"),
        ),
        replace(health_step(), on_failure=put_back_api(run_task, stamp, "a ship passes its health check")),
        replace(generate_step(), on_failure=put_back_api(run_task, stamp, "a ship generates with it")),
        record_step(registry),
    ]
