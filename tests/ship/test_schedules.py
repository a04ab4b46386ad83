"""Schedules: parsing, one scheduled run against a real HTTP API, and the watcher firing for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from comfyfleet.errors import BadInput
from comfyfleet.registry import Deployment, Endpoint, Registry
from comfyfleet.schedules import RunEvent, Watcher, add_schedule, cron_trigger, parse_every, run_scheduled

from .helpers import ApiServer


def deploy(registry: Registry, server_url: str, name: str = "portraits") -> Deployment:
    return registry.upsert_deployment(
        name=name,
        environment="dev",
        workflow="txt2img",
        workflow_path="workflows/txt2img.json",
        manifest_hash="c" * 64,
        target="127.0.0.1",
        endpoints=[Endpoint("gpu-1", f"{server_url}/workflows/txt2img")],
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("45", 45), ("10 minutes", 600)],
)
def test_parse_every(text: str, seconds: int) -> None:
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-5m", "soon", "5w", "1.5h"])
def test_parse_every_refuses_with_an_example(text: str) -> None:
    with pytest.raises(BadInput, match="write e.g. 30s, 5m"):
        parse_every(text)


def test_cron_is_validated_at_add_time(registry: Registry, api_server: ApiServer) -> None:
    dep = deploy(registry, api_server.url)
    with pytest.raises(BadInput, match=r"cron expression '61 \* \* \* \*' is not valid.*\*/5"):
        add_schedule(registry, dep, "health", cron="61 * * * *")
    with pytest.raises(BadInput, match="exactly one"):
        add_schedule(registry, dep, "health")
    s = add_schedule(registry, dep, "warmup", cron="*/5 * * * *")
    assert s.when == "*/5 * * * *"
    assert str(cron_trigger("*/5 * * * *").fields[6]) == "*/5"  # minute field


def test_health_run_records_history_and_flips_status(registry: Registry, api_server: ApiServer) -> None:
    dep = deploy(registry, api_server.url)
    ok = run_scheduled(registry, dep.id, "health")
    assert ok is not None and ok.result.ok
    (entry,) = registry.history("portraits", "dev")
    assert (entry.kind, entry.trigger, entry.ok, entry.manifest_hash) == (
        "health",
        "schedule",
        True,
        "c" * 64,
    )
    assert [s.step for s in entry.steps] == ["health"]

    api_server.behaviour.health_status = 500
    failed = run_scheduled(registry, dep.id, "health")
    assert failed is not None and not failed.result.ok
    broken = registry.get("portraits")
    assert broken.status == "error"
    assert broken.last_error is not None and "GET /health answered 500" in broken.last_error

    api_server.behaviour.health_status = 200
    run_scheduled(registry, dep.id, "health")
    healed = registry.get("portraits")
    assert (healed.status, healed.last_error) == ("active", None)
    assert [h.ok for h in registry.history("portraits", "dev")] == [True, False, True]


def test_runs_count_executions_and_errors(registry: Registry, api_server: ApiServer) -> None:
    dep = deploy(registry, api_server.url)
    assert run_scheduled(registry, dep.id, "run").result.ok  # type: ignore[union-attr]
    assert run_scheduled(registry, dep.id, "warmup").result.ok  # type: ignore[union-attr]
    assert api_server.behaviour.calls["generate:txt2img"] == 2
    assert api_server.behaviour.calls["files"] == 1  # only `run` fetches the outputs
    api_server.behaviour.generate_status = 500
    assert not run_scheduled(registry, dep.id, "run").result.ok  # type: ignore[union-attr]
    d = registry.get("portraits")
    assert (d.execution_count, d.error_count, d.status) == (3, 1, "error")


def test_stopped_deployments_are_not_checked(registry: Registry, api_server: ApiServer) -> None:
    dep = deploy(registry, api_server.url)
    registry.set_status(dep.id, "inactive")
    assert run_scheduled(registry, dep.id, "health") is None
    assert api_server.behaviour.calls == {}
    assert registry.history("portraits", "dev") == []


def test_a_check_finishing_after_stop_does_not_revive_or_break_the_deployment(
    registry: Registry, api_server: ApiServer
) -> None:
    dep = deploy(registry, api_server.url)
    api_server.behaviour.generate_delay = 0.6
    api_server.behaviour.generate_status = 500
    runner = threading.Thread(target=run_scheduled, args=(registry, dep.id, "run"))
    runner.start()
    time.sleep(0.3)
    registry.set_status(dep.id, "inactive")  # `deployments stop` while the run is in flight
    runner.join(10)
    assert registry.get("portraits").status == "inactive"


def test_watcher_fires_an_interval_schedule_and_records(registry: Registry, api_server: ApiServer) -> None:
    dep = deploy(registry, api_server.url)
    registry.add_schedule(dep.id, "health", interval_seconds=1)
    events: list[RunEvent] = []
    stop = threading.Event()
    watcher = Watcher(registry, refresh_seconds=0.2, on_event=events.append)
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 8
        while len(registry.history("portraits", "dev")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    history = registry.history("portraits", "dev")
    assert len(history) >= 2
    assert all(h.kind == "health" and h.trigger == "schedule" and h.ok for h in history)
    assert events and all(e.outcome is not None and e.outcome.result.ok for e in events)


def test_watcher_picks_up_added_and_removed_schedules(registry: Registry, api_server: ApiServer) -> None:
    dep = deploy(registry, api_server.url)
    watcher = Watcher(registry, refresh_seconds=0.1)
    assert watcher.sync() == 0
    s = registry.add_schedule(dep.id, "health", interval_seconds=60)
    assert watcher.sync() == 1
    assert [j.id for j in watcher.scheduler.get_jobs()] == [f"schedule-{s.id}"]
    registry.remove_schedule(s.id)
    assert watcher.sync() == 0
    assert watcher.scheduler.get_jobs() == []


def test_a_crashing_run_is_reported_and_the_watcher_goes_on(
    registry: Registry, api_server: ApiServer
) -> None:
    dep = deploy(registry, api_server.url)
    registry.add_schedule(dep.id, "health", interval_seconds=1)
    calls: list[int] = []

    def explode(reg: Registry, dep_id: int, action: str) -> None:
        calls.append(dep_id)
        raise RuntimeError("disk full")

    events: list[RunEvent] = []
    stop = threading.Event()
    watcher = Watcher(registry, run=explode, refresh_seconds=0.2, on_event=events.append)
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 8
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert len(calls) >= 2
    assert events[0].error == "RuntimeError: disk full"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_watch_command_records_runs_and_stops_cleanly_on_signal(
    tmp_path: Path, api_server: ApiServer, sig: signal.Signals
) -> None:
    state = tmp_path / "state"
    registry = Registry(state / "deployments.sqlite3")
    dep = deploy(registry, api_server.url)
    registry.add_schedule(dep.id, "health", interval_seconds=1)
    env = {**os.environ, "COMFYFLEET_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "comfyfleet.cli.main", "watch", "--refresh", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not registry.history("portraits", "dev") and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "watching 1 schedule(s)" in stdout
    assert "health portraits (dev): ok" in stdout
    assert f"{sig.name}: stopping" in stdout and stdout.rstrip().endswith("stopped")
    assert "Traceback" not in stderr
    assert registry.history("portraits", "dev")[0].trigger == "schedule"
