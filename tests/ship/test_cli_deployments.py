"""`comfyfleet deployments ...` as a user runs it: real processes, a real registry, a real HTTP API."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfyfleet.registry import Deployment, Endpoint, Registry, StepRecord

from .helpers import ApiServer


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def cli(state: Path, *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COMFYFLEET_STATE_DIR": str(state), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "comfyfleet.cli.main", *args],
        env=env,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def seed(
    state: Path,
    url: str,
    name: str = "portraits",
    env: str = "dev",
    target: str = "inventory/test.py",
    host: str = "gpu-1",
) -> Deployment:
    reg = Registry(state / "deployments.sqlite3")
    dep = reg.upsert_deployment(
        name=name,
        environment=env,
        workflow="txt2img",
        workflow_path="workflows/txt2img.json",
        manifest_hash="d" * 64,
        target=target,
        endpoints=[Endpoint(host, f"{url}/workflows/txt2img")],
    )
    reg.record_history(
        name=name,
        environment=env,
        kind="ship",
        trigger="cli",
        started_at="2026-01-01T00:00:00+00:00",
        ok=True,
        manifest_hash="d" * 64,
        steps=[
            StepRecord("analyze", "local", True, 1, 0.12),
            StepRecord("health", "gpu-1", True, 3, 4.5),
            StepRecord("record", "local", True, 1, 0.01),
        ],
    )
    return dep


def test_list_filters_and_empty_hint(state: Path, api_server: ApiServer) -> None:
    empty = cli(state, "deployments", "list")
    assert empty.returncode == 0 and "no deployments" in empty.stdout
    seed(state, api_server.url, "portraits", "dev")
    seed(state, api_server.url, "portraits", "prod")
    other = seed(state, api_server.url, "upscaler", "prod")
    Registry(state / "deployments.sqlite3").set_status(other.id, "inactive")
    listing = cli(state, "deployments", "list")
    assert listing.returncode == 0
    assert listing.stdout.count("portraits") == 2 and "upscaler" in listing.stdout
    active_prod = cli(state, "deployments", "list", "--active", "--env", "prod")
    rows = [line for line in active_prod.stdout.splitlines() if "txt2img" in line]
    assert len(rows) == 1 and "portraits" in rows[0] and "prod" in rows[0]


def test_show_and_unknown_and_ambiguous_names(state: Path, api_server: ApiServer) -> None:
    seed(state, api_server.url, "portraits", "dev")
    shown = cli(state, "deployments", "show", "portraits")
    assert shown.returncode == 0
    assert f"{api_server.url}/workflows/txt2img" in shown.stdout and "d" * 64 in shown.stdout
    unknown = cli(state, "deployments", "show", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "error: no deployment named 'nope': see `comfyfleet deployments list` (known: portraits (dev))"
    ]
    seed(state, api_server.url, "portraits", "prod")
    both = cli(state, "deployments", "show", "portraits")
    assert both.returncode == 2 and "exists in dev and prod: pass --env" in both.stderr
    for cmd in ("stop", "start", "history"):
        result = cli(state, "deployments", cmd, "nope")
        assert result.returncode == 2 and "no deployment named 'nope'" in result.stderr, cmd
        assert "Traceback" not in result.stderr


@pytest.fixture
def local_host(tmp_path: Path, api_server: ApiServer) -> dict[str, Path]:
    """This machine as the deployment's host (pyinfra's @local connector): its API folder in
    tmp_path, /health served by the test API on its api_port, no API container (not restarted)."""
    root = tmp_path / "host"
    (root / "api" / "workflows").mkdir(parents=True)
    (root / "api" / "workflows" / "txt2img.json").write_text("{}")
    (root / "api" / "workflows" / "upscale.json").write_text("{}")
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        f"hosts = [('@local', {{'data_root': {str(root)!r}, 'api_port': {api_server.port},"
        f" 'container_prefix': 'cf-shiptest-none-', 'health_timeout': 10}})]\n"
    )
    return {"root": root / "api", "inventory": inventory}


def test_stop_then_start_switch_the_endpoint_and_keep_the_record(
    state: Path, api_server: ApiServer, local_host: dict[str, Path]
) -> None:
    api_dir = local_host["root"]
    dep = seed(state, api_server.url, target=str(local_host["inventory"]), host="@local")
    Registry(state / "deployments.sqlite3").count_executions(dep.id, executions=4, errors=1)
    stopped = cli(state, "deployments", "stop", "portraits")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    # The API no longer finds the workflow; the other one stays; nothing was deleted.
    assert sorted(p.name for p in (api_dir / "workflows").iterdir()) == ["upscale.json"]
    assert (api_dir / "stopped" / "txt2img.json").read_text() == "{}"
    assert (api_dir / "disabled" / "txt2img").exists()
    reg = Registry(state / "deployments.sqlite3")
    d = reg.get("portraits")
    assert (d.status, d.execution_count, d.error_count) == ("inactive", 4, 1)
    assert d.stopped_at is not None
    again = cli(state, "deployments", "stop", "portraits")  # idempotent
    assert again.returncode == 0 and (api_dir / "stopped" / "txt2img.json").exists()
    started = cli(state, "deployments", "start", "portraits")
    assert started.returncode == 0, started.stderr
    assert sorted(p.name for p in (api_dir / "workflows").iterdir()) == ["txt2img.json", "upscale.json"]
    assert not (api_dir / "disabled" / "txt2img").exists()
    assert list((api_dir / "stopped").iterdir()) == []
    assert reg.get("portraits").status == "active"
    hist = reg.history("portraits", "dev")
    assert [h.kind for h in hist][:3] == ["start", "stop", "stop"]
    assert hist[0].steps[0].host == "@local"


def test_stop_on_an_unreachable_host_fails_and_changes_nothing(state: Path, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.py"
    inventory.write_text("hosts = [('gpu-1', {'ssh_hostname': '127.0.0.1', 'ssh_port': 1})]\n")
    seed(state, "http://127.0.0.1:9", target=str(inventory))
    result = cli(state, "deployments", "stop", "portraits")
    assert result.returncode == 1
    assert "stop portraits (dev) failed on host gpu-1:" in result.stderr
    assert "status left as active" in result.stderr
    reg = Registry(state / "deployments.sqlite3")
    assert reg.get("portraits").status == "active"
    last = reg.history("portraits", "dev")[0]
    assert (last.kind, last.ok) == ("stop", False)


def test_delete_refuses_without_terminal_and_without_yes(
    state: Path, api_server: ApiServer, local_host: dict[str, Path]
) -> None:
    seed(state, api_server.url, target=str(local_host["inventory"]), host="@local")
    refused = cli(state, "deployments", "delete", "portraits")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: refusing to delete portraits (dev) without confirmation: no terminal to ask on; pass --yes"
    )
    assert Registry(state / "deployments.sqlite3").find("portraits") is not None
    assert (local_host["root"] / "workflows" / "txt2img.json").exists()


def test_delete_with_yes_stops_serving_then_removes_everything(
    state: Path, api_server: ApiServer, local_host: dict[str, Path]
) -> None:
    dep = seed(state, api_server.url, target=str(local_host["inventory"]), host="@local")
    Registry(state / "deployments.sqlite3").add_schedule(dep.id, "health", interval_seconds=60)
    deleted = cli(state, "deployments", "delete", "portraits", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert not (local_host["root"] / "workflows" / "txt2img.json").exists()
    assert (local_host["root"] / "stopped" / "txt2img.json").exists()  # parked, never deleted
    reg = Registry(state / "deployments.sqlite3")
    assert reg.find("portraits") is None and reg.schedules() == [] and reg.history("portraits", "dev") == []
    gone = cli(state, "deployments", "history", "portraits")
    assert gone.returncode == 2


def _run_in_pty(state: Path, answer: bytes, *args: str) -> tuple[int, str]:
    env = {**os.environ, "COMFYFLEET_STATE_DIR": str(state)}
    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI with a terminal on stdin
        os.execve(sys.executable, [sys.executable, "-m", "comfyfleet.cli.main", *args], env)
    output = b""
    answered = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"[y/N]" in output:
                os.write(fd, answer)
                answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_delete_asks_on_a_terminal(state: Path, api_server: ApiServer, local_host: dict[str, Path]) -> None:
    seed(state, api_server.url, target=str(local_host["inventory"]), host="@local")
    code, output = _run_in_pty(state, b"n\n", "deployments", "delete", "portraits")
    assert code == 1 and "delete deployment portraits (dev)" in output
    assert Registry(state / "deployments.sqlite3").find("portraits") is not None
    code, output = _run_in_pty(state, b"y\n", "deployments", "delete", "portraits")
    assert code == 0, output
    assert Registry(state / "deployments.sqlite3").find("portraits") is None


def test_history_shows_every_step_newest_first(
    state: Path, api_server: ApiServer, local_host: dict[str, Path]
) -> None:
    seed(state, api_server.url, target=str(local_host["inventory"]), host="@local")
    cli(state, "deployments", "stop", "portraits")
    hist = cli(state, "deployments", "history", "portraits")
    assert hist.returncode == 0, hist.stderr
    text = hist.stdout
    assert text.index("stop") < text.index("ship")
    for step in ("analyze", "health", "record"):
        assert step in text
    assert "4.50" in text  # the health step's seconds


def test_history_of_a_failed_first_ship(state: Path) -> None:
    reg = Registry(state / "deployments.sqlite3")
    reg.record_history(
        name="fresh",
        environment="prod",
        kind="ship",
        trigger="cli",
        started_at="2026-01-01T00:00:00+00:00",
        ok=False,
        summary="step 'analyze' failed: 1 unresolved",
        steps=[StepRecord("analyze", "local", False, 1, 0.05, "1 unresolved")],
    )
    hist = cli(state, "deployments", "history", "fresh")
    assert hist.returncode == 0, hist.stderr
    assert "failed" in hist.stdout and "1 unresolved" in hist.stdout


def test_schedule_add_list_remove(state: Path, api_server: ApiServer) -> None:
    seed(state, api_server.url)
    added = cli(state, "deployments", "schedule", "add", "portraits", "--action", "warmup", "--every", "5m")
    assert added.returncode == 0, added.stderr
    assert "schedule #1: warmup of portraits (dev) every 300s" in added.stdout
    cron = cli(state, "deployments", "schedule", "add", "portraits", "--cron", "*/10 * * * *")
    assert cron.returncode == 0
    bad = cli(state, "deployments", "schedule", "add", "portraits", "--cron", "every monday")
    assert bad.returncode == 2 and "is not valid" in bad.stderr
    neither = cli(state, "deployments", "schedule", "add", "portraits")
    assert neither.returncode == 2 and "exactly one of --cron" in neither.stderr
    listing = cli(state, "deployments", "schedule", "list")
    assert "every 300s" in listing.stdout and "*/10 * * * *" in listing.stdout
    assert cli(state, "deployments", "schedule", "remove", "1").returncode == 0
    missing = cli(state, "deployments", "schedule", "remove", "1")
    assert missing.returncode == 2 and "no schedule with id 1" in missing.stderr
    assert "every 300s" not in cli(state, "deployments", "schedule", "list", "portraits").stdout


def test_verify_runs_checks_now_and_records_them(state: Path, api_server: ApiServer) -> None:
    seed(state, api_server.url)
    ok = cli(state, "deployments", "verify", "portraits")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert api_server.behaviour.calls["generate:txt2img"] == 1
    api_server.behaviour.generate_status = 500
    bad = cli(state, "deployments", "verify", "portraits")
    assert bad.returncode == 1
    assert (
        "verify failed: step 'generate' failed on host gpu-1: POST /workflows/txt2img answered 500"
        in bad.stderr
    )
    reg = Registry(state / "deployments.sqlite3")
    assert reg.get("portraits").status == "error"
    assert [(h.kind, h.trigger, h.ok) for h in reg.history("portraits", "dev")][:2] == [
        ("verify", "cli", False),
        ("verify", "cli", True),
    ]


def test_a_stopped_workflow_stays_stopped_when_a_reupload_brings_it_back(
    state: Path, api_server: ApiServer, local_host: dict[str, Path]
) -> None:
    api_dir = local_host["root"]
    seed(state, api_server.url, target=str(local_host["inventory"]), host="@local")
    reg = Registry(state / "deployments.sqlite3")
    reg.upsert_deployment(
        name="scaler",
        environment="dev",
        workflow="upscale",
        workflow_path="workflows/upscale.json",
        manifest_hash="f" * 64,
        target=str(local_host["inventory"]),
        endpoints=[Endpoint("@local", f"{api_server.url}/workflows/upscale")],
    )
    assert cli(state, "deployments", "stop", "portraits").returncode == 0
    (api_dir / "workflows" / "txt2img.json").write_text('{"re": "uploaded"}')  # what update-binary does
    assert cli(state, "deployments", "start", "scaler").returncode == 0
    assert sorted(p.name for p in (api_dir / "workflows").iterdir()) == ["upscale.json"]
    assert (api_dir / "stopped" / "txt2img.json").read_text() == '{"re": "uploaded"}'
    assert (api_dir / "disabled" / "txt2img").exists()


def test_a_host_another_process_is_changing_is_not_touched(
    state: Path, api_server: ApiServer, local_host: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from comfyfleet.ship import hold_hosts

    seed(state, api_server.url, target=str(local_host["inventory"]), host="@local")
    monkeypatch.setenv("COMFYFLEET_STATE_DIR", str(state))
    with hold_hosts(["@local"], "shipping other (dev)"):
        busy = cli(state, "deployments", "stop", "portraits")
    assert busy.returncode == 1
    assert (
        busy.stderr.strip() == "stop not started: host @local is busy: shipping other (dev) (pid "
        f"{os.getpid()}); try again when it has finished"
    )
    assert (local_host["root"] / "workflows" / "txt2img.json").exists()
    assert Registry(state / "deployments.sqlite3").get("portraits").status == "active"
    free = cli(state, "deployments", "stop", "portraits")  # the lock went with its holder
    assert free.returncode == 0, free.stderr
