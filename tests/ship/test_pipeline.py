"""The ship pipeline's logic with injected steps, a real registry and a real HTTP API."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from comfyfleet.errors import BadInput, HostFailure
from comfyfleet.registry import Registry
from comfyfleet.ship import (
    LOCAL,
    Backoff,
    HostOutcomes,
    Retryable,
    ShipContext,
    Step,
    analyze_step,
    each_host,
    generate_step,
    health_step,
    here,
    record_step,
    run_pipeline,
    run_ship,
)

from .helpers import ApiServer, manifest_for


def ctx_for(servers: dict[str, str], name: str = "portraits") -> ShipContext:
    return ShipContext(
        workflow_path=Path("workflows/txt2img.json"),
        name=name,
        environment="dev",
        target="inventory/test.py",
        hosts=list(servers),
        endpoints=dict(servers),
    )


def analyzed(manifest=None) -> Step:
    return analyze_step(lambda path: manifest or manifest_for(path.stem))


class Sleeps:
    """Records backoff delays instead of sleeping them (keeps tests fast and exact)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def test_full_ship_against_real_http_records_deployment_and_timings(
    api_server: ApiServer, registry: Registry
) -> None:
    ctx = ctx_for({"gpu-1": api_server.url})
    steps = [analyzed(), health_step(timeout=10), generate_step(timeout=10), record_step(registry)]
    outcome = run_ship(ctx, steps, registry)
    assert outcome.result.ok, outcome.result.failure
    assert [(r.step, r.host) for r in outcome.result.results] == [
        ("analyze", LOCAL),
        ("health", "gpu-1"),
        ("generate", "gpu-1"),
        ("record", LOCAL),
    ]
    assert api_server.behaviour.calls["generate:txt2img"] == 1
    assert api_server.behaviour.bodies == [{"outputs": "url"}]  # no input: the workflow's defaults
    assert api_server.behaviour.calls["files"] == 1  # the output file was fetched
    assert ctx.data["outputs"]["gpu-1"][0][1] > 8
    dep = registry.get("portraits", "dev")
    assert dep.status == "active"
    assert dep.endpoint_url == f"{api_server.url}/workflows/txt2img"
    assert dep.manifest_hash == manifest_for().digest()
    assert dep.execution_count == 1
    (entry,) = registry.history("portraits", "dev")
    assert entry.ok and entry.kind == "ship" and entry.manifest_hash == dep.manifest_hash
    assert [s.step for s in entry.steps] == ["analyze", "health", "generate", "record"]
    assert all(s.seconds >= 0 and s.attempts == 1 for s in entry.steps)


def test_startup_errors_are_retried_until_the_service_listens(
    late_api_server: ApiServer, registry: Registry
) -> None:
    late_api_server.start(delay=1.2)  # connection refused until then
    ctx = ctx_for({"gpu-1": late_api_server.url})
    started = time.monotonic()
    step = Step("health", health_step().run, timeout=15, backoff=Backoff(10, 0.2, 2.0, 1.0))
    result = run_pipeline([step], ctx)
    assert result.ok, result.failure
    (res,) = result.results
    assert res.attempts >= 2
    assert 1.0 < time.monotonic() - started < 10


def test_ready_503_backs_off_exponentially(api_server: ApiServer) -> None:
    api_server.behaviour.ready_503_times = 3
    sleeps = Sleeps()
    step = Step("health", health_step().run, timeout=30, backoff=Backoff(5, 1.0, 2.0, 3.0))
    result = run_pipeline([step], ctx_for({"gpu-1": api_server.url}), sleep=sleeps)
    assert result.ok
    assert result.results[0].attempts == 4
    assert sleeps.delays == [1.0, 2.0, 3.0]  # doubled, capped at max_delay


def test_retries_stop_at_attempts_and_name_the_cause(api_server: ApiServer, registry: Registry) -> None:
    api_server.behaviour.ready_503_times = 100
    ctx = ctx_for({"gpu-1": api_server.url})
    steps = [analyzed(), Step("health", health_step().run, 30, Backoff(3, 0.01)), record_step(registry)]
    outcome = run_ship(ctx, steps, registry, sleep=Sleeps())
    failure = outcome.result.failure
    assert failure is not None
    assert (failure.step, failure.host) == ("health", "gpu-1")
    assert "GET /ready answered 503" in failure.cause and "ComfyUI is starting" in failure.cause
    assert "(after 3 attempts)" in failure.cause
    assert api_server.behaviour.calls["ready"] == 3
    assert registry.find("portraits") is None  # nothing recorded as deployed
    (entry,) = registry.history("portraits", "dev")
    assert not entry.ok and "step 'health' failed on host gpu-1" in entry.summary
    assert [s.step for s in entry.steps] == ["analyze", "health"]  # the skipped record is not history


def test_bad_input_is_never_retried() -> None:
    calls: list[int] = []

    def bad(ctx: ShipContext, host: str) -> None:
        calls.append(1)
        raise BadInput("workflows/x.json: node 7: unsafe model name")

    result = run_pipeline(
        [Step("install", each_host(bad), 10, Backoff(5, 0.01))],
        ctx_for({"gpu-1": "http://127.0.0.1:9"}),
        sleep=Sleeps(),
    )
    assert len(calls) == 1
    assert result.failure is not None and result.failure.bad_input
    assert result.failure.cause == "workflows/x.json: node 7: unsafe model name"


def test_host_failures_other_than_network_are_not_retried(api_server: ApiServer) -> None:
    api_server.behaviour.generate_status = 500
    result = run_pipeline([generate_step(timeout=10)], ctx_for({"gpu-1": api_server.url}), sleep=Sleeps())
    assert api_server.behaviour.calls["generate:txt2img"] == 1
    assert result.failure is not None
    assert result.failure.cause.startswith("POST /workflows/txt2img answered 500")
    assert "execution_error in node 3" in result.failure.cause


def test_generation_without_output_file_fails(api_server: ApiServer) -> None:
    api_server.behaviour.generate_outputs = []
    result = run_pipeline([generate_step(timeout=10)], ctx_for({"gpu-1": api_server.url}))
    assert result.failure is not None
    assert "returned no output file" in result.failure.cause


def test_step_timeout_is_enforced_and_later_steps_skipped(api_server: ApiServer, registry: Registry) -> None:
    api_server.behaviour.generate_delay = 3.0
    ctx = ctx_for({"gpu-1": api_server.url})
    steps = [analyzed(), Step("generate", generate_step().run, timeout=0.6), record_step(registry)]
    started = time.monotonic()
    result = run_pipeline(steps, ctx)
    assert time.monotonic() - started < 2.5
    assert result.failure is not None and result.failure.step == "generate"
    assert "timed out" in result.failure.cause or "ReadTimeout" in result.failure.cause
    assert [(r.step, r.skipped) for r in result.results] == [
        ("analyze", False),
        ("generate", False),
        ("record", True),
    ]


def test_a_hung_step_function_is_abandoned_at_its_budget() -> None:
    release = threading.Event()

    def hang(ctx: ShipContext, hosts: Sequence[str]) -> HostOutcomes:
        release.wait(10)
        return dict.fromkeys(hosts)

    started = time.monotonic()
    result = run_pipeline(
        [Step("install", hang, timeout=0.5, backoff=Backoff(3, 0.01))], ctx_for({"gpu-1": "u", "gpu-2": "u"})
    )
    release.set()
    assert time.monotonic() - started < 2
    assert result.failure is not None
    assert result.failure.cause == "timed out after 0.5s"
    assert all(r.attempts == 1 for r in result.results)


def test_only_failed_hosts_are_retried_in_order(api_server: ApiServer) -> None:
    calls: dict[str, int] = {"a": 0, "b": 0}

    def flaky_b(ctx: ShipContext, host: str) -> None:
        calls[host] += 1
        if host == "b" and calls[host] < 3:
            raise Retryable("connection reset")

    order: list[str] = []
    steps = [
        Step("install", each_host(flaky_b), 10, Backoff(5, 0.01)),
        Step("api", each_host(lambda c, h: order.append(h)), 10),
    ]
    result = run_pipeline(steps, ctx_for({"a": "u", "b": "u"}), sleep=Sleeps())
    assert result.ok
    assert calls == {"a": 1, "b": 3}
    assert {(r.host, r.attempts) for r in result.results if r.step == "install"} == {("a", 1), ("b", 3)}
    assert sorted(order) == ["a", "b"]  # the next step starts only after every host passed


def test_when_one_host_fails_for_good_the_others_are_not_retried() -> None:
    calls: dict[str, int] = {"a": 0, "b": 0}

    def run(ctx: ShipContext, host: str) -> None:
        calls[host] += 1
        if host == "a":
            raise HostFailure("IMPORT FAILED: comfyui-broken-pack")
        raise Retryable("connection refused")

    result = run_pipeline(
        [Step("install", each_host(run), 10, Backoff(5, 0.01))], ctx_for({"a": "u", "b": "u"}), sleep=Sleeps()
    )
    assert calls == {"a": 1, "b": 1}
    assert result.failure is not None and result.failure.host == "a"
    assert str(result.failure) == "step 'install' failed on host a: IMPORT FAILED: comfyui-broken-pack"
    assert {r.host: r.ok for r in result.results} == {"a": False, "b": False}


def test_unresolved_model_stops_before_any_host_step(registry: Registry) -> None:
    touched: list[str] = []
    ctx = ctx_for({"gpu-1": "http://127.0.0.1:9"})
    steps = [
        analyzed(manifest_for(unresolved_model="mystery.safetensors")),
        Step("install", each_host(lambda c, h: touched.append(h)), 10),
        record_step(registry),
    ]
    outcome = run_ship(ctx, steps, registry)
    failure = outcome.result.failure
    assert touched == []
    assert failure is not None and failure.bad_input and failure.step == "analyze"
    assert "model mystery.safetensors (#4): no download URL known" in failure.cause
    assert "nothing was deployed" in failure.cause and "overrides.yaml" in failure.cause
    assert registry.find("portraits") is None
    assert registry.history("portraits", "dev")[0].steps[0].step == "analyze"


def test_failed_reship_leaves_previous_deployment_as_it_was(
    api_server: ApiServer, registry: Registry
) -> None:
    ctx = ctx_for({"gpu-1": api_server.url})
    ok = run_ship(ctx, [analyzed(), health_step(10), record_step(registry)], registry)
    assert ok.result.ok
    before = registry.get("portraits", "dev")

    api_server.behaviour.generate_status = 500
    changed = manifest_for()
    changed.models[0].sha256 = "f" * 64
    ctx2 = ctx_for({"gpu-1": api_server.url})
    failed = run_ship(
        ctx2, [analyzed(changed), health_step(10), generate_step(10), record_step(registry)], registry
    )
    assert not failed.result.ok and failed.deployment is None
    after = registry.get("portraits", "dev")
    assert after == before  # same manifest hash, still active, same deployed_at
    kinds = [(h.ok, h.manifest_hash) for h in registry.history("portraits", "dev")]
    assert kinds == [(False, changed.digest()), (True, before.manifest_hash)]


def test_step_function_that_raises_fails_every_host_it_ran_on() -> None:
    def broken(ctx: ShipContext, hosts: Sequence[str]) -> HostOutcomes:
        raise ValueError("inventory group 'gpus' is empty")

    result = run_pipeline([Step("install", broken, 5)], ctx_for({"a": "u"}))
    assert result.failure is not None
    assert result.failure.cause == "ValueError: inventory group 'gpus' is empty"


def test_local_steps_run_once(registry: Registry) -> None:
    runs: list[str] = []
    result = run_pipeline(
        [Step("prep", here(lambda c: runs.append("x")), 5, local=True)], ctx_for({"a": "u", "b": "u"})
    )
    assert result.ok and runs == ["x"]
    assert [r.host for r in result.results] == [LOCAL]


@pytest.mark.parametrize("attempts", [1, 2])
def test_retry_never_sleeps_past_the_step_budget(attempts: int) -> None:
    calls = []

    def always(ctx: ShipContext, host: str) -> None:
        calls.append(1)
        raise Retryable("still starting")

    sleeps = Sleeps()
    result = run_pipeline(
        [Step("health", each_host(always), timeout=0.5, backoff=Backoff(10, 5.0))],
        ctx_for({"a": "u"}),
        sleep=sleeps,
    )
    assert result.failure is not None
    assert len(calls) == 1 and sleeps.delays == []  # a 5 s wait would overrun the 0.5 s budget


def test_compensation_runs_for_failed_hosts_and_joins_the_report() -> None:
    seen: list[list[str]] = []

    def run(ctx: ShipContext, host: str) -> None:
        if host == "b":
            raise HostFailure("ComfyUI did not come back after the node install")

    def put_back(ctx: ShipContext, hosts: list[str]) -> dict[str, str]:
        seen.append(hosts)
        return {h: "put back: new packs parked, ComfyUI answers again" for h in hosts}

    result = run_pipeline(
        [Step("install", each_host(run), 10, on_failure=put_back)], ctx_for({"a": "u", "b": "u"})
    )
    assert seen == [["b"]]
    assert result.failure is not None
    assert str(result.failure) == (
        "step 'install' failed on host b: ComfyUI did not come back after the node "
        "install; put back: new packs parked, ComfyUI answers again"
    )
    assert {r.host: r.error for r in result.results} == {
        "a": None,
        "b": "ComfyUI did not come back after the node install; put back: new packs parked, "
        "ComfyUI answers again",
    }


def test_no_compensation_for_bad_input_and_a_crashing_one_keeps_the_cause() -> None:
    calls: list[str] = []

    def bad(ctx: ShipContext, host: str) -> None:
        raise BadInput("workflows/x.json: unsafe model name")

    def never(ctx: ShipContext, hosts: list[str]) -> dict[str, str]:
        calls.append("called")
        return {}

    result = run_pipeline([Step("install", each_host(bad), 10, on_failure=never)], ctx_for({"a": "u"}))
    assert calls == [] and result.failure is not None and result.failure.bad_input

    def broken(ctx: ShipContext, host: str) -> None:
        raise HostFailure("pip failed")

    def crash(ctx: ShipContext, hosts: list[str]) -> dict[str, str]:
        raise RuntimeError("ssh connection lost")

    result = run_pipeline([Step("install", each_host(broken), 10, on_failure=crash)], ctx_for({"a": "u"}))
    assert result.failure is not None
    assert result.failure.cause == "pip failed; putting back failed: RuntimeError: ssh connection lost"
