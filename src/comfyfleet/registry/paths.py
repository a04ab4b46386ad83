"""Where the deployments registry lives: the user's state directory, private to them."""

from __future__ import annotations

import os
from pathlib import Path

DB_FILENAME = "deployments.sqlite3"


def state_dir() -> Path:
    """The state directory: $COMFYFLEET_STATE_DIR, $XDG_STATE_HOME/comfyfleet or ~/.local/state/comfyfleet."""
    explicit = os.environ.get("COMFYFLEET_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "comfyfleet"
    return Path.home() / ".local" / "state" / "comfyfleet"


def default_db_path() -> Path:
    """The registry database file inside :func:`state_dir`."""
    return state_dir() / DB_FILENAME
