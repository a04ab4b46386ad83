"""Schema migrations of the deployments registry, applied in order on open.

The schema version lives in SQLite's ``PRAGMA user_version``. A migration is only
ever appended, never edited: a registry written by any released comfyfleet must
open with every later one. Each migration runs in one transaction with its version
bump, so a crash leaves the file at the previous version, never half-migrated.
"""

from __future__ import annotations

import sqlite3

from comfyfleet.errors import BadInput

MIGRATIONS: tuple[str, ...] = (
    # 1: deployments and their history (ship runs, verifications, scheduled runs),
    # each run's step timings in their own table so they can be queried per step.
    """
    CREATE TABLE deployments (
        id              INTEGER PRIMARY KEY,
        name            TEXT NOT NULL,
        environment     TEXT NOT NULL,
        workflow        TEXT NOT NULL,
        workflow_path   TEXT NOT NULL,
        manifest_hash   TEXT NOT NULL,
        target          TEXT NOT NULL,
        endpoint_url    TEXT NOT NULL,
        endpoints       TEXT NOT NULL DEFAULT '[]',
        status          TEXT NOT NULL CHECK (status IN ('active', 'inactive', 'error')),
        deployed_at     TEXT NOT NULL,
        stopped_at      TEXT,
        execution_count INTEGER NOT NULL DEFAULT 0,
        error_count     INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        UNIQUE (name, environment)
    );
    CREATE TABLE history (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL,
        environment   TEXT NOT NULL,
        kind          TEXT NOT NULL,
        trigger       TEXT NOT NULL,
        started_at    TEXT NOT NULL,
        finished_at   TEXT NOT NULL,
        ok            INTEGER NOT NULL,
        summary       TEXT NOT NULL DEFAULT '',
        manifest_hash TEXT
    );
    CREATE INDEX history_by_deployment ON history (name, environment, started_at);
    CREATE TABLE history_steps (
        history_id INTEGER NOT NULL REFERENCES history (id) ON DELETE CASCADE,
        position   INTEGER NOT NULL,
        step       TEXT NOT NULL,
        host       TEXT NOT NULL,
        ok         INTEGER NOT NULL,
        attempts   INTEGER NOT NULL,
        seconds    REAL NOT NULL,
        error      TEXT,
        PRIMARY KEY (history_id, position)
    );
    """,
    # 2: schedules (health checks, warmups, workflow runs) per deployment.
    """
    CREATE TABLE schedules (
        id               INTEGER PRIMARY KEY,
        deployment_id    INTEGER NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
        action           TEXT NOT NULL CHECK (action IN ('health', 'warmup', 'run')),
        cron             TEXT,
        interval_seconds INTEGER CHECK (interval_seconds IS NULL OR interval_seconds > 0),
        created_at       TEXT NOT NULL,
        CHECK ((cron IS NULL) != (interval_seconds IS NULL))
    );
    CREATE INDEX schedules_by_deployment ON schedules (deployment_id);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version a database file is at (0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, path: str, upto: int | None = None) -> int:
    """Bring the database to version ``upto`` (default: the latest); return the version it was at."""
    target = SCHEMA_VERSION if upto is None else upto
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise BadInput(
            f"{path}: deployments registry has schema version {current}, newer than this "
            f"comfyfleet understands ({SCHEMA_VERSION}): upgrade comfyfleet"
        )
    for version in range(current + 1, target + 1):
        # executescript() commits first; run the statements one by one inside an
        # explicit transaction instead so the DDL and the version bump land together.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[version - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return current


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (no ';' inside our DDL literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]
