"""Facts about the fleet gateway: HAProxy's view of each GPU host, read from its runtime API."""

from __future__ import annotations

import csv
from dataclasses import dataclass

from pyinfra.api import FactBase, StringCommand

from comfyfleet.shell import script

_SHOW_STAT = 'printf "show stat\\n" | socat -t 5 stdio "UNIX-CONNECT:$1" 2>/dev/null || true'


@dataclass(frozen=True)
class ServerView:
    """One GPU host as the gateway sees it: state, requests running on it, requests queued for it."""

    name: str
    state: str  # up | draining | down | maint (HAProxy's status, simplified)
    in_flight: int
    queued: int
    check: str  # last health check result, e.g. "L7OK" or "L4CON"


@dataclass(frozen=True)
class GatewayView:
    """The gateway's view: each GPU host, and the requests waiting for whichever host frees up first.

    A request that may go to any host waits in the backend's queue, not a host's (HAProxy puts a
    request in a server's own queue only when it must go to that server: ``/jobs/<host>-...``).
    """

    servers: list[ServerView]
    waiting: int  # in the backend's queue, for any host

    def __bool__(self) -> bool:
        return bool(self.servers)


def parse_view(text: str, backend: str = "fleet") -> GatewayView:
    """Servers and the backend's queue of ``backend`` in ``show stat`` CSV output."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        return GatewayView([], 0)
    rows = csv.DictReader([lines[0][2:], *lines[1:]])
    views = []
    waiting = 0
    for row in rows:
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", None):
            continue
        if row.get("svname") == "BACKEND":
            waiting = int(row.get("qcur") or 0)
            continue
        views.append(
            ServerView(
                name=row["svname"],
                state=_state(row.get("status", "")),
                in_flight=int(row.get("scur") or 0),
                queued=int(row.get("qcur") or 0),
                check=row.get("check_status") or "",
            )
        )
    return GatewayView(views, waiting)


def _state(status: str) -> str:
    s = status.upper()
    if s.startswith("DRAIN") or s == "NOLB":
        return "draining"
    if s.startswith("MAINT"):
        return "maint"
    if s.startswith("UP"):
        return "up" if "GOING DOWN" not in s else "draining"
    return "down"


class GatewayServers(FactBase[GatewayView]):
    """The GPU hosts behind the gateway and the requests waiting for any of them (no servers, false,
    when HAProxy's runtime socket does not answer)."""

    @staticmethod
    def default() -> GatewayView:
        return GatewayView([], 0)

    def requires_command(self, socket: str) -> str:
        return "socat"

    def command(self, socket: str) -> StringCommand:
        return script(_SHOW_STAT, socket)

    def process(self, output: list[str]) -> GatewayView:
        return parse_view("\n".join(output))
