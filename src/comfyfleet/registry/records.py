"""What the registry stores, as the rest of comfyfleet reads it: deployments, endpoints, history, schedules.

Plain frozen records and the naming rule for deployments and environments; the SQLite side is
:mod:`comfyfleet.registry.store`.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from comfyfleet.errors import BadInput

STATUSES = ("active", "inactive", "error")
ACTIONS = ("health", "warmup", "run")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def utcnow() -> str:
    """Current UTC time as ISO 8601 with microseconds, so history sorts by time."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def check_name(value: str, what: str = "deployment name") -> str:
    """Refuse names that could not serve as a key or a path segment."""
    if not _NAME.match(value or ""):
        raise BadInput(
            f"{what} {value!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


class UnknownDeployment(BadInput):
    """No deployment by that name (in that environment)."""


@dataclass(frozen=True)
class Endpoint:
    """Where one host serves a deployment's workflow.

    ``api_key_file`` is the path of the operator's key file for that host (from its
    inventory data), so scheduled checks can authenticate; the key itself is never stored.
    ``ssh`` is how checks reach the API through the host's SSH (``SshRoute.record()`` of
    :mod:`comfyfleet.tunnel`: address, port, user, key path, known_hosts; no password).
    """

    host: str
    url: str
    api_key_file: str | None = None
    ssh: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Deployment:
    """One workflow deployed to one target in one environment.

    ``execution_count`` counts the generations comfyfleet ran on it (the ship's own, ``verify``,
    scheduled warmups and runs) and ``error_count`` those that failed; callers' requests are
    in each host's API execution log (``GET /executions``), which answers per API key.
    """

    id: int
    name: str
    environment: str
    workflow: str
    workflow_path: str
    manifest_hash: str
    target: str
    endpoint_url: str
    endpoints: tuple[Endpoint, ...]
    status: str
    deployed_at: str
    stopped_at: str | None
    execution_count: int
    error_count: int
    last_error: str | None


@dataclass(frozen=True)
class StepRecord:
    """How one step went on one host (``host`` is "local" for steps run here)."""

    step: str
    host: str
    ok: bool
    attempts: int
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One ship run, verification, scheduled run, stop or start."""

    id: int
    name: str
    environment: str
    kind: str
    trigger: str
    started_at: str
    finished_at: str
    ok: bool
    summary: str
    manifest_hash: str | None
    steps: tuple[StepRecord, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Schedule:
    """A recurring health check, warmup or workflow run of one deployment."""

    id: int
    deployment_id: int
    deployment: str
    environment: str
    action: str
    cron: str | None
    interval_seconds: int | None
    created_at: str

    @property
    def when(self) -> str:
        """The trigger as a person writes it: a cron line or 'every Ns'."""
        return self.cron if self.cron is not None else f"every {self.interval_seconds}s"


def deployment_from_row(row: sqlite3.Row) -> Deployment:
    endpoints = tuple(
        Endpoint(e["host"], e["url"], e.get("api_key_file"), e.get("ssh"))
        for e in json.loads(row["endpoints"] or "[]")
    )
    return Deployment(
        id=row["id"],
        name=row["name"],
        environment=row["environment"],
        workflow=row["workflow"],
        workflow_path=row["workflow_path"],
        manifest_hash=row["manifest_hash"],
        target=row["target"],
        endpoint_url=row["endpoint_url"],
        endpoints=endpoints,
        status=row["status"],
        deployed_at=row["deployed_at"],
        stopped_at=row["stopped_at"],
        execution_count=row["execution_count"],
        error_count=row["error_count"],
        last_error=row["last_error"],
    )
