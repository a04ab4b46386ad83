"""The deploys behind a ship's install compensation: snapshot node packs, then park the ones it added."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

from pyinfra import host
from pyinfra.api import deploy

from comfyfleet.inventory import host_config
from comfyfleet.operations import comfyui
from comfyfleet.operations.nodes import park_new_node_folders, record_node_folders, restart_if_down


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
