"""Recording a ship: the deployment as active in the registry, every run (with its steps) in the history."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from comfyfleet.registry import Deployment, Endpoint, Registry, utcnow
from comfyfleet.ship.checks import usable_key_files
from comfyfleet.ship.pipeline import PipelineResult, Reporter, ShipContext, Step, here, run_pipeline


def record_run(
    registry: Registry,
    ctx: ShipContext,
    result: PipelineResult,
    *,
    kind: str,
    trigger: str,
    started_at: str,
) -> int:
    """Write one pipeline run (with per-step timings) into the registry's history."""
    summary = "ok" if result.ok else str(result.failure)
    return registry.record_history(
        name=ctx.name,
        environment=ctx.environment,
        kind=kind,
        trigger=trigger,
        started_at=started_at,
        ok=result.ok,
        summary=summary,
        manifest_hash=ctx.manifest.digest() if ctx.manifest is not None else ctx.data.get("manifest_hash"),
        steps=[r.record() for r in result.results if not r.skipped],
    )


def record_step(registry: Registry) -> Step:
    """The last step: the deployment goes into the registry as active, serving this manifest."""

    def record(ctx: ShipContext) -> None:
        if ctx.manifest is None:
            raise RuntimeError("nothing to record: the analyze step did not produce a manifest")
        key_files = usable_key_files(ctx)
        routes = ctx.data.get("ssh_routes") or {}
        endpoints = [
            Endpoint(
                h,
                workflow_url(ctx.endpoints[h], ctx.workflow),
                key_files.get(h),
                routes[h].record() if h in routes else None,
            )
            for h in ctx.hosts
        ]
        ctx.deployment = registry.upsert_deployment(
            name=ctx.name,
            environment=ctx.environment,
            workflow=ctx.workflow,
            workflow_path=str(ctx.workflow_path),
            manifest_hash=ctx.manifest.digest(),
            target=ctx.target,
            endpoints=endpoints,
        )
        runs = int(ctx.data.get("generations", 0))
        if runs:
            registry.count_executions(ctx.deployment.id, executions=runs, errors=0)

    return Step("record", here(record), timeout=30, local=True)


def workflow_url(base: str, workflow: str) -> str:
    """The endpoint URL of one workflow on one API service."""
    return f"{base.rstrip('/')}/workflows/{workflow}"


@dataclass
class ShipOutcome:
    """What `comfyfleet ship` reports: the pipeline result, the history id, the deployment."""

    result: PipelineResult
    history_id: int
    deployment: Deployment | None


def run_ship(
    ctx: ShipContext,
    steps: Sequence[Step],
    registry: Registry,
    reporter: Reporter | None = None,
    *,
    kind: str = "ship",
    trigger: str = "cli",
    sleep: Callable[[float], None] = time.sleep,
) -> ShipOutcome:
    """Run a ship's steps and record the run in the history, whatever its outcome."""
    started_at = utcnow()
    result = run_pipeline(steps, ctx, reporter, sleep)
    history_id = record_run(registry, ctx, result, kind=kind, trigger=trigger, started_at=started_at)
    return ShipOutcome(result, history_id, ctx.deployment if result.ok else None)
