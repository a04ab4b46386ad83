"""Recurring health checks, warmups and workflow runs of deployments (`comfyfleet watch`).

Schedules live in the registry (``comfyfleet deployments schedule add``); ``watch``
runs them with APScheduler, re-reading the registry every few seconds so schedules
added or removed meanwhile take effect without a restart. Each run goes through the
same step pipeline as ``ship`` and lands in the deployment's history. A failed check
turns the deployment to ``error``; a passing one turns an ``error`` deployment back
to ``active``. Stopped (``inactive``) deployments are not checked.

Actions:

    health   GET /health and /ready on every host of the deployment
    warmup   health, then one generation with the workflow's defaults (loads the models)
    run      health, then one generation whose output files are fetched and checked
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from comfyfleet.errors import BadInput
from comfyfleet.registry import Deployment, Registry, Schedule
from comfyfleet.ship import (
    API_KEY_ENV,
    Backoff,
    ShipContext,
    ShipOutcome,
    Step,
    api_client,
    check_generation,
    count_generation,
    each_host,
    health_step,
    judged,
    run_ship,
)
from comfyfleet.tunnel import SshRoute

_EVERY = re.compile(r"^\s*(\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> int:
    """Seconds from an interval such as "30s", "5m", "2h", "1d" or a bare number of seconds."""
    match = _EVERY.match(text or "")
    if not match or int(match.group(1)) <= 0:
        raise BadInput(f"interval {text!r} is not valid: write e.g. 30s, 5m, 2h or 1d")
    return int(match.group(1)) * _UNIT[(match.group(2) or "s")[0]]


def cron_trigger(expression: str) -> CronTrigger:
    """An APScheduler trigger from a five-field crontab line (UTC); BadInput when invalid."""
    try:
        return CronTrigger.from_crontab(expression, timezone=timezone.utc)
    except ValueError as exc:
        raise BadInput(
            f"cron expression {expression!r} is not valid ({exc}): write five fields, "
            "e.g. '*/5 * * * *' for every five minutes (times are UTC)"
        ) from None


def trigger_for(schedule: Schedule) -> BaseTrigger:
    """The APScheduler trigger of a stored schedule."""
    if schedule.cron is not None:
        return cron_trigger(schedule.cron)
    return IntervalTrigger(seconds=schedule.interval_seconds or 60, timezone=timezone.utc)


def add_schedule(
    registry: Registry,
    deployment: Deployment,
    action: str,
    *,
    cron: str | None = None,
    every: str | None = None,
) -> Schedule:
    """Validate and store a schedule for a deployment."""
    if (cron is None) == (every is None):
        raise BadInput("give exactly one of --cron '*/5 * * * *' or --every 5m")
    if cron is not None:
        cron_trigger(cron)
    seconds = parse_every(every) if every is not None else None
    return registry.add_schedule(deployment.id, action, cron=cron, interval_seconds=seconds)


# -- one scheduled run ----------------------------------------------------------------


def check_warmup(ctx: ShipContext, host: str) -> None:
    """One generation with the workflow's defaults; its outputs are not downloaded."""
    with api_client(ctx, host, 600) as api:
        judged(f"POST /workflows/{ctx.workflow}", lambda: api.run(ctx.workflow, timeout=ctx.remaining()))
    count_generation(ctx)


def action_steps(action: str) -> list[Step]:
    """The pipeline steps of a scheduled action."""
    health = health_step(timeout=60, attempts=3)
    if action == "health":
        return [health]
    if action == "warmup":
        return [health, Step("warmup", each_host(check_warmup), 600, Backoff(2, 2.0))]
    if action == "run":
        return [health, Step("generate", each_host(check_generation), 600, Backoff(2, 2.0))]
    raise BadInput(f"unknown schedule action {action!r}: use health, warmup or run")


def context_for(deployment: Deployment, api_key: str | None = None) -> ShipContext:
    """A pipeline context that addresses the hosts a deployment was shipped to.

    API keys are read from the key files the ship recorded per host (``api_keys_file`` in
    the host's data), else ``api_key`` / $COMFYFLEET_API_KEY; the registry never stores keys.
    The inventory is not loaded here: the endpoints recorded at ship time are what is
    checked, through the SSH route recorded with each (:mod:`comfyfleet.tunnel`), so a
    check needs no inventory file and the key never crosses plain HTTP off the host.
    """
    ctx = ShipContext(
        workflow_path=Path(deployment.workflow_path),
        name=deployment.name,
        environment=deployment.environment,
        target=deployment.target,
        hosts=[e.host for e in deployment.endpoints],
        endpoints={e.host: api_base(e.url) for e in deployment.endpoints},
    )
    ctx.data["manifest_hash"] = deployment.manifest_hash
    key = api_key or os.environ.get(API_KEY_ENV)
    if key:
        ctx.data["api_key"] = key
    ctx.data["api_key_files"] = {e.host: e.api_key_file for e in deployment.endpoints if e.api_key_file}
    ctx.data["ssh_routes"] = {
        e.host: SshRoute.from_record(e.host, e.ssh) for e in deployment.endpoints if e.ssh
    }
    return ctx


def api_base(endpoint_url: str) -> str:
    """The API service's base URL from a workflow endpoint URL (…/workflows/NAME)."""
    return endpoint_url.rsplit("/workflows/", 1)[0]


StepsFor = Callable[[str], Sequence[Step]]


def run_scheduled(
    registry: Registry,
    deployment_id: int,
    action: str,
    *,
    steps_for: StepsFor = action_steps,
    trigger: str = "schedule",
    kind: str | None = None,
    api_key: str | None = None,
) -> ShipOutcome | None:
    """Run one action on a deployment, record it (as ``kind``, default the action), update its status.

    Returns None when the deployment is gone or stopped (nothing is run or recorded).
    """
    deployment = registry.by_id(deployment_id)
    if deployment is None or deployment.status == "inactive":
        return None
    ctx = context_for(deployment, api_key)
    outcome = run_ship(ctx, steps_for(action), registry, kind=kind or action, trigger=trigger)
    result = outcome.result
    generations = int(ctx.data.get("generations", 0))
    failed_generation = result.failure is not None and result.failure.step in ("warmup", "generate")
    if generations or failed_generation:
        registry.count_executions(
            deployment.id,
            executions=generations + int(failed_generation and not generations),
            errors=int(failed_generation),
        )
    if result.failure is not None:
        registry.set_status(deployment.id, "error", error=str(result.failure), only_from=("active", "error"))
    else:
        registry.set_status(deployment.id, "active", only_from=("error",))
    return outcome


# -- the long-running watcher ----------------------------------------------------------


@dataclass(frozen=True)
class RunEvent:
    """What the watcher tells its caller after each scheduled run."""

    schedule: Schedule
    outcome: ShipOutcome | None
    error: str | None = None


RunFn = Callable[[Registry, int, str], "ShipOutcome | None"]


class Watcher:
    """Runs every schedule in the registry until told to stop."""

    def __init__(
        self,
        registry: Registry,
        *,
        run: RunFn | None = None,
        refresh_seconds: float = 5.0,
        on_event: Callable[[RunEvent], None] | None = None,
    ) -> None:
        self.registry = registry
        self.refresh_seconds = refresh_seconds
        self._run: RunFn = run or (lambda reg, dep_id, action: run_scheduled(reg, dep_id, action))
        self._on_event = on_event or (lambda event: None)
        self.scheduler = BackgroundScheduler(
            timezone=timezone.utc,
            # One run per schedule at a time; runs missed while one was busy collapse into one.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )
        self._specs: dict[str, tuple[Any, ...]] = {}

    def sync(self) -> int:
        """Make the scheduler's jobs match the registry's schedules; return how many there are."""
        wanted = {f"schedule-{s.id}": s for s in self.registry.schedules()}
        for job_id in list(self._specs):
            if job_id not in wanted:
                self.scheduler.remove_job(job_id)
                del self._specs[job_id]
        for job_id, schedule in wanted.items():
            spec = (schedule.deployment_id, schedule.action, schedule.cron, schedule.interval_seconds)
            if self._specs.get(job_id) == spec:
                continue
            if job_id in self._specs:
                self.scheduler.remove_job(job_id)
            self.scheduler.add_job(
                self._fire,
                trigger_for(schedule),
                args=[schedule],
                id=job_id,
                name=f"{schedule.action} {schedule.deployment} ({schedule.environment})",
            )
            self._specs[job_id] = spec
        return len(wanted)

    def _fire(self, schedule: Schedule) -> None:
        try:
            outcome = self._run(self.registry, schedule.deployment_id, schedule.action)
        except Exception as exc:  # a run must never kill the scheduler thread
            self._on_event(RunEvent(schedule, None, f"{type(exc).__name__}: {exc}"))
            return
        self._on_event(RunEvent(schedule, outcome))

    def run(self, stop: threading.Event) -> None:
        """Run schedules until ``stop`` is set, then wait for running checks to finish."""
        self.sync()
        self.scheduler.start()
        try:
            while not stop.wait(self.refresh_seconds):
                self.sync()
        finally:
            self.scheduler.shutdown(wait=True)


def watch(watcher: Watcher, on_signal: Callable[[str], None] | None = None) -> None:
    """Run a watcher in the foreground until SIGINT or SIGTERM, then shut down cleanly."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        if on_signal is not None:
            on_signal(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        watcher.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
