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


def parse_show_stat(text: str, backend: str = "fleet") -> list[ServerView]:
    """Servers of ``backend`` in ``show stat`` CSV output (header line starts with '# ')."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        return []
    rows = csv.DictReader([lines[0][2:], *lines[1:]])
    views = []
    for row in rows:
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND", None):
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
    return views


def _state(status: str) -> str:
    s = status.upper()
    if s.startswith("DRAIN") or s == "NOLB":
        return "draining"
    if s.startswith("MAINT"):
        return "maint"
    if s.startswith("UP"):
        return "up" if "GOING DOWN" not in s else "draining"
    return "down"


class GatewayServers(FactBase[list[ServerView]]):
    """The GPU hosts behind the gateway (empty when HAProxy's runtime socket does not answer)."""

    @staticmethod
    def default() -> list[ServerView]:
        return []

    def requires_command(self, socket: str) -> str:
        return "socat"

    def command(self, socket: str) -> StringCommand:
        return script(_SHOW_STAT, socket)

    def process(self, output: list[str]) -> list[ServerView]:
        return parse_show_stat("\n".join(output))
