"""The fleet gateway as a target: which hosts serve behind it, and draining them around a rolling batch.

The HAProxy deploy itself (install, certificate, configuration, runtime-API operations) is
:mod:`comfyfleet.deploys.gateway`; this module runs those operations on the gateway hosts
through :mod:`comfyfleet.runner`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from comfyfleet.deploys.gateway import GATEWAY_GROUP, SOCKET, backend_for
from comfyfleet.errors import BadInput
from comfyfleet.gateway_config import BACKEND, Backend, server_name
from comfyfleet.operations import haproxy
from comfyfleet.runner import HostSpec, RunOptions, RunResult, load_target, run


def inventory_with_gateway(target: str) -> str | None:
    """The inventory file of ``target`` (FILE or FILE:GROUP) when it has a gateway group, else None."""
    path = target if Path(target).is_file() else target.rpartition(":")[0]
    if not path or not Path(path).is_file():
        return None
    try:
        load_target(f"{path}:{GATEWAY_GROUP}")
    except BadInput:
        return None
    return path


def gateway_targets(inventory_file: str) -> tuple[list[HostSpec], list[Backend]]:
    """The gateway hosts and the GPU hosts behind them, from one inventory file."""
    if not Path(inventory_file).is_file():
        raise BadInput(
            f"inventory file {inventory_file} not found: the gateway needs an inventory with a "
            f"'{GATEWAY_GROUP}' group and its GPU hosts"
        )
    gateways = load_target(f"{inventory_file}:{GATEWAY_GROUP}")
    if not gateways:
        raise BadInput(
            f"{inventory_file}: no '{GATEWAY_GROUP}' group; add one with the host that runs HAProxy"
        )
    group = str(gateways[0][1].get("gateway_backend_group", "gpu"))
    gpu_hosts = load_target(f"{inventory_file}:{group}")
    return gateways, [backend_for(n, d) for n, d in gpu_hosts]


def _state_task(server: str, state: str, wait: str, timeout_s: int) -> Callable[[], None]:
    def set_state() -> None:
        haproxy.server_state(
            name=f"{server}: {state}", socket=SOCKET, backend=BACKEND, server=server, state=state
        )
        haproxy.wait_server(
            name=f"{server}: wait {wait}",
            socket=SOCKET,
            backend=BACKEND,
            server=server,
            until=wait,
            timeout_s=timeout_s,
        )

    return set_state


def set_servers(
    gateways: list[HostSpec], servers: list[str], state: str, wait: str, timeout_s: int
) -> RunResult:
    """Set ``servers`` to ``state`` on every gateway host, then wait until each is ``wait`` (idle | up)."""

    def task_fn() -> None:
        for server in servers:
            _state_task(server, state, wait, timeout_s)()

    return run(gateways, task_fn, options=RunOptions(serial=True))


def drain_around(
    inventory_file: str, drain_timeout_s: int = 900
) -> Callable[[list[str]], AbstractContextManager[None]]:
    """A context per rolling batch: drain its hosts at the gateway before, put them back after."""
    gateways, _ = gateway_targets(inventory_file)

    @contextmanager
    def drained(hosts: list[str]) -> Iterator[None]:
        servers = [server_name(h) for h in hosts]
        drained_ = set_servers(gateways, servers, "drain", "idle", drain_timeout_s)
        if not drained_.ok:
            reasons = "; ".join(f"{h.host}: {h.reason}" for h in drained_.hosts if not h.ok)
            raise BadInput(f"gateway could not drain {', '.join(hosts)} ({reasons}); nothing was updated")
        try:
            yield
        finally:
            # Back in rotation; the gateway's own /ready check keeps a host out until it passes.
            set_servers(gateways, servers, "ready", "up", 120)

    return drained
