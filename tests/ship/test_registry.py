"""The deployments registry on a real SQLite file: schema, migrations, semantics, privacy."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from comfyfleet.errors import BadInput
from comfyfleet.registry import (
    SCHEMA_VERSION,
    Endpoint,
    Registry,
    StepRecord,
    UnknownDeployment,
    default_db_path,
    state_dir,
)
from comfyfleet.registry.migrations import MIGRATIONS, migrate


def _ship(reg: Registry, name: str = "portraits", env: str = "dev", **kw: str):
    args = dict(
        name=name,
        environment=env,
        workflow="txt2img",
        workflow_path="workflows/txt2img.json",
        manifest_hash="a" * 64,
        target="inventory/lab.py",
        endpoints=[
            Endpoint("gpu-1", "http://10.0.0.5:3000/workflows/txt2img"),
            Endpoint("gpu-2", "http://10.0.0.6:3000/workflows/txt2img"),
        ],
    )
    args.update(kw)
    return reg.upsert_deployment(**args)  # type: ignore[arg-type]


def test_state_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("COMFYFLEET_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "comfyfleet"
    # A relative XDG_STATE_HOME is invalid per the spec and ignored.
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "comfyfleet"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "comfyfleet"
    monkeypatch.setenv("COMFYFLEET_STATE_DIR", str(tmp_path / "explicit"))
    assert default_db_path() == tmp_path / "explicit" / "deployments.sqlite3"


def test_file_is_private_from_creation(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        reg = Registry(tmp_path / "state" / "deployments.sqlite3")
        _ship(reg)
    finally:
        os.umask(old)
    assert stat.S_IMODE(reg.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(reg.path.parent.stat().st_mode) == 0o700
    for sidecar in reg.path.parent.glob("deployments.sqlite3-*"):
        assert stat.S_IMODE(sidecar.stat().st_mode) & 0o077 == 0, sidecar


def test_existing_file_with_loose_mode_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite3"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    Registry(path).deployments()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_upsert_keeps_id_and_counters_and_reactivates(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "d.sqlite3")
    first = _ship(reg)
    assert first.status == "active" and first.endpoint_url.endswith("/workflows/txt2img")
    assert [e.host for e in first.endpoints] == ["gpu-1", "gpu-2"]
    reg.count_executions(first.id, executions=5, errors=2)
    reg.set_status(first.id, "inactive")
    again = _ship(reg, manifest_hash="b" * 64)
    assert again.id == first.id
    assert (again.status, again.stopped_at, again.manifest_hash) == ("active", None, "b" * 64)
    assert (again.execution_count, again.error_count) == (5, 2)


def test_names_unique_per_environment(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "d.sqlite3")
    dev = _ship(reg, env="dev")
    prod = _ship(reg, env="prod")
    assert dev.id != prod.id
    assert len(reg.deployments()) == 2
    assert [d.environment for d in reg.deployments(environment="prod")] == ["prod"]
    with pytest.raises(BadInput, match="exists in dev and prod: pass --env"):
        reg.get("portraits")
    assert reg.get("portraits", "prod").id == prod.id
    with sqlite3.connect(reg.path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO deployments (name, environment, workflow, workflow_path, manifest_hash, target,"
            " endpoint_url, status, deployed_at) VALUES ('portraits','dev','w','p','h','t','u','active','now')"
        )


def test_unknown_name_is_a_clear_bad_input(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "d.sqlite3")
    with pytest.raises(UnknownDeployment, match="no deployment named 'nope'.*there are none yet"):
        reg.get("nope")
    _ship(reg)
    with pytest.raises(BadInput, match=r"no deployment named 'nope'.*known: portraits \(dev\)"):
        reg.get("nope")
    with pytest.raises(BadInput, match="in environment 'prod'"):
        reg.get("portraits", "prod")


def test_invalid_names_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "d.sqlite3")
    for bad in ("", "../x", "a b", "x;rm", "-lead"):
        with pytest.raises(BadInput, match="is not valid"):
            _ship(reg, name=bad)


def test_status_transitions_and_list_filters(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "d.sqlite3")
    a = _ship(reg, name="a")
    b = _ship(reg, name="b")
    stopped = reg.set_status(a.id, "inactive")
    assert stopped.status == "inactive" and stopped.stopped_at is not None
    broken = reg.set_status(b.id, "error", error="health: /ready answered 503")
    assert broken.last_error == "health: /ready answered 503"
    assert reg.deployments(active_only=True) == []
    back = reg.set_status(a.id, "active")
    assert back.stopped_at is None
    assert [d.name for d in reg.deployments(active_only=True)] == ["a"]
    with pytest.raises(ValueError):
        reg.set_status(a.id, "paused")


def test_history_newest_first_with_steps_and_failed_first_ship(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "d.sqlite3")
    # A first ship that failed leaves history but no deployment.
    reg.record_history(
        name="portraits",
        environment="dev",
        kind="ship",
        trigger="cli",
        started_at="2026-01-01T00:00:00+00:00",
        ok=False,
        summary="step 'analyze' failed",
        steps=[StepRecord("analyze", "local", False, 1, 0.2, "model x unresolved")],
    )
    assert reg.find("portraits") is None
    assert reg.has_history("portraits") == ["dev"]
    _ship(reg)
    reg.record_history(
        name="portraits",
        environment="dev",
        kind="ship",
        trigger="cli",
        started_at="2026-01-02T00:00:00+00:00",
        ok=True,
        steps=[StepRecord("analyze", "local", True, 1, 0.1), StepRecord("health", "gpu-1", True, 3, 4.5)],
    )
    reg.record_history(
        name="portraits",
        environment="dev",
        kind="health",
        trigger="schedule",
        started_at="2026-01-03T00:00:00+00:00",
        ok=True,
    )
    hist = reg.history("portraits", "dev")
    assert [h.kind for h in hist] == ["health", "ship", "ship"]
    assert [h.ok for h in hist] == [True, True, False]
    assert hist[1].steps == (
        StepRecord("analyze", "local", True, 1, 0.1),
        StepRecord("health", "gpu-1", True, 3, 4.5),
    )
    assert hist[2].steps[0].error == "model x unresolved"
    assert len(reg.history("portraits", "dev", limit=1)) == 1


def test_delete_removes_record_history_and_schedules_only_of_that_env(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "d.sqlite3")
    dev = _ship(reg, env="dev")
    prod = _ship(reg, env="prod")
    for env in ("dev", "prod"):
        reg.record_history(
            name="portraits",
            environment=env,
            kind="ship",
            trigger="cli",
            started_at="2026-01-01T00:00:00+00:00",
            ok=True,
            steps=[StepRecord("record", "local", True, 1, 0.01)],
        )
    reg.add_schedule(dev.id, "health", interval_seconds=60)
    reg.add_schedule(prod.id, "warmup", cron="*/5 * * * *")
    reg.delete(dev.id)
    assert reg.find("portraits", "dev") is None
    assert reg.history("portraits", "dev") == []
    assert [s.environment for s in reg.schedules()] == ["prod"]
    assert len(reg.history("portraits", "prod")) == 1
    with sqlite3.connect(reg.path) as conn:
        orphans = conn.execute(
            "SELECT count(*) FROM history_steps WHERE history_id NOT IN (SELECT id FROM history)"
        ).fetchone()[0]
    assert orphans == 0


def test_schedules_validation(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "d.sqlite3")
    dep = _ship(reg)
    s = reg.add_schedule(dep.id, "run", interval_seconds=30)
    assert (s.deployment, s.environment, s.when) == ("portraits", "dev", "every 30s")
    with pytest.raises(BadInput, match="exactly one"):
        reg.add_schedule(dep.id, "health")
    with pytest.raises(BadInput, match="exactly one"):
        reg.add_schedule(dep.id, "health", cron="* * * * *", interval_seconds=5)
    with pytest.raises(BadInput, match="unknown schedule action"):
        reg.add_schedule(dep.id, "reboot", interval_seconds=5)
    with pytest.raises(BadInput, match="positive"):
        reg.add_schedule(dep.id, "health", interval_seconds=0)
    reg.remove_schedule(s.id)
    with pytest.raises(BadInput, match=f"no schedule with id {s.id}"):
        reg.remove_schedule(s.id)


def test_migrates_a_version_1_file_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, str(path), upto=1)
    conn.execute(
        "INSERT INTO deployments (name, environment, workflow, workflow_path, manifest_hash, target,"
        " endpoint_url, endpoints, status, deployed_at, execution_count)"
        " VALUES ('old','prod','txt2img','w.json','h','10.0.0.5','http://x/workflows/txt2img','[]',"
        " 'active','2025-01-01T00:00:00+00:00', 7)"
    )
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()
    reg = Registry(path)
    old = reg.get("old")
    assert old.execution_count == 7
    reg.add_schedule(old.id, "health", interval_seconds=10)  # table from migration 2
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)


def test_newer_schema_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(BadInput, match="newer than this comfyfleet understands.*upgrade comfyfleet"):
        Registry(path).deployments()


def test_failed_migration_leaves_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import comfyfleet.registry.migrations as mig

    path = tmp_path / "d.sqlite3"
    monkeypatch.setattr(mig, "MIGRATIONS", (*MIGRATIONS, "CREATE TABLE x (a); CREATE TABLE broken ("))
    monkeypatch.setattr(mig, "SCHEMA_VERSION", len(MIGRATIONS) + 1)
    conn = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        mig.migrate(conn, str(path))
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'x'").fetchone()[0] == 0
    conn.close()


def test_concurrent_writers_do_not_lose_updates(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "d.sqlite3")
    dep = _ship(reg)
    other = Registry(reg.path)  # a second process's view, e.g. `comfyfleet watch`

    def bump(r: Registry) -> None:
        for _ in range(25):
            r.count_executions(dep.id, executions=1, errors=0)

    threads = [threading.Thread(target=bump, args=(r,)) for r in (reg, other, reg, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.get("portraits").execution_count == 100
