"""The deploys behind a ship's compensations: node packs (install step) and the endpoint (models step).

Install: snapshot the node pack folders, then park the ones it added. Models: keep copies of the
workflow's serving files before the API step, then put them back when the downloads failed, so
callers keep the definition that worked, or get no endpoint rather than one without its models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

from comfyui_api.names import is_workflow_name
from pyinfra import host
from pyinfra.api import deploy

from comfyfleet.errors import BadInput
from comfyfleet.facts.serving import served
from comfyfleet.inventory import HostConfig, host_config
from comfyfleet.operations import comfyui, docker
from comfyfleet.operations.nodes import park_new_node_folders, record_node_folders, restart_if_down
from comfyfleet.operations.serving import keep_serving_files, put_back_serving_files


def kept_dir(cfg: HostConfig, stamp: str, workflow: str) -> str:
    """Where a ship keeps a workflow's serving files from before its API step."""
    return f"{cfg.layout.state}/endpoint-before/{stamp}/{workflow}"


def _check_name(workflow: str) -> None:
    if not is_workflow_name(workflow):  # it names files and a folder on the host
        raise BadInput(f"workflow name {workflow!r} is not valid for the API service")


def nodes_snapshot(store: dict[str, list[str]]) -> Callable[[], None]:
    """A deploy recording each host's custom_nodes folders into ``store`` (before the install step)."""

    @deploy("Node packs before the ship")
    def snapshot() -> None:
        cfg = host_config(host)
        record_node_folders(name="List custom_nodes", path=cfg.layout.custom_nodes, store=store)

    snapshot.__name__ = "nodes-snapshot"  # type: ignore[attr-defined]
    return cast(Callable[[], None], snapshot)


def park_new_nodes(before: Mapping[str, list[str]], stamp: str) -> Callable[[], None]:
    """A deploy moving node pack folders that were not there before the ship out of custom_nodes/
    (into ``<data_root>/.comfyfleet/parked-nodes/<stamp>/``, never deleted), then restarting
    ComfyUI if it does not answer, and waiting until it does."""

    @deploy("Put back the node packs")
    def put_back() -> None:
        cfg = host_config(host)
        lay = cfg.layout
        if host.name not in before:
            host.noop("no snapshot of custom_nodes: nothing to put back")
            return
        park_new_node_folders(
            name="Park node packs the ship added",
            path=lay.custom_nodes,
            parked=f"{lay.state}/parked-nodes/{stamp}",
            before=before,
        )
        restart_if_down(
            name="Restart ComfyUI if it is down", url=cfg.comfyui_url, container=lay.comfyui_container
        )
        comfyui.wait_healthy(
            name="ComfyUI health",
            url=cfg.comfyui_url,
            container=lay.comfyui_container,
            timeout=cfg.health_timeout,
        )

    put_back.__name__ = "put-back-nodes"  # type: ignore[attr-defined]
    return cast(Callable[[], None], put_back)


def endpoint_snapshot(workflow: str, stamp: str, store: dict[str, list[str]]) -> Callable[[], None]:
    """A deploy keeping copies of a workflow's serving files (before the API step) and recording
    in ``store`` which exist on each host."""
    _check_name(workflow)

    @deploy("Endpoint before the ship")
    def snapshot() -> None:
        cfg = host_config(host)
        keep_serving_files(
            name=f"Keep the serving files of {workflow}",
            api_dir=f"{cfg.layout.root}/api",
            workflow=workflow,
            kept=kept_dir(cfg, stamp, workflow),
            store=store,
        )

    snapshot.__name__ = "endpoint-snapshot"  # type: ignore[attr-defined]
    return cast(Callable[[], None], snapshot)


def put_back_endpoint(workflow: str, stamp: str, before: Mapping[str, list[str]]) -> Callable[[], None]:
    """A deploy putting a workflow's endpoint back as :func:`endpoint_snapshot` found it: the previous
    definition served again, or (not served before) the workflow stopped; then the API restarted
    (endpoints are built at its start) when a file changed, and waited for."""
    _check_name(workflow)

    @deploy("Put back the endpoint")
    def put_back() -> None:
        cfg = host_config(host)
        if host.name not in before:
            host.noop("no snapshot of the endpoint: nothing to put back")
            return
        files = put_back_serving_files(
            name=f"Put back the serving files of {workflow}",
            api_dir=f"{cfg.layout.root}/api",
            workflow=workflow,
            kept=kept_dir(cfg, stamp, workflow),
            before=before,
            stop=not served(before[host.name], workflow),
        )
        docker.restart(name="Restart comfyui-api", container=cfg.layout.api_container, _if=files.did_change)
        docker.wait_http(
            name="comfyui-api health",
            url=f"{cfg.api_local_url}/health",
            container=cfg.layout.api_container,
            timeout=cfg.health_timeout,
            _if=files.did_change,
        )

    put_back.__name__ = "put-back-endpoint"  # type: ignore[attr-defined]
    return cast(Callable[[], None], put_back)
