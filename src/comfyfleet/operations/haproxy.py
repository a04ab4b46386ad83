"""The fleet gateway on its host: HAProxy's configuration and certificate, and runtime commands.

Each operation mirrors a fact in ``facts/haproxy.py`` or pyinfra's file facts: read, decide,
yield commands (or ``host.noop``). Runtime commands go to the admin socket through ``socat``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator
from io import BytesIO
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation
from pyinfra.facts.files import Sha256File

from comfyfleet.context import report
from comfyfleet.facts.haproxy import GatewayServers
from comfyfleet.shell import script

CONFIG = "/etc/haproxy/haproxy.cfg"
PEM = "/etc/haproxy/certs/fleet.pem"
SOCKET = "/run/haproxy/admin.sock"
WAITING_ROW = "(any host)"  # the status row of requests queued for whichever host frees up first

# Validate the new file with haproxy itself before it replaces the running one, then reload
# (systemd on a real host; Debian's init script where there is none, as in containers).
_SWAP_AND_RELOAD = r"""
set -e
haproxy -c -q -f "$1" || { echo "new gateway configuration refused by haproxy -c; kept the old one" >&2; exit 1; }
mv "$1" "$2"
if [ -d /run/systemd/system ]; then
  systemctl enable -q haproxy
  systemctl reload-or-restart haproxy
elif service haproxy status >/dev/null 2>&1; then
  service haproxy reload
else
  service haproxy start
fi
"""

_START_IF_STOPPED = r"""
if [ -d /run/systemd/system ]; then systemctl is-active -q haproxy || systemctl start haproxy
else service haproxy status >/dev/null 2>&1 || service haproxy start; fi
"""

_SET_STATE = r"""
out=$(printf 'set server %s/%s state %s\n' "$2" "$3" "$4" | socat -t 5 stdio "UNIX-CONNECT:$1") || {
  echo "gateway runtime socket $1 does not answer: is haproxy running?" >&2; exit 1; }
[ -z "$out" ] || { echo "gateway refused: $out" >&2; exit 1; }
"""

# Poll 'show stat' until the server has nothing running (scur, column 5) or queued (qcur, 3).
_WAIT_IDLE = r"""
end=$(( $(date +%s) + $5 ))
while :; do
  row=$(printf 'show stat\n' | socat -t 5 stdio "UNIX-CONNECT:$1" | awk -F, -v p="$2" -v s="$3" '$1 == p && $2 == s')
  [ -n "$row" ] || { echo "gateway has no server $3 in backend $2" >&2; exit 1; }
  want=$4
  if [ "$want" = idle ]; then
    echo "$row" | awk -F, '{exit !($3 == 0 && $5 == 0)}' && exit 0
  else
    echo "$row" | awk -F, '{exit !($18 ~ /^UP/)}' && exit 0
  fi
  [ "$(date +%s)" -lt "$end" ] || { echo "gateway: $3 not $want after $5 s ($(echo "$row" | cut -d, -f3,5,18))" >&2; exit 1; }
  sleep 0.2
done
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@operation()
def config(content: str, path: str = CONFIG, socket: str = SOCKET) -> Generator[Any, None, None]:
    """Install a new haproxy.cfg when it differs, checked by ``haproxy -c`` before it is used, then reload.

    + content: the whole configuration (``comfyfleet.gateway_config.render``)
    + path: where HAProxy reads it
    + socket: its admin socket; a current configuration whose socket does not answer is started

    Example: ``haproxy.config(name="gateway configuration", content=render(backends, settings))``
    """
    data = content.encode()
    if host.get_fact(Sha256File, path=path) == _sha256(data):
        if host.get_fact(GatewayServers, socket=socket):
            host.noop("gateway configuration is current and HAProxy runs it")
        else:
            yield script(_START_IF_STOPPED)
        return
    new = path + ".new"
    yield FileUploadCommand(BytesIO(data), new)
    yield script('chmod 644 "$1"', new)
    yield script(_SWAP_AND_RELOAD, new, path)


@operation()
def certificate(pem: bytes, path: str = PEM) -> Generator[Any, None, None]:
    """Install the operator's certificate chain + private key (one PEM, root-only) when it changed.

    + pem: certificate, intermediates and key, concatenated
    + path: where ``bind ... ssl crt`` reads it
    """
    if host.get_fact(Sha256File, path=path) == _sha256(pem):
        host.noop("gateway certificate is current")
        return
    yield script('install -d -m 700 "$(dirname "$1")"; umask 077; : > "$1"', path)
    yield FileUploadCommand(BytesIO(pem), path)
    yield script('chmod 600 "$1"', path)


@operation(is_idempotent=False)
def server_state(socket: str, backend: str, server: str, state: str) -> Generator[Any, None, None]:
    """Set one GPU host's state at the gateway: ``drain`` (no new requests), ``ready``, ``maint``.

    + socket: HAProxy's admin socket on the gateway host
    + backend, server: names from the generated configuration
    + state: drain | ready | maint
    """
    if state not in ("drain", "ready", "maint"):
        raise ValueError(f"state {state!r}")
    yield script(_SET_STATE, socket, backend, server, state)


@operation(is_idempotent=False)
def wait_server(
    socket: str, backend: str, server: str, until: str, timeout_s: int
) -> Generator[Any, None, None]:
    """Wait until a GPU host is ``idle`` (nothing running or queued: drained) or ``up`` (checks pass).

    + until: idle | up
    + timeout_s: fail the operation after this many seconds
    """
    yield script(_WAIT_IDLE, socket, backend, server, until, timeout_s)


@operation()
def show_servers(socket: str) -> Generator[Any, None, None]:
    """Put the gateway's view of every GPU host into the report: state, in flight, queued, last check."""
    view = host.get_fact(GatewayServers, socket=socket)
    rows = [[v.name, v.state, str(v.in_flight), str(v.queued), v.check] for v in view.servers]
    if rows:
        rows.append([WAITING_ROW, "-", "-", str(view.waiting), "-"])
    report(host).table(
        "gateway",
        ["host", "state", "in flight", "queued", "last check"],
        rows or [["(no answer from the runtime socket)", "down", "-", "-", "-"]],
    )
    host.noop("gateway status read")
    return
    yield
