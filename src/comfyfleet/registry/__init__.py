"""Deployments registry: SQLite in the user's state directory, migrated on open."""

from comfyfleet.registry.migrations import SCHEMA_VERSION
from comfyfleet.registry.paths import default_db_path, state_dir
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
    utcnow,
)
from comfyfleet.registry.store import Registry

__all__ = [
    "ACTIONS",
    "SCHEMA_VERSION",
    "STATUSES",
    "Deployment",
    "Endpoint",
    "HistoryEntry",
    "Registry",
    "Schedule",
    "StepRecord",
    "UnknownDeployment",
    "check_name",
    "default_db_path",
    "state_dir",
    "utcnow",
]
