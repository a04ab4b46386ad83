"""The deployments registry: what is deployed where, its status, history and schedules.

One SQLite file in the user's state directory (mode 0600, directory 0700). Every
method opens its own short-lived connection, so the CLI, ``comfyfleet watch`` and its
scheduler threads can use one :class:`Registry` at the same time; WAL mode and a busy
timeout let a reader and a writer overlap.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from comfyfleet.errors import BadInput
from comfyfleet.registry.migrations import migrate
from comfyfleet.registry.paths import default_db_path
from comfyfleet.registry.records import (
    ACTIONS,
    STATUSES,
    Deployment,
    Endpoint,
    HistoryEntry,
    Schedule,
    StepRecord,
    UnknownDeployment,
    check_name,
    deployment_from_row,
    utcnow,
)


class Registry:
    """The deployments registry in one SQLite file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self._ready = False

    # -- connection -----------------------------------------------------------------

    def _prepare(self) -> None:
        """Create the state directory and the file private to the user, then migrate."""
        directory = self.path.parent
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700, exist_ok=True)
        if not self.path.exists():
            # Create the file ourselves so it is 0600 from its first byte on; sqlite
            # would use the umask (often 0644), and the history names hosts and URLs.
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        os.chmod(self.path, 0o600)
        conn = self._connect()
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            migrate(conn, str(self.path))
        finally:
            conn.close()
        self._ready = True

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=15, isolation_level=None)
        except sqlite3.Error as exc:
            raise BadInput(f"{self.path}: cannot open the deployments registry: {exc}") from exc
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 15000")
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one write transaction (committed on success)."""
        if not self._ready:
            self._prepare()
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            self._prepare()
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    # -- deployments ----------------------------------------------------------------

    def upsert_deployment(
        self,
        *,
        name: str,
        environment: str,
        workflow: str,
        workflow_path: str,
        manifest_hash: str,
        target: str,
        endpoints: Sequence[Endpoint],
    ) -> Deployment:
        """Record a successful ship: a new deployment, or the new version of an existing one.

        An existing deployment keeps its id and counters and becomes active again.
        """
        check_name(name)
        check_name(environment, "environment")
        if not endpoints:
            raise ValueError("a deployment needs at least one endpoint")
        now = utcnow()
        kept = ("host", "url", "api_key_file", "ssh")  # fields left out when empty
        encoded = json.dumps([{f: getattr(e, f) for f in kept if getattr(e, f)} for e in endpoints])
        with self._tx() as conn:
            conn.execute(
                """
                INSERT INTO deployments (name, environment, workflow, workflow_path, manifest_hash,
                                         target, endpoint_url, endpoints, status, deployed_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', ?)
                ON CONFLICT (name, environment) DO UPDATE SET
                    workflow = excluded.workflow, workflow_path = excluded.workflow_path,
                    manifest_hash = excluded.manifest_hash, target = excluded.target,
                    endpoint_url = excluded.endpoint_url, endpoints = excluded.endpoints,
                    status = 'active', deployed_at = excluded.deployed_at,
                    stopped_at = NULL, last_error = NULL
                """,
                (
                    name,
                    environment,
                    workflow,
                    workflow_path,
                    manifest_hash,
                    target,
                    endpoints[0].url,
                    encoded,
                    now,
                ),
            )
            row = conn.execute(
                "SELECT * FROM deployments WHERE name = ? AND environment = ?", (name, environment)
            ).fetchone()
        return deployment_from_row(row)

    def find(self, name: str, environment: str | None = None) -> Deployment | None:
        """The deployment by that name, or None. Raises BadInput when the name is ambiguous."""
        with self._read() as conn:
            if environment is not None:
                rows = conn.execute(
                    "SELECT * FROM deployments WHERE name = ? AND environment = ?", (name, environment)
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM deployments WHERE name = ? ORDER BY environment", (name,)
                ).fetchall()
        if len(rows) > 1:
            envs = " and ".join(r["environment"] for r in rows)
            raise BadInput(f"deployment {name!r} exists in {envs}: pass --env to choose one")
        return deployment_from_row(rows[0]) if rows else None

    def get(self, name: str, environment: str | None = None) -> Deployment:
        """The deployment by that name; a clear error when there is none."""
        found = self.find(name, environment)
        if found is None:
            where = f" in environment {environment!r}" if environment else ""
            known = self._names_hint(environment)
            raise UnknownDeployment(
                f"no deployment named {name!r}{where}: see `comfyfleet deployments list`{known}"
            )
        return found

    def _names_hint(self, environment: str | None) -> str:
        names = sorted({f"{d.name} ({d.environment})" for d in self.deployments(environment=environment)})
        if not names:
            return " (there are none yet)"
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return f" (known: {shown})"

    def deployments(self, *, active_only: bool = False, environment: str | None = None) -> list[Deployment]:
        """Deployments, optionally only active ones or one environment's."""
        sql = "SELECT * FROM deployments WHERE 1 = 1"
        args: list[object] = []
        if active_only:
            sql += " AND status = 'active'"
        if environment is not None:
            sql += " AND environment = ?"
            args.append(environment)
        sql += " ORDER BY environment, name"
        with self._read() as conn:
            return [deployment_from_row(r) for r in conn.execute(sql, args).fetchall()]

    def by_id(self, deployment_id: int) -> Deployment | None:
        """The deployment with that id, or None (it may have been deleted meanwhile)."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
        return deployment_from_row(row) if row else None

    def set_status(
        self,
        deployment_id: int,
        status: str,
        *,
        error: str | None = None,
        only_from: Sequence[str] | None = None,
    ) -> Deployment | None:
        """Move a deployment to active, inactive (stopped now) or error (with the cause).

        With ``only_from``, the change happens only when the current status is one of
        those (checked and written in one transaction, so a scheduled check finishing
        just after a `stop` cannot flip the stopped deployment back); returns None then.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._tx() as conn:
            row = conn.execute("SELECT status FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
            if row is None:
                raise UnknownDeployment(f"deployment id {deployment_id} no longer exists")
            if only_from is not None and row["status"] not in only_from:
                return None
            if status == "inactive":
                conn.execute(
                    "UPDATE deployments SET status = 'inactive', stopped_at = ? WHERE id = ?",
                    (utcnow(), deployment_id),
                )
            elif status == "active":
                conn.execute(
                    "UPDATE deployments SET status = 'active', stopped_at = NULL, last_error = NULL "
                    "WHERE id = ?",
                    (deployment_id,),
                )
            else:
                conn.execute(
                    "UPDATE deployments SET status = 'error', last_error = ? WHERE id = ?",
                    (error, deployment_id),
                )
            row = conn.execute("SELECT * FROM deployments WHERE id = ?", (deployment_id,)).fetchone()
        return deployment_from_row(row)

    def count_executions(self, deployment_id: int, *, executions: int, errors: int) -> None:
        """Add to a deployment's execution and error counters."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE deployments SET execution_count = execution_count + ?, "
                "error_count = error_count + ? WHERE id = ?",
                (executions, errors, deployment_id),
            )

    def delete(self, deployment_id: int) -> None:
        """Remove a deployment with its history and schedules (hard delete)."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT name, environment FROM deployments WHERE id = ?", (deployment_id,)
            ).fetchone()
            if row is None:
                return
            conn.execute(
                "DELETE FROM history WHERE name = ? AND environment = ?", (row["name"], row["environment"])
            )
            conn.execute("DELETE FROM deployments WHERE id = ?", (deployment_id,))

    # -- history --------------------------------------------------------------------

    def record_history(
        self,
        *,
        name: str,
        environment: str,
        kind: str,
        trigger: str,
        started_at: str,
        ok: bool,
        summary: str = "",
        manifest_hash: str | None = None,
        steps: Sequence[StepRecord] = (),
        finished_at: str | None = None,
    ) -> int:
        """Append one run to the history; returns its id.

        History is keyed by name and environment, not by deployment id, so a first ship
        that failed (and so created no deployment) is still on record.
        """
        with self._tx() as conn:
            cur = conn.execute(
                """
                INSERT INTO history (name, environment, kind, trigger, started_at, finished_at,
                                     ok, summary, manifest_hash)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    name,
                    environment,
                    kind,
                    trigger,
                    started_at,
                    finished_at or utcnow(),
                    int(ok),
                    summary,
                    manifest_hash,
                ),
            )
            history_id = int(cur.lastrowid or 0)
            conn.executemany(
                """
                INSERT INTO history_steps (history_id, position, step, host, ok, attempts, seconds, error)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """,
                [
                    (history_id, i, s.step, s.host, int(s.ok), s.attempts, round(s.seconds, 4), s.error)
                    for i, s in enumerate(steps)
                ],
            )
        return history_id

    def history(self, name: str, environment: str, *, limit: int | None = None) -> list[HistoryEntry]:
        """Runs of one deployment, newest first, each with its steps in order."""
        sql = "SELECT * FROM history WHERE name = ? AND environment = ? ORDER BY started_at DESC, id DESC"
        args: list[object] = [name, environment]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._read() as conn:
            rows = conn.execute(sql, args).fetchall()
            steps: dict[int, list[StepRecord]] = {r["id"]: [] for r in rows}
            if rows:
                marks = ",".join("?" * len(rows))
                for s in conn.execute(
                    f"SELECT * FROM history_steps WHERE history_id IN ({marks}) "
                    "ORDER BY history_id, position",
                    list(steps),
                ):
                    steps[s["history_id"]].append(
                        StepRecord(
                            s["step"], s["host"], bool(s["ok"]), s["attempts"], s["seconds"], s["error"]
                        )
                    )
        return [
            HistoryEntry(
                id=r["id"],
                name=r["name"],
                environment=r["environment"],
                kind=r["kind"],
                trigger=r["trigger"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
                ok=bool(r["ok"]),
                summary=r["summary"],
                manifest_hash=r["manifest_hash"],
                steps=tuple(steps[r["id"]]),
            )
            for r in rows
        ]

    def has_history(self, name: str, environment: str | None = None) -> list[str]:
        """Environments in which a name has history (a failed first ship leaves some)."""
        sql = "SELECT DISTINCT environment FROM history WHERE name = ?"
        args: list[object] = [name]
        if environment is not None:
            sql += " AND environment = ?"
            args.append(environment)
        with self._read() as conn:
            return sorted(r[0] for r in conn.execute(sql, args).fetchall())

    # -- schedules ------------------------------------------------------------------

    def add_schedule(
        self, deployment_id: int, action: str, *, cron: str | None = None, interval_seconds: int | None = None
    ) -> Schedule:
        """Add a recurring action to a deployment (exactly one of cron or interval)."""
        if action not in ACTIONS:
            raise BadInput(f"unknown schedule action {action!r}: use one of {', '.join(ACTIONS)}")
        if (cron is None) == (interval_seconds is None):
            raise BadInput("a schedule needs exactly one of --cron or --every")
        if interval_seconds is not None and interval_seconds <= 0:
            raise BadInput(f"interval must be positive, got {interval_seconds}s")
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO schedules (deployment_id, action, cron, interval_seconds, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (deployment_id, action, cron, interval_seconds, utcnow()),
            )
            schedule_id = int(cur.lastrowid or 0)
        found = [s for s in self.schedules() if s.id == schedule_id]
        return found[0]

    def schedules(self, deployment_id: int | None = None) -> list[Schedule]:
        """All schedules, or one deployment's, oldest first."""
        sql = (
            "SELECT s.*, d.name AS deployment, d.environment AS environment FROM schedules s "
            "JOIN deployments d ON d.id = s.deployment_id"
        )
        args: list[object] = []
        if deployment_id is not None:
            sql += " WHERE s.deployment_id = ?"
            args.append(deployment_id)
        sql += " ORDER BY s.id"
        with self._read() as conn:
            return [
                Schedule(
                    id=r["id"],
                    deployment_id=r["deployment_id"],
                    deployment=r["deployment"],
                    environment=r["environment"],
                    action=r["action"],
                    cron=r["cron"],
                    interval_seconds=r["interval_seconds"],
                    created_at=r["created_at"],
                )
                for r in conn.execute(sql, args).fetchall()
            ]

    def remove_schedule(self, schedule_id: int) -> None:
        """Remove one schedule; a clear error when the id does not exist."""
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
            if cur.rowcount == 0:
                raise BadInput(
                    f"no schedule with id {schedule_id}: see `comfyfleet deployments schedule list`"
                )
