"""SQLite execution log: every request's workflow, parameters, status, timings and error.

Writes go through one background thread so the request path only enqueues a tuple;
reads (GET /executions) use their own connection. The writer waits out a locked database
(busy timeout), keeps rows it could not write and tries again with backoff, and never
dies of an error; the file is created readable by its owner only (0600).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    key_id TEXT,
    params TEXT,
    status TEXT NOT NULL,
    error TEXT,
    prompt_id TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    duration_ms REAL,
    outputs TEXT
);
CREATE INDEX IF NOT EXISTS executions_created ON executions (created_at);
CREATE INDEX IF NOT EXISTS executions_workflow ON executions (workflow, created_at);
"""
log = logging.getLogger("comfyui_api.store")
COLUMNS = (
    "id",
    "workflow",
    "key_id",
    "params",
    "status",
    "error",
    "prompt_id",
    "created_at",
    "started_at",
    "finished_at",
    "duration_ms",
    "outputs",
)


class ExecutionLog:
    """Append/update rows off the hot path; query with filters."""

    def __init__(self, path: Path | None, busy_timeout_s: float = 5.0) -> None:
        self.path = str(path) if path is not None else ":memory:"
        self._pending: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._closing = False
        if path is not None:
            _private_file(path)
        self._write = sqlite3.connect(self.path, timeout=busy_timeout_s, check_same_thread=False)
        # WAL + synchronous=NORMAL: no fsync per commit; a crash loses at most the last rows.
        self._write.executescript(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" if path is not None else ""
        )
        self._write.executescript(SCHEMA)
        self._write.commit()
        self._read = (
            self._write
            if path is None
            else sqlite3.connect(self.path, timeout=busy_timeout_s, check_same_thread=False)
        )
        self._lock = threading.Lock()
        self.failures = 0
        self._thread = threading.Thread(target=self._writer, name="execution-log", daemon=True)
        self._thread.start()

    def _writer(self) -> None:
        # Rows arrive on a deque without waking this thread; it drains in batches.
        backoff = 0.05
        while True:
            if not self._pending:
                if self._closing:
                    return
                time.sleep(0.05)
                continue
            try:
                self._drain()
                backoff = 0.05
            except Exception as exc:  # locked, disk full, ...: keep the rows, try again later
                self.failures += 1
                log.warning(
                    "execution log %s: cannot write yet (%s); retrying in %.1fs", self.path, exc, backoff
                )
                if self._closing:
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _drain(self) -> None:
        """Write every queued row in one transaction; on failure the rows stay queued, in order."""
        with self._lock:
            batch = list(self._pending)
            try:
                for sql, args in batch:
                    self._write.execute(sql, args)
                self._write.commit()
            except BaseException:
                try:
                    self._write.rollback()
                except sqlite3.Error:
                    pass
                raise
            for _ in batch:
                self._pending.popleft()

    def insert(self, row: dict[str, Any]) -> None:
        values = tuple(_col(row.get(c)) for c in COLUMNS)
        self._pending.append(
            (
                f"INSERT OR REPLACE INTO executions ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})",
                values,
            )
        )

    def update(self, job_id: str, **fields: Any) -> None:
        cols = [c for c in fields if c in COLUMNS]
        self._pending.append(
            (
                f"UPDATE executions SET {', '.join(c + '=?' for c in cols)} WHERE id=?",
                (*(_col(fields[c]) for c in cols), job_id),
            )
        )

    def flush(self) -> None:
        """Write everything queued so far (readers call this to see their own rows); errors leave them queued."""
        try:
            self._drain()
        except sqlite3.Error as exc:
            log.warning("execution log %s: cannot write yet (%s)", self.path, exc)

    def query(
        self,
        workflow: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        key_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        self.flush()
        where, args = [], []
        for col, op, val in (
            ("workflow", "=", workflow),
            ("status", "=", status),
            ("created_at", ">=", since),
            ("created_at", "<", until),
            ("key_id", "=", key_id),
        ):
            if val is not None:
                where.append(f"{col} {op} ?")
                args.append(val)
        sql = f"SELECT {','.join(COLUMNS)} FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ? OFFSET ?"
        with self._lock:
            rows = self._read.execute(sql, (*args, limit, offset)).fetchall()
        out = []
        for r in rows:
            d = dict(zip(COLUMNS, r, strict=False))
            for k in ("params", "error", "outputs"):
                if d[k] is not None:
                    d[k] = json.loads(d[k])
            out.append(d)
        return out

    def close(self) -> None:
        self._closing = True
        self._thread.join(5)
        self.flush()
        with self._lock:
            self._write.close()
            if self._read is not self._write:
                self._read.close()


def _private_file(path: Path) -> None:
    """Create the log file owner-only (SQLite gives its -wal/-shm files the same mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _col(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value
