"""The fleet gateway: HAProxy on the inventory's ``gateway`` host, in front of its GPU hosts.

Inventory data
==============
On the gateway host (group ``gateway``), all optional:

key                      default     meaning
=======================  ==========  =====================================================
gateway_backend_group    gpu         inventory group whose hosts go behind the gateway
gateway_port             8443        port clients call (HTTPS when a certificate is given)
gateway_listen           0.0.0.0     address to listen on
gateway_cert_file        none        local PEM: certificate chain + private key (uploaded
                                     root-only); without it the gateway speaks plain HTTP
gateway_max_queue        64          requests waiting for a GPU before new ones get 503
gateway_queue_timeout    120         seconds a request may wait for a GPU (then 503)
gateway_retry_after      5           Retry-After seconds on those 503s
gateway_job_timeout      900         seconds a synchronous generation may take
gateway_plain_http       false       the gateway reaches its GPU hosts over plain HTTP and
                                     every request carries an API key: without this, each
                                     host's address must be a loopback or private-network IP
                                     (10/8, 172.16/12, 192.168/16, 100.64/10 as WireGuard and
                                     Tailscale use, fc00::/7); set it when a host name or public
                                     address still crosses only a network you trust

On each GPU host: ``api_port`` (3000), ``gateway_address`` (how the gateway reaches it;
default its ``ssh_hostname`` or name), ``gpu_slots`` (generations it runs at once, 1).

Every GPU host must carry the same ``api_keys_file``: keys pass through the gateway, so
one key set works on every host.

Rolling updates drain through the gateway: :func:`comfyfleet.gateway.drain_around` (the CLI passes it to
:func:`comfyfleet.runner.run`) sets each host of a batch to ``drain``, waits until nothing
runs on or waits for it, lets the batch update (the task waits for health), then sets it
``ready`` and waits until the gateway's own ``/ready`` check passes.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt

from comfyfleet.deploys.tasks import task
from comfyfleet.errors import BadInput
from comfyfleet.gateway_config import Backend, GatewaySettings, render, server_name
from comfyfleet.inventory import address_problem, host_config
from comfyfleet.operations import haproxy

GATEWAY_GROUP = "gateway"
SOCKET = haproxy.SOCKET
_INTS = {
    "gateway_port": (1, 65535),
    "gateway_max_queue": (1, 100000),
    "gateway_queue_timeout": (1, 86400),
    "gateway_retry_after": (1, 3600),
    "api_port": (1, 65535),
    "gpu_slots": (1, 64),
    "gateway_job_timeout": (1, 86400),
}


def _int(data: Any, key: str, default: int, where: str) -> int:
    value = data.get(key, default)
    low, high = _INTS[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInput(f"{where}: {key} must be a whole number from {low} to {high}, got {value!r}")
    return value


def gateway_settings(name: str, data: Any) -> GatewaySettings:
    """The gateway host's settings from its inventory data (bad values: BadInput naming the host)."""
    where = f"gateway host {name}"
    cert = data.get("gateway_cert_file")
    if cert is not None and not Path(str(cert)).is_file():
        raise BadInput(
            f"{where}: gateway_cert_file {cert} not found (one PEM with certificate chain and key)"
        )
    return GatewaySettings(
        listen=str(data.get("gateway_listen", "0.0.0.0")),
        port=_int(data, "gateway_port", 8443, where),
        pem_path=haproxy.PEM if cert else None,
        runtime_socket=SOCKET,
        max_queue=_int(data, "gateway_max_queue", 64, where),
        queue_timeout_s=_int(data, "gateway_queue_timeout", 120, where),
        retry_after_s=_int(data, "gateway_retry_after", 5, where),
        job_timeout_s=_int(data, "gateway_job_timeout", 900, where),
    )


_PRIVATE = tuple(
    ipaddress.ip_network(n)
    # RFC 1918, the shared space WireGuard/Tailscale overlays use, IPv6 unique-local. Not
    # ``is_private``: that also holds for documentation ranges, which stand for public addresses.
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def plain_http_problem(backends: list[Backend], allowed: bool) -> str | None:
    """Why the gateway must not send API keys to these hosts in plain HTTP, or None.

    HAProxy talks plain HTTP to the hosts and passes each request's key on: a key must not
    cross a network nobody vouched for (``ship`` and ``call`` hold the same rule for their
    own requests), so a host name or a public address needs ``gateway_plain_http``.
    """
    if allowed:
        return None
    for b in backends:
        try:
            ip = ipaddress.ip_address(b.address.strip("[]"))
        except ValueError:
            ip = None
        if ip is not None and (ip.is_loopback or any(ip in n for n in _PRIVATE)):
            continue
        return (
            f"host {b.name}: the gateway would send API keys to {b.address}:{b.port} in plain HTTP; set "
            "its gateway_address to its private-network IP (the provider's VPC, WireGuard, Tailscale), "
            "or gateway_plain_http: true on the gateway host if that network is one you trust"
        )
    return None


def read_pem(path: str, where: str) -> bytes:
    pem = Path(path).read_bytes()
    if b"BEGIN CERTIFICATE" not in pem or b"PRIVATE KEY" not in pem:
        raise BadInput(
            f"{where}: gateway_cert_file {path} must hold the certificate chain and its private key "
            "in one PEM file (cat fullchain.pem privkey.pem > gateway.pem)"
        )
    return pem


def backend_for(name: str, data: dict[str, Any]) -> Backend:
    slots = _int(data, "gpu_slots", 1, f"host {name}")
    port = _int(data, "api_port", 3000, f"host {name}") if "api_port" in data else 3000
    address = str(data.get("gateway_address") or data.get("ssh_hostname") or name)
    # The address is written into haproxy.cfg: only an IP or a host name, never config text.
    problem = (
        "is a pyinfra connector, not a network address"
        if address.startswith("@")
        else address_problem(address)
    )
    if problem:
        raise BadInput(f"host {name}: gateway address {address!r} {problem}; set gateway_address")
    return Backend(name=server_name(name), address=address, port=port, slots=slots)


@deploy("fleet gateway")
def deploy_gateway(backends: list[Backend] | None = None) -> None:
    """Install HAProxy + socat, the certificate, and the configuration generated for the GPU hosts.

    ``backends`` default to the ``gateway_backends`` data the CLI passes (a list of Backend fields).
    """
    cfg = host_config(host)
    if backends is None:
        backends = [Backend(**b) for b in cfg.gateway_backends or []]
    if not backends:
        raise BadInput(
            f"gateway host {host.name}: no GPU hosts given (run `comfyfleet gateway deploy INVENTORY`)"
        )
    settings = gateway_settings(host.name, cfg.model_dump())
    problem = plain_http_problem(backends, cfg.gateway_plain_http)
    if problem:
        raise BadInput(problem)
    apt.packages(name="HAProxy and socat", packages=["haproxy", "socat"], update=True, cache_time=3600)
    cert = cfg.gateway_cert_file
    if cert:
        haproxy.certificate(name="gateway certificate", pem=read_pem(str(cert), f"gateway host {host.name}"))
    haproxy.config(name="gateway configuration", content=render(backends, settings))


def deploy_gateway_task() -> None:
    """The deploy with the GPU hosts from the ``gateway_backends`` data (what the CLI runs)."""
    deploy_gateway()


@task("gateway-status")
def gateway_status_task() -> None:
    """The gateway's view of each GPU host: up / draining / down, in flight, queued."""
    haproxy.show_servers(name="gateway view", socket=SOCKET)
