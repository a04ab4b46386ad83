"""A ship that fails after its api step (downloads, health, first generation) puts the endpoint
back as it was before that step.

The decision logic with a recording runner (the runner's own result types; the deploys are not
run here): which note the failure report carries for a workflow served before, never served,
or stopped before, and that nothing is put back on a host without a snapshot. The deploys
themselves run over real SSH against the real comfyui-api in ``test_fleet_ship.py``.
"""

from __future__ import annotations

import pytest

from comfyfleet.facts.serving import served, serving_paths
from comfyfleet.registry import Registry
from comfyfleet.runner import HostResult
from comfyfleet.ship import prepare_ship, run_ship, standard_steps

from .helpers import ApiServer
from .test_ship_steps import EXAMPLES, RecordingRunner, ship_ctx

WORKFLOW = EXAMPLES[0]
NAME = WORKFLOW.stem
DOWNLOAD_FAILED = HostResult(
    "gpu-1",
    "failed",
    "model download failed: checkpoints/v1-5.safetensors: HTTP 404 from huggingface.co",
)


def ship_failing_download(
    api_server: ApiServer,
    registry: Registry,
    before: dict[str, list[str]] | None,
    put_back: HostResult | None,
) -> tuple[str, list[str]]:
    """Ship WORKFLOW with models-wait failing; returns the failure line and the tasks run."""
    ctx = ship_ctx(WORKFLOW, api_server, registry)
    if before is not None:
        ctx.data["endpoint_before"] = before  # what the snapshot deploy records on the host
    fail = {"models-wait": DOWNLOAD_FAILED}
    if put_back is not None:
        fail["put-back-endpoint"] = put_back
    runner = RecordingRunner(fail=fail)
    outcome = run_ship(
        ctx, standard_steps(ctx, registry, run_task=runner, check_tasks=lambda n: None), registry
    )
    assert outcome.result.failure is not None and outcome.result.failure.step == "models"
    # Nothing after the models step ran: no generation, no deployment recorded.
    assert "generate:" + NAME not in api_server.behaviour.calls
    assert registry.find(NAME) is None
    return str(outcome.result.failure), [c[0] for c in runner.calls]


@pytest.mark.parametrize(
    ("files", "note"),
    [
        ([f"workflows/{NAME}.json"], f"put back: /workflows/{NAME} serves the previous definition again"),
        ([], f"taken down: /workflows/{NAME} is not served until its models are in place"),
        (
            [f"stopped/{NAME}.json", f"disabled/{NAME}"],
            f"put back: /workflows/{NAME} is stopped again, as before the ship",
        ),
        # A live file with its stop marker (update-binary re-uploads stopped workflows) is not served.
        (
            [f"workflows/{NAME}.json", f"disabled/{NAME}"],
            f"put back: /workflows/{NAME} is stopped again, as before the ship",
        ),
    ],
    ids=["served-before", "fresh", "stopped-before", "stopped-with-live-file"],
)
def test_failed_download_puts_the_endpoint_back(
    api_server: ApiServer, registry: Registry, files: list[str], note: str
) -> None:
    failure, calls = ship_failing_download(api_server, registry, {"gpu-1": files}, None)
    assert failure == f"step 'models' failed on host gpu-1: models-wait: {DOWNLOAD_FAILED.reason}; {note}"
    assert calls[-2:] == ["models-wait", "put-back-endpoint"]
    assert calls.index("endpoint-snapshot") < calls.index("update-binary")


def test_a_failed_put_back_is_named_beside_the_download_error(
    api_server: ApiServer, registry: Registry
) -> None:
    failure, calls = ship_failing_download(
        api_server,
        registry,
        {"gpu-1": [f"workflows/{NAME}.json"]},
        HostResult("gpu-1", "failed", "comfyui-api health: no answer within 60 s"),
    )
    assert failure == (
        f"step 'models' failed on host gpu-1: models-wait: {DOWNLOAD_FAILED.reason}; "
        f"putting back /workflows/{NAME} failed: comfyui-api health: no answer within 60 s"
    )
    assert calls[-1] == "put-back-endpoint"


@pytest.mark.parametrize(
    ("step", "until"),
    [("health", "a ship passes its health check"), ("generate", "a ship generates with it")],
)
@pytest.mark.parametrize("served_before", [True, False], ids=["served-before", "fresh"])
def test_a_failed_check_puts_the_endpoint_back(
    api_server: ApiServer, registry: Registry, step: str, until: str, served_before: bool
) -> None:
    # The models are in place, but the new definition does not pass its checks on the host:
    # the fleet keeps serving what it served before, not a workflow nobody could verify.
    if step == "health":
        api_server.behaviour.health_status = 500
    else:
        api_server.behaviour.generate_status = 500
    ctx = ship_ctx(WORKFLOW, api_server, registry)
    ctx.data["endpoint_before"] = {"gpu-1": [f"workflows/{NAME}.json"] if served_before else []}
    runner = RecordingRunner(fail={})
    outcome = run_ship(
        ctx, standard_steps(ctx, registry, run_task=runner, check_tasks=lambda n: None), registry
    )
    failure = outcome.result.failure
    assert failure is not None and failure.step == step, failure
    note = (
        f"put back: /workflows/{NAME} serves the previous definition again"
        if served_before
        else f"taken down: /workflows/{NAME} is not served until {until}"
    )
    assert str(failure).endswith(f"; {note}"), str(failure)
    assert [c[0] for c in runner.calls][-2:] == ["models-wait", "put-back-endpoint"]
    assert registry.find(NAME) is None


def test_one_host_failing_puts_the_whole_target_back(api_server: ApiServer, registry: Registry) -> None:
    # gpu-1 generates, gpu-2 does not: the ship is not recorded, so gpu-1 must not stay on a
    # definition the registry and the rest of the target do not have.
    failing = ApiServer()
    failing.behaviour.generate_status = 500
    failing.start()
    try:
        ctx = prepare_ship(
            WORKFLOW,
            "inventory/test.py",
            "dev",
            None,
            registry,
            resolve=lambda target: [
                (h, {"api_port": s.port, "api_url": s.url})
                for h, s in (("gpu-1", api_server), ("gpu-2", failing))
            ],
        )
        ctx.data["endpoint_before"] = {h: [f"workflows/{NAME}.json"] for h in ("gpu-1", "gpu-2")}
        runner = RecordingRunner(fail={})
        outcome = run_ship(
            ctx, standard_steps(ctx, registry, run_task=runner, check_tasks=lambda n: None), registry
        )
    finally:
        failing.stop()
    failure = outcome.result.failure
    assert failure is not None and (failure.step, failure.host) == ("generate", "gpu-2"), failure
    assert api_server.behaviour.calls.get("generate:" + NAME) == 1  # gpu-1 had generated
    task, hosts, _ = runner.calls[-1]
    assert (task, sorted(hosts)) == ("put-back-endpoint", ["gpu-1", "gpu-2"])
    results = {r.host: r for r in outcome.result.results if r.step == "generate"}
    assert results["gpu-1"].ok and results["gpu-1"].error is None
    assert str(failure).endswith(f"; put back: /workflows/{NAME} serves the previous definition again")
    assert registry.find(NAME) is None


def test_no_snapshot_nothing_put_back(api_server: ApiServer, registry: Registry) -> None:
    """A host whose api step never took the snapshot (it is not in the store) is left alone."""
    failure, calls = ship_failing_download(api_server, registry, None, None)
    assert failure == f"step 'models' failed on host gpu-1: models-wait: {DOWNLOAD_FAILED.reason}"
    assert "put-back-endpoint" not in calls


def test_served_reads_live_files_and_the_stop_marker() -> None:
    assert serving_paths("wf") == [
        "workflows/wf.json",
        "workflows/wf.api.yaml",
        "stopped/wf.json",
        "stopped/wf.api.yaml",
        "disabled/wf",
    ]
    assert served(["workflows/wf.api.yaml"], "wf")
    assert not served([], "wf")
    assert not served(["stopped/wf.json"], "wf")
    assert not served(["workflows/wf.json", "disabled/wf"], "wf")
    assert not served(["workflows/other.json"], "wf")
