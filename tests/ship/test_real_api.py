"""Ship's checks against the real comfyui-api in front of the ComfyUI stand-in (processes on loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from comfyui_api.client import ApiClient

from comfyfleet.registry import Endpoint, Registry
from comfyfleet.schedules import run_scheduled
from comfyfleet.ship import (
    LOCAL,
    Backoff,
    ShipContext,
    Step,
    analyze_step,
    generate_step,
    health_step,
    record_step,
    run_pipeline,
    run_ship,
)

from .real_api import ROOT, RealApi

EXAMPLES = sorted((ROOT / "workflows").glob("*.json"))


def _missing_model_workflow() -> str:
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = "absent.safetensors"
    return json.dumps(graph)


@pytest.fixture(scope="module")
def real_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealApi]:
    api = RealApi(tmp_path_factory.mktemp("real-api"), {"needs_absent.json": _missing_model_workflow()})
    api.start()
    try:
        yield api
    finally:
        api.stop()


def ctx_for(api: RealApi, workflow: str, name: str | None = None) -> ShipContext:
    return ShipContext(
        workflow_path=ROOT / "workflows" / f"{workflow}.json",
        name=name or workflow,
        environment="dev",
        target="inventory/test.py",
        hosts=["gpu-1"],
        endpoints={"gpu-1": api.url},
    )


@pytest.mark.parametrize("workflow", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_is_checked_generated_and_recorded(
    workflow: Path, real_api: RealApi, registry: Registry
) -> None:
    ctx = ctx_for(real_api, workflow.stem)
    steps = [analyze_step(), health_step(timeout=60), generate_step(timeout=120), record_step(registry)]
    outcome = run_ship(ctx, steps, registry)
    assert outcome.result.ok, outcome.result.failure
    ((filename, size),) = ctx.data["outputs"]["gpu-1"]
    assert filename.endswith(".png") and size > 8
    dep = registry.get(workflow.stem, "dev")
    assert dep.status == "active" and dep.execution_count == 1
    assert dep.endpoint_url == f"{real_api.url}/workflows/{workflow.stem}"
    assert [(s.step, s.host) for s in registry.history(workflow.stem, "dev")[0].steps] == [
        ("analyze", LOCAL),
        ("health", "gpu-1"),
        ("generate", "gpu-1"),
        ("record", LOCAL),
    ]


def test_the_output_file_is_a_real_png(real_api: RealApi) -> None:
    with ApiClient(real_api.url) as api:
        (output,) = api.run("txt2img", timeout=60).outputs
        data = api.download(output)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")


def test_a_missing_model_fails_health_for_that_workflow_only(real_api: RealApi) -> None:
    # /ready answers 503 for the whole service (needs_absent lacks its checkpoint), yet the
    # examples are ready; the workflow with the missing file fails at once, naming it.
    ok = run_pipeline([health_step(timeout=30)], ctx_for(real_api, "txt2img"))
    assert ok.ok, ok.failure
    calls: list[float] = []
    bad = run_pipeline(
        [Step("health", health_step().run, 30, Backoff(5, 0.01))],
        ctx_for(real_api, "needs_absent"),
        sleep=calls.append,
    )
    assert bad.failure is not None
    assert bad.failure.cause == "GET /ready: models missing for needs_absent: absent.safetensors (node 4)"
    assert calls == []  # not retried: waiting does not bring a file


def test_an_unknown_workflow_is_retried_then_reported(real_api: RealApi) -> None:
    result = run_pipeline(
        [Step("health", health_step().run, 30, Backoff(2, 0.01))],
        ctx_for(real_api, "not_uploaded"),
        sleep=lambda s: None,
    )
    assert result.failure is not None
    assert "workflow not_uploaded not loaded yet (after 2 attempts)" in result.failure.cause


def test_scheduled_run_against_the_real_api_records(real_api: RealApi, registry: Registry) -> None:
    dep = registry.upsert_deployment(
        name="t2i",
        environment="prod",
        workflow="txt2img",
        workflow_path="workflows/txt2img.json",
        manifest_hash="e" * 64,
        target="inventory/test.py",
        endpoints=[Endpoint("gpu-1", f"{real_api.url}/workflows/txt2img")],
    )
    outcome = run_scheduled(registry, dep.id, "run")
    assert outcome is not None and outcome.result.ok, outcome and outcome.result.failure
    entry = registry.history("t2i", "prod")[0]
    assert (entry.kind, entry.trigger, [s.step for s in entry.steps]) == (
        "run",
        "schedule",
        ["health", "generate"],
    )
    assert registry.get("t2i").execution_count == 1
