"""HAProxy's runtime API over its admin socket: drain a GPU host, bring it back, read the gateway's view.

The deploy reaches the socket on the gateway host through SSH (``operations/haproxy.py``,
``socat``); this module speaks to a socket on this machine (the benchmark, tests, and a
gateway that runs where comfyfleet runs).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from comfyfleet.facts.haproxy import GatewayView, ServerView, parse_view
from comfyfleet.gateway_config import BACKEND


class GatewayRefused(Exception):
    """The runtime API refused a command; the message is HAProxy's answer."""


class Runtime:
    """One admin socket (``stats socket ... level admin``)."""

    def __init__(self, path: str | Path, backend: str = BACKEND) -> None:
        self.path = str(path)
        self.backend = backend

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(self.path)
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def view(self) -> GatewayView:
        return parse_view(self.command("show stat"), self.backend)

    def servers(self) -> list[ServerView]:
        return self.view().servers

    def server(self, name: str) -> ServerView:
        for view in self.servers():
            if view.name == name:
                return view
        raise GatewayRefused(f"gateway has no server {name!r} in backend {self.backend}")

    def set_state(self, name: str, state: str) -> None:
        """``state``: ready | drain | maint."""
        answer = self.command(f"set server {self.backend}/{name} state {state}").strip()
        if answer:
            raise GatewayRefused(f"set server {name} state {state}: {answer}")

    def wait_idle(self, name: str, timeout_s: float = 900, poll_s: float = 0.1) -> None:
        """Wait until no request runs on or waits for ``name`` (after a drain)."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.server(name)
            if view.in_flight == 0 and view.queued == 0:
                return
            if time.monotonic() > deadline:
                raise GatewayRefused(
                    f"{name} still has {view.in_flight} running, {view.queued} queued "
                    f"after {timeout_s:g}s of draining"
                )
            time.sleep(poll_s)

    def wait_up(self, name: str, timeout_s: float = 60, poll_s: float = 0.1) -> None:
        deadline = time.monotonic() + timeout_s
        while (view := self.server(name)).state != "up":
            if time.monotonic() > deadline:
                raise GatewayRefused(
                    f"{name} is {view.state} (check {view.check}) {timeout_s:g}s after the update"
                )
            time.sleep(poll_s)
