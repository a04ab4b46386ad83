"""Whether a deployment's hosts serve its workflow: the host side of `deployments stop/start`.

The marker ``<data_root>/api/disabled/<workflow>`` is what stops a workflow: the API
service (started with ``--disabled-dir``) checks that folder on every request, answers
404 "stopped" for a marked workflow and leaves it out of /openapi.json, and
``verify-endpoints`` reports it as stopped, so a ``deploy-all`` or ``--update-binary``
run by hand does not serve it again. A soft stop also parks the workflow's files in
``<data_root>/api/stopped/`` and restarts only the API container (needed for hosts whose
API predates the markers); every other workflow keeps being served, ComfyUI and the
models stay as they are, and nothing is deleted. ``start`` removes the marker and moves
the files back.
"""

from __future__ import annotations

from typing import Any

from comfyui_api.names import is_workflow_name
from pyinfra import host
from pyinfra.api import deploy

from comfyfleet.errors import BadInput
from comfyfleet.inventory import host_config
from comfyfleet.operations import docker
from comfyfleet.operations.serving import marker, parked, repark


def serving_deploy(workflow: str, served: bool) -> Any:
    """A pyinfra deploy that serves or stops one workflow on the current host."""
    if not is_workflow_name(workflow):
        raise BadInput(f"workflow name {workflow!r} is not valid for the API service")

    @deploy(f"{'Serve' if served else 'Stop serving'} {workflow}")
    def switch() -> None:
        cfg = host_config(host)
        api_dir = f"{cfg.layout.root}/api"
        moved = parked(
            name=f"{'Serve' if served else 'Park'} workflow {workflow}",
            api_dir=api_dir,
            workflow=workflow,
            served=served,
        )
        marker(name=f"Stop marker of {workflow}", api_dir=api_dir, workflow=workflow, stopped=not served)
        # update-binary uploads the whole local workflows folder, stopped workflows included; the
        # API ignores them by marker, and parking them again keeps hosts with an older API right.
        others = repark(name="Keep stopped workflows stopped", api_dir=api_dir, keep=workflow)

        def changed() -> bool:
            return moved.did_change() or others.did_change()

        # Endpoints are built at start: only the API restarts, and only when files moved.
        docker.restart(name="Restart comfyui-api", container=cfg.layout.api_container, _if=changed)
        docker.wait_http(
            name="comfyui-api health",
            url=f"{cfg.api_local_url}/health",
            container=cfg.layout.api_container,
            timeout=cfg.health_timeout,
            _if=changed,
        )

    switch.__name__ = f"{'serve' if served else 'stop'}-{workflow}"  # type: ignore[attr-defined]
    return switch
