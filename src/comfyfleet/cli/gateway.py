"""`comfyfleet gateway`: one HTTPS endpoint for the fleet (HAProxy on the inventory's gateway host)."""

from __future__ import annotations

import typer

from comfyfleet.cli.hosts import DryRun, InventoryData, parse_data, quiet_ssh_library, show
from comfyfleet.deploys.gateway import deploy_gateway_task, plain_http_problem
from comfyfleet.errors import BadInput
from comfyfleet.gateway import gateway_targets, set_servers
from comfyfleet.gateway_config import server_name
from comfyfleet.inventory import validate_host_data
from comfyfleet.runner import RunOptions, parallel_ssh, run

app = typer.Typer(help="The fleet's front door: HAProxy in front of the GPU hosts.", no_args_is_help=True)
InventoryArg = typer.Argument(..., help="inventory file with a 'gateway' group and the GPU hosts' group")
HostArg = typer.Argument(..., help="GPU host name as in the inventory")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="gateway")


@app.command("deploy")
def deploy(
    inventory: str = InventoryArg,
    dry_run: bool = DryRun,
    inventory_data: list[str] | None = InventoryData,
) -> None:
    """Install HAProxy on the gateway host and point it at every GPU host of the inventory.

    Example: comfyfleet gateway deploy inventory/lambda.py
    """
    gateways, backends = gateway_targets(inventory)
    for name, host_data in gateways:
        problem = plain_http_problem(backends, validate_host_data(name, host_data).gateway_plain_http)
        if problem:
            raise BadInput(f"{inventory}: {problem}")
    data = {**parse_data(inventory_data), "gateway_backends": [b.__dict__ for b in backends]}
    parallel_ssh()
    quiet_ssh_library()
    result = run(
        [(name, {**host_data, **data}) for name, host_data in gateways],
        deploy_gateway_task,
        options=RunOptions(dry_run=dry_run),
    )
    show(result)
    raise typer.Exit(result.exit_code)


@app.command("status")
def status(inventory: str = InventoryArg) -> None:
    """The gateway's view of each GPU host: up / draining / down, requests in flight and queued.

    Example: comfyfleet gateway status inventory/lambda.py
    """
    gateways, _ = gateway_targets(inventory)
    quiet_ssh_library()
    result = run(gateways, "gateway-status")
    show(result)
    raise typer.Exit(result.exit_code)


def _known(inventory: str, host: str) -> str:
    _, backends = gateway_targets(inventory)
    name = server_name(host)
    if name not in {b.name for b in backends}:
        raise BadInput(
            f"{inventory}: {host} is not behind the gateway (hosts: {', '.join(b.name for b in backends)})"
        )
    return name


@app.command("drain")
def drain(
    inventory: str = InventoryArg,
    host: str = HostArg,
    timeout: int = typer.Option(900, "--timeout", help="seconds to wait for running requests to finish"),
) -> None:
    """Stop sending new requests to one GPU host and wait until its running ones finished.

    Example: comfyfleet gateway drain inventory/lambda.py gpu-3
    """
    server = _known(inventory, host)
    quiet_ssh_library()
    result = set_servers(gateway_targets(inventory)[0], [server], "drain", "idle", timeout)
    show(result)
    raise typer.Exit(result.exit_code)


@app.command("ready")
def ready(inventory: str = InventoryArg, host: str = HostArg) -> None:
    """Send requests to a drained GPU host again (once the gateway's /ready check passes).

    Example: comfyfleet gateway ready inventory/lambda.py gpu-3
    """
    server = _known(inventory, host)
    quiet_ssh_library()
    result = set_servers(gateway_targets(inventory)[0], [server], "ready", "up", 120)
    show(result)
    raise typer.Exit(result.exit_code)
