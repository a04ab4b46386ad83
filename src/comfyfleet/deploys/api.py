"""Tier 1: the comfyui-api service on a host — artifact, workflows, API keys, container, verification.

Host data read here (besides :mod:`comfyfleet.inventory`'s ``api_port``):

==================  ==============================  ==============================================
key                 default                         meaning
==================  ==============================  ==============================================
api_binary          ``dist/comfyui-api.pyz``        the artifact built by ``scripts/build-binary``
workflows_dir       ``workflows``                   local folder whose ``*.json`` / ``*.api.yaml``
                                                    become the API's endpoints
api_listen          ``0.0.0.0``                     address the API binds on the host
api_keys_file       none                            local file of API keys to install; without it
                                                    one random key is generated on the host
                                                    (root-only ``<data_root>/api/api-keys``)
verify_timeout      ``600``                         seconds ``verify-endpoints`` waits for /ready
                                                    and for each generation
==================  ==============================  ==============================================

Everything lives in ``<data_root>/api``: ``comfyui-api.pyz``, ``workflows/``,
``executions.sqlite3``, ``api-keys`` and ``disabled/`` (stop markers: the API does not serve a
workflow with a file of its name there, re-reading the folder every second, so a re-upload of
the workflows folder never serves a stopped workflow again and stop/start need no restart). The container runs the stock ``python3`` of the
runtime image on the .pyz; its spec carries the artifact's sha256, so a new artifact
recreates only the API container and an unchanged one uploads nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from comfyfleet.deploys import ops
from comfyfleet.deploys.object_store import object_store_file
from comfyfleet.deploys.tasks import task
from comfyfleet.errors import BadInput
from comfyfleet.gateway_config import job_prefix
from comfyfleet.inventory import HostConfig, host_config
from comfyfleet.operations import docker
from comfyfleet.operations.api import ApiPaths, api_keys, fetch_api_key, stale_workflows, verify_endpoints

__all__ = ["ApiPaths", "api_spec", "deploy_api", "fetch_key_deploy", "local_artifact", "local_workflow_files"]

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKFLOW_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}(\.json|\.api\.yaml)$")


def local_artifact(data: Any) -> Path:
    """The .pyz to upload; BadInput saying how to build it when absent."""
    given = data.get("api_binary")
    path = Path(str(given)) if given else REPO_ROOT / "dist" / "comfyui-api.pyz"
    if not path.is_file():
        raise BadInput(
            f"{path}: no comfyui-api artifact; build it with scripts/build-binary (or set api_binary)"
        )
    return path


def local_workflow_files(data: Any) -> dict[str, Path]:
    """Workflow files the API serves (name → local path); anything else in the folder stays local."""
    folder = Path(str(data.get("workflows_dir") or "workflows"))
    if not folder.is_dir():
        raise BadInput(f"{folder}: workflows folder not found; set workflows_dir")
    out = {}
    for p in sorted(folder.iterdir()):
        if (
            p.is_file()
            and WORKFLOW_FILE.match(p.name)
            and not p.name.endswith((".lock.json", ".manifest.json"))
        ):
            out[p.name] = p
    return out


def api_spec(
    cfg: HostConfig, paths: ApiPaths, artifact_sha256: str, listen: str, extra: tuple[str, ...] = ()
) -> docker.ContainerSpec:
    """The comfyui-api container: the runtime image's python3 running the uploaded .pyz."""
    lay = cfg.layout
    command = (
        "python3",
        paths.pyz,
        "--comfyui-url",
        cfg.comfyui_url,
        "--workflows",
        paths.workflows,
        "--disabled-dir",
        paths.disabled,
        "--host",
        listen,
        "--port",
        str(cfg.api_port),
        "--db",
        paths.db,
        "--api-key-file",
        paths.keys,
        "--comfyui-output-dir",
        lay.output,
        *extra,
    )
    return docker.ContainerSpec(
        name=lay.api_container,
        image=cfg.runtime_image,
        command=command,
        # The artifact's hash makes a new binary a new spec: only this container is recreated.
        env=(("PYTHONUNBUFFERED", "1"), ("COMFYUI_API_SHA256", artifact_sha256)),
        mounts=(paths.dir, lay.output),
        workdir=paths.dir,
        labels=(("comfyfleet.role", "api"),),
    )


@deploy("comfyui-api service")
def deploy_api() -> None:
    """Upload the artifact (only when changed), sync workflows, keys, run the container, wait for /health."""
    cfg = host_config(host)
    artifact = local_artifact(host.data)
    sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    workflows = local_workflow_files(host.data)
    paths = ApiPaths.for_config(cfg)
    files.directory(name="API folder", path=paths.dir, mode="755")
    files.directory(name="API workflows folder", path=paths.workflows, mode="755")
    files.put(name="comfyui-api artifact", src=str(artifact), dest=paths.pyz, mode="644")
    changed = []
    for name, local in workflows.items():
        changed.append(
            files.put(name=f"workflow {name}", src=str(local), dest=f"{paths.workflows}/{name}", mode="644")
        )
    changed.append(
        stale_workflows(name="Stale workflow files", directory=paths.workflows, keep=list(workflows))
    )
    keys_file = cfg.api_keys_file
    if keys_file and not Path(str(keys_file)).is_file():
        raise BadInput(f"host {host.name}: api_keys_file {keys_file} not found")
    changed.append(
        api_keys(name="API keys", path=paths.keys, local_file=str(keys_file) if keys_file else None)
    )
    # Job ids name the host (the gateway routes /jobs/<id> by it); outputs may go to a bucket.
    extra: tuple[str, ...] = ("--job-id-prefix", job_prefix(host.name))
    if cfg.object_store_file:
        changed.append(object_store_file(host.name, cfg.object_store_file, f"{paths.dir}/object-store.json"))
        extra += ("--object-store", f"{paths.dir}/object-store.json")
    ctr = docker.container(
        name="comfyui-api container", spec=api_spec(cfg, paths, sha, cfg.api_listen, extra)
    )
    # Endpoints are built at start: new workflows or keys need a restart (unless recreated anyway).
    docker.restart(
        name="Restart comfyui-api for new workflows",
        container=cfg.layout.api_container,
        _if=lambda: any(op.did_change() for op in changed) and not ctr.did_change(),
    )
    docker.wait_http(
        name="comfyui-api health",
        url=f"{cfg.api_local_url}/health",
        container=cfg.layout.api_container,
        timeout=cfg.health_timeout,
    )


def fetch_key_deploy(local_files: Mapping[str, str]) -> Callable[[], None]:
    """A deploy copying each host's generated API key to the local file named for it.

    Hosts with ``api_keys_file`` in their data already share the operator's keys: nothing to fetch.
    """

    @deploy("API key for the operator's machine")
    def fetch_key() -> None:
        cfg = host_config(host)
        local = local_files.get(host.name)
        if cfg.api_keys_file or local is None:
            host.noop("the API keys come from api_keys_file: nothing to fetch")
            return
        fetch_api_key(
            name="Fetch the generated API key", remote_path=ApiPaths.for_config(cfg).keys, local_path=local
        )

    fetch_key.__name__ = "fetch-api-key"  # type: ignore[attr-defined]
    return cast(Callable[[], None], fetch_key)


@task("update-binary")
def update_binary_task() -> None:
    """Upload comfyui-api when its sha256 changed, sync workflows and keys, restart only the API."""
    deploy_api()


@task("restart-api-only")
def restart_api_task() -> None:
    """Restart the comfyui-api container gracefully and wait until /health answers."""
    ops.restart("api")  # type: ignore[call-arg, arg-type]  # pyinfra types @deploy functions as operations


@task("verify-endpoints")
def verify_endpoints_task() -> None:
    """Health, readiness, every workflow's schema and one real generation per workflow."""
    cfg = host_config(host)
    verify_endpoints(name="Verify comfyui-api endpoints", cfg=cfg, timeout=cfg.verify_timeout)
