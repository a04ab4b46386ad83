"""The standard ship wired end to end here: real analysis of the example workflows, the real
runner's result types for the host tasks (recorded, not run: the fleet tests run them over
SSH), a real HTTP API, a real registry."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.errors import BadInput
from comfyfleet.registry import Endpoint, Registry
from comfyfleet.runner import HostResult, RunResult
from comfyfleet.ship import (
    HOST_TASKS,
    ShipContext,
    api_base_for,
    prepare_ship,
    run_ship,
    standard_steps,
)

from .helpers import ApiServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "workflows").glob("*.json"))


class RecordingRunner:
    """Stands in for runner.run on the host steps; answers with the runner's own result types."""

    def __init__(self, fail: dict[str, HostResult] | None = None) -> None:
        self.calls: list[tuple[str, list[str], dict[str, Any]]] = []
        self.fail = fail or {}

    def __call__(self, specs: list[tuple[str, dict[str, Any]]], task: Any, data: dict[str, Any]) -> RunResult:
        task = task if isinstance(task, str) else task.__name__
        self.calls.append((task, [n for n, _ in specs], specs[0][1]))
        if task in self.fail:
            return RunResult(task, [self.fail[task]])
        changed = ["Park node packs the ship added"] if task == "put-back-nodes" else []
        return RunResult(
            task, [HostResult(n, "changed" if changed else "no change", changed=changed) for n, _ in specs]
        )


def ship_ctx(workflow: Path, server: ApiServer, registry: Registry, name: str | None = None) -> ShipContext:
    return prepare_ship(
        workflow,
        "inventory/test.py",
        "dev",
        name,
        registry,
        # api_url on loopback: the checks call the test API directly (hosts are otherwise reached
        # through SSH, tests/security/test_secrets.py).
        resolve=lambda target: [("gpu-1", {"api_port": server.port, "api_url": server.url})],
    )


@pytest.mark.parametrize("workflow", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_ships_through_all_steps(
    workflow: Path, api_server: ApiServer, registry: Registry
) -> None:
    ctx = ship_ctx(workflow, api_server, registry)
    runner = RecordingRunner()
    steps = standard_steps(ctx, registry, run_task=runner, check_tasks=lambda names: None)
    assert [s.name for s in steps] == ["analyze", "install", "api", "models", "health", "generate", "record"]
    outcome = run_ship(ctx, steps, registry)
    assert outcome.result.ok, outcome.result.failure
    # The downloads start first (detached on the host), are waited for only before the checks.
    assert [c[0] for c in runner.calls] == [
        "models-start",
        "nodes-snapshot",
        "install-nodes",
        "endpoint-snapshot",
        *HOST_TASKS["api"],
        f"serve-{workflow.stem}",
        "fetch-api-key",
        "models-wait",
    ]
    for _task, hosts, data in runner.calls:
        assert hosts == ["gpu-1"]
        assert data["workflow"] == str(workflow) and data["workflows_dir"] == str(workflow.parent)
    assert api_server.behaviour.calls[f"generate:{workflow.stem}"] == 1
    dep = registry.get(workflow.stem, "dev")
    assert dep.endpoint_url == f"http://127.0.0.1:{api_server.port}/workflows/{workflow.stem}"
    assert dep.manifest_hash == ctx.manifest.digest()
    hist = registry.history(workflow.stem, "dev")[0]
    assert [s.step for s in hist.steps] == [
        "analyze",
        "install",
        "api",
        "models",
        "health",
        "generate",
        "record",
    ]


def test_failed_install_names_the_host_and_operation_and_stops(
    api_server: ApiServer, registry: Registry
) -> None:
    ctx = ship_ctx(EXAMPLES[0], api_server, registry)
    ctx.data["nodes_before"] = {"gpu-1": ["ComfyUI-Manager"]}  # what the snapshot deploy records
    runner = RecordingRunner(
        fail={
            "install-nodes": HostResult(
                "gpu-1",
                "failed",
                "Verify node classes: IMPORT FAILED: ComfyUI-KJNodes (No module named 'kornia')",
            )
        }
    )
    outcome = run_ship(
        ctx, standard_steps(ctx, registry, run_task=runner, check_tasks=lambda n: None), registry
    )
    failure = outcome.result.failure
    assert failure is not None
    assert str(failure).startswith(
        "step 'install' failed on host gpu-1: install-nodes: Verify node classes: "
        "IMPORT FAILED: ComfyUI-KJNodes (No module named 'kornia'); put back: node packs "
        "the ship added were moved to .comfyfleet/parked-nodes/"
    )
    assert str(failure).endswith(", ComfyUI answers again")
    # The API untouched (the downloads had started); the packs the ship added are put back.
    assert [c[0] for c in runner.calls] == [
        "models-start",
        "nodes-snapshot",
        "install-nodes",
        "put-back-nodes",
    ]
    assert api_server.behaviour.calls == {}
    assert registry.find(EXAMPLES[0].stem) is None


def test_unreachable_host_is_retried_then_reported(api_server: ApiServer, registry: Registry) -> None:
    ctx = ship_ctx(EXAMPLES[0], api_server, registry)
    runner = RecordingRunner(fail={"install-nodes": HostResult("gpu-1", "unreachable", "Connection refused")})
    steps = standard_steps(ctx, registry, run_task=runner, check_tasks=lambda n: None)
    steps[1] = type(steps[1])(steps[1].name, steps[1].run, 10, type(steps[1].backoff)(3, 0.01), inline=True)
    outcome = run_ship(ctx, steps, registry)
    # A retry starts the downloads again: on the host that attaches to the running job.
    assert [c[0] for c in runner.calls] == ["models-start", "nodes-snapshot", "install-nodes"] * 3
    assert outcome.result.failure is not None
    assert "host unreachable: Connection refused (after 3 attempts)" in outcome.result.failure.cause


def test_missing_tier_task_is_bad_input_before_any_host_is_touched(
    api_server: ApiServer, registry: Registry
) -> None:
    ctx = ship_ctx(EXAMPLES[0], api_server, registry)

    def check(names: list[str]) -> None:
        raise BadInput("task 'download-models' is not available in this version (available: install-nodes)")

    runner = RecordingRunner()
    outcome = run_ship(ctx, standard_steps(ctx, registry, run_task=runner, check_tasks=check), registry)
    failure = outcome.result.failure
    assert failure is not None and failure.bad_input and failure.step == "install"
    assert "task 'download-models' is not available" in failure.cause
    assert runner.calls == [] and outcome.result.results[1].attempts == 1


def test_prepare_refuses_what_cannot_work(tmp_path: Path, api_server: ApiServer, registry: Registry) -> None:
    with pytest.raises(BadInput, match="workflow file not found"):
        ship_ctx(tmp_path / "nope.json", api_server, registry)
    wf = tmp_path / "txt2img.json"
    shutil.copy(EXAMPLES[0], wf)
    with pytest.raises(BadInput, match="deployment name 'bad name' is not valid"):
        ship_ctx(wf, api_server, registry, name="bad name")
    registry.upsert_deployment(
        name="portraits",
        environment="dev",
        workflow="upscale",
        workflow_path="u.json",
        manifest_hash="h",
        target="inventory/test.py",
        endpoints=[Endpoint("h", "u")],
    )
    with pytest.raises(BadInput, match="serves workflow upscale, not txt2img: pass another --name"):
        ship_ctx(wf, api_server, registry, name="portraits")
    registry.upsert_deployment(
        name="t2i",
        environment="dev",
        workflow="txt2img",
        workflow_path="w.json",
        manifest_hash="h",
        target="10.0.0.9",
        endpoints=[Endpoint("h", "u")],
    )
    with pytest.raises(BadInput, match="runs on 10.0.0.9, not inventory/test.py"):
        ship_ctx(wf, api_server, registry, name="t2i")


def test_api_base_for_hosts() -> None:
    assert api_base_for("gpu-1", {"ssh_hostname": "203.0.113.7"}) == "http://203.0.113.7:3000"
    assert api_base_for("198.51.100.2", {"api_port": 8080}) == "http://198.51.100.2:8080"
    assert api_base_for("h", {"api_url": "https://gpu.example.org/"}) == "https://gpu.example.org"
    assert api_base_for("::1", {}) == "http://[::1]:3000"
    with pytest.raises(BadInput, match="host h: api_url must start with http"):
        api_base_for("h", {"api_url": "gpu.example.org"})
    with pytest.raises(BadInput, match="host h: api_port"):
        api_base_for("h", {"api_port": 99999})


def test_api_key_from_the_hosts_key_file_reaches_the_api_and_never_the_registry(
    tmp_path: Path, api_server: ApiServer, registry: Registry
) -> None:
    key = "k-" + "7" * 30
    key_file = tmp_path / "api-keys"
    key_file.write_text(f"# operator keys\n{key}\n")
    api_server.behaviour.required_key = key
    ctx = prepare_ship(
        EXAMPLES[0],
        "inventory/test.py",
        "dev",
        None,
        registry,
        resolve=lambda t: [
            (
                "gpu-1",
                {"api_port": api_server.port, "api_url": api_server.url, "api_keys_file": str(key_file)},
            )
        ],
    )
    outcome = run_ship(
        ctx, standard_steps(ctx, registry, run_task=RecordingRunner(), check_tasks=lambda n: None), registry
    )
    assert outcome.result.ok, outcome.result.failure
    assert set(api_server.behaviour.auth) == {f"Bearer {key}"}
    dep = registry.get(EXAMPLES[0].stem)
    assert dep.endpoints[0].api_key_file == str(key_file.resolve())
    raw = b"".join(p.read_bytes() for p in registry.path.parent.glob("deployments.sqlite3*"))
    assert key.encode() not in raw

    # A scheduled check reads the file again: a rotated key is used, a wrong one named.
    from comfyfleet.schedules import run_scheduled

    key_file.write_text("wrong-key-0000000000000000\n")
    failed = run_scheduled(registry, dep.id, "health")
    assert failed is not None and failed.result.failure is not None
    assert "answered 401: no valid API key; set api_keys_file" in failed.result.failure.cause
    key_file.unlink()
    missing = run_scheduled(registry, dep.id, "health")
    assert missing is not None and missing.result.failure is not None
    assert missing.result.failure.cause.startswith("host gpu-1: api_keys_file")


def test_missing_key_file_stops_the_ship_before_any_host(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(BadInput, match="host gpu-1: api_keys_file .*nope"):
        prepare_ship(
            EXAMPLES[0],
            "inventory/test.py",
            "dev",
            None,
            registry,
            resolve=lambda t: [("gpu-1", {"api_keys_file": str(tmp_path / "nope")})],
        )


def test_a_workflow_outside_the_hosts_served_folder_is_refused(tmp_path: Path, registry: Registry) -> None:
    served = tmp_path / "served"
    served.mkdir()
    elsewhere = tmp_path / "elsewhere.json"
    shutil.copy(EXAMPLES[0], elsewhere)
    with pytest.raises(
        BadInput,
        match=r"host gpu-1 serves the workflows in .*served \(workflows_dir\), and "
        r".*elsewhere.json is not there: copy it into",
    ):
        prepare_ship(
            elsewhere,
            "inventory/test.py",
            "dev",
            None,
            registry,
            resolve=lambda t: [("gpu-1", {"workflows_dir": str(served)})],
        )
    inside = served / "inside.json"
    shutil.copy(EXAMPLES[0], inside)
    ctx = prepare_ship(
        inside,
        "inventory/test.py",
        "dev",
        None,
        registry,
        resolve=lambda t: [("gpu-1", {"workflows_dir": str(served)})],
    )
    assert ctx.data["specs"][0][1]["workflows_dir"] == str(served)
