"""Putting back what a failed node install added: snapshot the pack folders, park the new ones.

Parked folders move to ``<data_root>/.comfyfleet/parked-nodes/<stamp>/``; nothing is deleted.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, MutableMapping
from typing import Any

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from comfyfleet.facts.comfyui import HttpStatus
from comfyfleet.facts.nodes import NodeFolders


@operation(is_idempotent=False)
def record_node_folders(path: str, store: MutableMapping[str, list[str]]) -> Generator[Any, None, None]:
    """Record the host's node pack folders in ``store[host name]`` (runs no command on the host).

    + path: the custom_nodes folder
    + store: where the snapshot goes, per host name
    """
    store[host.name] = list(host.get_fact(NodeFolders, path=path))
    host.noop(f"{len(store[host.name])} node pack folder(s) before the ship")
    yield from ()


@operation(is_idempotent=False)
def park_new_node_folders(
    path: str, parked: str, before: Mapping[str, list[str]]
) -> Generator[Any, None, None]:
    """Move the pack folders that are not in the host's snapshot out of custom_nodes/.

    + path: the custom_nodes folder
    + parked: the folder they move to
    + before: the snapshot taken by :func:`record_node_folders`
    """
    keep = set(before.get(host.name, []))
    new = [name for name in host.get_fact(NodeFolders, path=path) if name not in keep]
    if not new:
        host.noop("no node pack folder was added")
        return
    yield StringCommand("mkdir", "-p", QuoteString(parked))
    for name in new:
        yield StringCommand("mv", QuoteString(f"{path}/{name}"), QuoteString(f"{parked}/{name}"))


@operation(is_idempotent=False)
def restart_if_down(url: str, container: str) -> Generator[Any, None, None]:
    """Restart ComfyUI's container when its /system_stats does not answer 200.

    + url: ComfyUI's base URL on the host
    + container: the runtime container
    """
    if host.get_fact(HttpStatus, url=f"{url}/system_stats") == 200:
        host.noop("ComfyUI answers: not restarted")
        return
    yield StringCommand("docker", "restart", "-t", "30", QuoteString(container))
