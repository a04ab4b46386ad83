"""The one workflow-name rule: a workflow's file name becomes the path /workflows/<name>.

Every part of comfyfleet that names a workflow (the API, the Modal generator, the registry,
ship) checks names here, so a name one part accepts is a name every part accepts.
"""

from __future__ import annotations

import re
from pathlib import PurePath

WORKFLOW_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
WORKFLOW_NAME_RULE = "letters, digits, '-' or '_' (starting with a letter or digit, at most 64 characters)"


class BadWorkflowName(ValueError):
    """A workflow name outside the rule; the message names the file or value and the fix."""


def is_workflow_name(name: str) -> bool:
    return isinstance(name, str) and WORKFLOW_NAME_RE.match(name) is not None


def check_workflow_name(name: str, where: str = "") -> str:
    """name when it follows the rule, else BadWorkflowName saying what to rename."""
    if not is_workflow_name(name):
        prefix = f"{where}: " if where else ""
        raise BadWorkflowName(f"{prefix}workflow name {name!r} must be {WORKFLOW_NAME_RULE}; rename it")
    return name


def workflow_name(path: str | PurePath) -> str:
    """The workflow name of a file (its name without .json), or BadWorkflowName naming the file."""
    p = PurePath(path)
    name = p.name[: -len(".json")] if p.name.endswith(".json") else p.stem
    if not is_workflow_name(name):
        raise BadWorkflowName(
            f"{p}: file name must be {WORKFLOW_NAME_RULE} (it becomes /workflows/<name>); rename the file"
        )
    return name
