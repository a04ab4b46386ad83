"""A deployment's S3-compatible bucket for outputs: its settings file, checked here, root-only on the host.

Host data ``object_store_file``: a local JSON file as ``comfyui_api.object_store`` describes
(endpoint, bucket, region, prefix, credentials, public_base_url, presign_expires_s). It holds
the credentials, so it is uploaded with mode 600 and reaches comfyui-api as a path, never on
a command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comfyui_api.object_store import load
from comfyui_api.settings import ConfigError

from comfyfleet.errors import BadInput
from comfyfleet.operations.api import secret_file


def object_store_file(host_name: str, local: str, dest: str) -> Any:
    """Check the operator's file (one clear line when it is wrong), then upload it root-only."""
    try:
        load(Path(local))
    except ConfigError as exc:
        raise BadInput(f"host {host_name}: object_store_file {exc}") from None
    return secret_file(name="object store settings", local_file=local, path=dest)
