"""The fleet's front door as an HAProxy configuration: one HTTPS endpoint, one backend per GPU host.

Why HAProxy (Debian bookworm ships 2.6 LTS; Caddy 2.6 too): a GPU runs one generation at a
time, and HAProxy's per-server ``maxconn`` + queue is exactly "one job per GPU, the rest wait
in line"; ``http-check`` on ``/ready`` takes a host out before it fails requests; the runtime
API (``set server ... state drain``, ``show stat``) lets a rolling update drain a host and
gives ``--status`` in-flight and queued counts. Caddy's automatic HTTPS is its strength, but
its reverse proxy has no per-upstream queue and no drain command.

What the rendered configuration does
    - ``bind :<port> ssl crt <pem>``: TLS with the operator's certificate (cert + key in one
      file, root-only); plain HTTP only when no certificate is given (tests, a private net).
    - ``server <name> <address>:<api_port> maxconn <slots> check``: at most ``slots``
      requests on a host at once, the rest queue at the gateway for ``queue_timeout_s``.
    - bounded queue: once ``max_queue`` requests wait, new ones get ``503`` + ``Retry-After``
      at once; a queued request that waited ``queue_timeout_s`` gets the same 503.
    - health: ``GET /ready`` every ``check_interval_s``; two failures take a host out, two
      successes bring it back.
    - failover: a request that could not be sent (connection refused) goes to another host;
      ``GET``/``HEAD`` requests are also retried after an empty or 502/503 answer. A ``POST``
      whose host died mid-request is not replayed (it may have run): the client gets 502
      with a JSON body saying so.
    - the relay: clients keep their (TLS) connections open, but HAProxy 2.6 answers a request
      that was not the first on its client connection, and whose host died before answering,
      by closing that connection without a word ("the client is required to retry", even for
      a POST; ``http_wait_for_response`` in src/http_ana.c, fixed upstream in 3.0 for fresh
      server connections only). So the client-facing frontend hands each request over a fresh
      local connection (``relay``, a unix socket next to the admin socket) to the frontend in
      front of the GPU hosts; there every request is the first on its connection and on its
      host connection, so a dead host always gives a retry (GET/HEAD) or a clear 502 (POST).
    - a host killed between its headers and its body: HAProxy retries nothing once it has a
      response's headers, so an answer up to 8 KiB is held until its body is complete; a cut one
      becomes the clear 502, which the relay sends once more for a GET/HEAD (the hosts' side
      then picks a host that is up). A larger body that is cut stays cut: the client sees a
      short read against Content-Length.
    - async jobs: comfyui-api on each host prefixes its job ids with ``<server>-``
      (``--job-id-prefix``); ``/jobs/<server>-...`` goes to that host, or answers 503 naming
      the host while it is down.
    - API keys pass through: every host carries the same key file (``api_keys_file``), so
      one key set works whichever host serves a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from comfyfleet.errors import BadInput

BACKEND = "fleet"
RELAY = "relay"
_HOLD_BYTES = 8192  # answers up to this size reach the client only once complete
_NAME = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class Backend:
    """One GPU host as the gateway sees it."""

    name: str  # server name in HAProxy and job id prefix on the host
    address: str
    port: int
    slots: int = 1


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's own knobs (inventory data of the ``gateway`` group, all optional)."""

    listen: str = "0.0.0.0"
    port: int = 8443
    pem_path: str | None = None
    runtime_socket: str = "/run/haproxy/admin.sock"
    max_queue: int = 64
    queue_timeout_s: int = 120
    retry_after_s: int = 5
    check_interval_ms: int = 2000
    job_timeout_s: int = 900


def server_name(host_name: str) -> str:
    """An HAProxy server name (and job id prefix) for an inventory host: lower-case a-z, 0-9, '-'."""
    name = _NAME.sub("-", host_name.lower()).strip("-")[:24]
    if not name:
        raise BadInput(f"host {host_name!r}: no letters or digits to name it at the gateway; rename the host")
    return name


def job_prefix(host_name: str) -> str:
    """What comfyui-api on that host starts its job ids with."""
    return server_name(host_name) + "-"


def relay_socket(settings: GatewaySettings) -> str:
    """The local socket between the client-facing frontend and the one in front of the GPU hosts."""
    return str(PurePosixPath(settings.runtime_socket).parent / "fleet-relay.sock")


def _problem(status: int, detail: str) -> str:
    # HAProxy 'string' arguments: no single quotes inside, JSON only double quotes.
    return '\'{"detail": "' + detail.replace("'", "") + '", "status": ' + str(status) + "}'"


def render(backends: list[Backend], settings: GatewaySettings) -> str:
    """haproxy.cfg for these hosts; names must be unique (two hosts map to one name: BadInput)."""
    if not backends:
        raise BadInput("no GPU hosts for the gateway: the inventory's target group is empty")
    seen: dict[str, Backend] = {}
    for b in backends:
        if b.name in seen:
            raise BadInput(
                f"hosts {seen[b.name].address}:{seen[b.name].port} and {b.address}:{b.port} both map to "
                f"gateway name {b.name!r}; rename one"
            )
        seen[b.name] = b
    s = settings
    retry = f"hdr Retry-After {s.retry_after_s}"
    tls = f" ssl crt {s.pem_path} alpn http/1.1" if s.pem_path else ""
    full = _problem(503, f"every GPU host is busy and {s.max_queue} requests already wait; retry later")
    none_up = _problem(503, "no GPU host is ready; retry later")
    failed = _problem(
        502, "the GPU host failed while handling the request; it was not retried (it may have run)"
    )
    lines = [
        "# Generated by comfyfleet (deploys/gateway.py) from the inventory; edits are overwritten.",
        "global",
        f"    stats socket {s.runtime_socket} mode 600 level admin",
        "    stats timeout 30s",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 3s",
        "    timeout client 60s",
        f"    timeout server {s.job_timeout_s}s",
        f"    timeout queue {s.queue_timeout_s}s",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 30s",
        "",
        "frontend gateway",
        f"    bind {s.listen}:{s.port}{tls}",
        f"    http-request return status 503 content-type application/json {retry} string {none_up}"
        f" if {{ nbsrv({BACKEND}) eq 0 }}",
        f"    http-request return status 503 content-type application/json {retry} string {full}"
        f" if {{ queue({BACKEND}) ge {s.max_queue} }}",
    ]
    for b in backends:
        gone = _problem(503, f"host {b.name} that ran this job is not reachable now; retry later")
        lines.append(
            f"    http-request return status 503 content-type application/json {retry} string {gone}"
            f" if {{ path_beg /jobs/{b.name}- }} !{{ srv_is_up({BACKEND}/{b.name}) }}"
        )
    relay = relay_socket(s)
    lines += [
        f"    default_backend {RELAY}",
        "",
        "# One fresh local connection per request (see comfyfleet.gateway_config: the relay).",
        f"backend {RELAY}",
        "    http-reuse never",
        "    option http-server-close",
        # A GET/HEAD the hosts' side answered 502 (its host died, even after sending headers) is
        # sent once more: the hosts' side picks a host that is still up.
        "    retries 1",
        "    retry-on conn-failure 502",
        "    http-request disable-l7-retry unless METH_GET || METH_HEAD",
        f"    timeout server {s.queue_timeout_s + s.job_timeout_s + 10}s",
        f"    server relay unix@{relay}",
        "",
        f"frontend {BACKEND}-hosts",
        f"    bind unix@{relay} mode 600",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance leastconn",
        # Each request on its own host connection: never one the host may have closed meanwhile.
        "    option http-server-close",
        "    option httpchk",
        # HTTP/1.1 with a Host: a keyless comfyui-api on loopback answers only requests addressed to localhost.
        "    http-check send meth GET uri /ready ver HTTP/1.1 hdr Host localhost",
        "    http-check expect status 200",
        "    option redispatch 1",
        "    retries 3",
        "    retry-on conn-failure empty-response 502 503 response-timeout",
        "    http-request disable-l7-retry unless METH_GET || METH_HEAD",
        f"    http-error status 503 content-type application/json {retry} string "
        + _problem(503, "no GPU host took the request in time; retry later"),
        f"    http-error status 502 content-type application/json string {failed}",
        # A refused connection marks the host down at once (no wait for the next check), so
        # retries go elsewhere; the periodic /ready check brings it back.
        f"    default-server inter {s.check_interval_ms} fall 2 rise 2 observe layer4 error-limit 1 on-error mark-down",
    ]
    lines += [
        # A host that dies after its headers but before its body: HAProxy cannot retry once it has
        # the headers, so a small answer is held until its body is complete, and a cut one becomes
        # the clear 502 above (which the relay retries for a GET). Larger bodies stream as they come.
        f"    http-response wait-for-body time 10s at-least {_HOLD_BYTES}",
        "    http-response set-var(txn.body_size) res.body_size",
        f"    http-response return status 502 content-type application/json string {failed}"
        f" if {{ res.body_len,sub(txn.body_size) lt 0 }} {{ res.body_len lt {_HOLD_BYTES} }}",
    ]
    for b in backends:
        lines.append(f"    use-server {b.name} if {{ path_beg /jobs/{b.name}- }}")
    for b in backends:
        lines.append(f"    server {b.name} {b.address}:{b.port} maxconn {b.slots} check")
    return "\n".join(lines) + "\n"
