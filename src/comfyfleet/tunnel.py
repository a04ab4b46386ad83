"""SSH tunnels to a host's API service: the operator's HTTP requests ride the host's own SSH.

ship's checks and ``comfyfleet watch`` send a Bearer key with every request. Off the host,
plain ``http://host:3000`` would carry it in clear text, so they reach the service through
the SSH access comfyfleet already has: one SSH connection per host (opened with pyinfra's
client, :func:`comfyfleet.pyinfra_compat.ssh_client`, so ssh_config, known_hosts and the
host-key policy are exactly pyinfra's), and each HTTP connection a ``direct-tcpip``
channel to the service's address on the host (``127.0.0.1:<api_port>``, or ``api_listen``
when the service binds one address). Nothing listens on the operator's machine, so no
other local user can ride the tunnel, and no local port can be taken or raced.

Why paramiko rather than ``ssh -N -L``: the host data pyinfra connects with (``ssh_key``,
``ssh_known_hosts_file``, ``ssh_strict_host_key_checking``, ``ssh_password``, ...) applies
as it is, with no second SSH client whose config can disagree; there is no child process
to leak or to wait for, and no local port. Closing the tunnel closes its connection and
joins paramiko's thread.

:class:`SshRoute` says how to reach one host (it is recorded with a deployment, without
any password, so ``watch`` needs no inventory); :func:`open_tunnel` opens one, whose
``transport`` and ``base_url`` a :class:`comfyui_api.client.ApiClient` takes. Every error
names the host (:class:`TunnelError`; ``retry`` says whether trying again may help).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import httpcore
import httpx
import paramiko

from comfyfleet.pyinfra_compat import forget_known_hosts, ssh_client

CONNECT_TIMEOUT = 15.0
"""Seconds for the SSH handshake (TCP connect, banner, authentication)."""


class TunnelError(Exception):
    """The tunnel to a host could not be opened; the message names the host and says why.

    ``retry``: the host did not answer (it may be rebooting); False when trying again cannot
    help (authentication refused, host key mismatch).
    """

    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class SshRoute:
    """How to reach one host's API service through its SSH server.

    ``host`` is the inventory name (for messages); the ``ssh_*`` fields are pyinfra's host
    data of the same names; ``api_host``/``api_port`` is where the service answers on the
    host itself. Passwords are kept out of :meth:`record` (the registry stores no secret).
    """

    host: str
    hostname: str
    api_port: int
    api_host: str = "127.0.0.1"
    port: int | None = None
    user: str | None = None
    key: str | None = None
    known_hosts_file: str | None = None
    strict_host_key_checking: str | None = None
    config_file: str | None = None
    password: str | None = field(default=None, repr=False)
    key_password: str | None = field(default=None, repr=False)

    @classmethod
    def for_host(cls, name: str, data: Mapping[str, Any], api_host: str, api_port: int) -> SshRoute:
        """The route to a host from its (validated) inventory data and where its API answers on it."""

        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None or value == "" else str(value)

        def path(key: str) -> str | None:  # recorded for `watch`, which may run from another folder
            value = text(key)
            return None if value is None else os.path.abspath(os.path.expanduser(value))

        strict = data.get("ssh_strict_host_key_checking")
        if isinstance(strict, bool):  # an inventory may say True/False for yes/no
            strict = "yes" if strict else "no"
        return cls(
            host=name,
            hostname=text("ssh_hostname") or name.removeprefix("@ssh/"),
            api_port=int(api_port),
            api_host=api_host,
            port=int(data["ssh_port"]) if data.get("ssh_port") else None,
            user=text("ssh_user"),
            key=path("ssh_key"),
            known_hosts_file=path("ssh_known_hosts_file"),
            strict_host_key_checking=None if strict is None else str(strict),
            config_file=path("ssh_config_file"),
            password=text("ssh_password"),
            key_password=text("ssh_key_password"),
        )

    def record(self) -> dict[str, Any]:
        """What the registry keeps: everything but the passwords, ``None`` left out."""
        kept = asdict(self)
        for secret in ("password", "key_password", "host"):
            kept.pop(secret)
        return {k: v for k, v in kept.items() if v is not None}

    @classmethod
    def from_record(cls, host: str, record: Mapping[str, Any]) -> SshRoute:
        """A route the registry kept (see :meth:`record`)."""
        known = {k: v for k, v in record.items() if k in cls.__dataclass_fields__ and k != "host"}
        return cls(host=host, **known)

    @property
    def base_url(self) -> str:
        """The service's URL as seen on the host itself (requests to it go through the tunnel)."""
        address = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"http://{address}:{self.api_port}"


class _ChannelStream(httpcore.NetworkStream):
    """One HTTP connection: a direct-tcpip channel of the host's SSH connection."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._channel.settimeout(timeout)
        try:
            return self._channel.recv(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc) or "read timed out") from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._channel.settimeout(timeout)
        try:
            self._channel.sendall(buffer)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc) or "write timed out") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    def close(self) -> None:
        self._channel.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("TLS inside the SSH tunnel is not supported (SSH encrypts it)")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # httpcore asks whether a kept-alive connection was closed
            ch = self._channel
            return ch.closed or ch.eof_received or ch.recv_ready()
        return None


class _ChannelBackend(httpcore.NetworkBackend):
    """Opens channels to the route's service address only (a URL naming any other is refused)."""

    def __init__(self, route: SshRoute, transport: paramiko.Transport) -> None:
        self._route = route
        self._transport = transport

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        route = self._route
        if (host.strip("[]"), port) != (route.api_host, route.api_port):
            raise httpcore.ConnectError(
                f"host {route.host}: the SSH tunnel only reaches {route.base_url}, not {host}:{port}"
            )
        try:
            channel = self._transport.open_channel(
                "direct-tcpip", (route.api_host, route.api_port), ("127.0.0.1", 0), timeout=timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise httpcore.ConnectError(
                f"host {route.host}: through SSH, {route.base_url} did not answer ({exc or type(exc).__name__})"
            ) from exc
        return _ChannelStream(channel)


class _TunnelTransport(httpx.HTTPTransport):
    """httpx's own transport (request mapping, errors, keep-alive) over the tunnel's channels."""

    def __init__(self, backend: _ChannelBackend) -> None:
        super().__init__()
        # httpx takes no network backend; its pool, made again with ours, is what it uses.
        self._pool = httpcore.ConnectionPool(network_backend=backend, max_connections=4, keepalive_expiry=30)


@dataclass
class Tunnel:
    """An open SSH connection to one host; :attr:`transport` sends HTTP to its API service."""

    route: SshRoute
    client: paramiko.SSHClient
    transport: httpx.BaseTransport

    @property
    def base_url(self) -> str:
        return self.route.base_url

    def close(self) -> None:
        self.transport.close()
        self.client.close()


def _connect(route: SshRoute, timeout: float) -> paramiko.SSHClient:
    where = f"{route.user + '@' if route.user else ''}{route.hostname}:{route.port or 22}"
    # pyinfra memoizes known_hosts per process: `watch` runs for days, hosts get rebuilt.
    forget_known_hosts()
    try:
        return ssh_client(
            route.hostname,
            port=route.port,
            user=route.user,
            key=route.key,
            key_password=route.key_password,
            password=route.password,
            known_hosts_file=route.known_hosts_file,
            strict_host_key_checking=route.strict_host_key_checking,
            config_file=route.config_file,
            timeout=timeout,
        )
    except paramiko.AuthenticationException as exc:
        why, retry = f"SSH authentication failed ({exc})", False
    except paramiko.BadHostKeyException:
        why, retry = "its SSH host key does not match known_hosts (check it, then fix known_hosts)", False
    except paramiko.SSHException as exc:
        # pyinfra's strict policy refuses an unknown host key with an SSHException too.
        why, retry = f"SSH error: {exc}", "host key" not in str(exc)
    except (OSError, EOFError) as exc:
        why = f"could not connect: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
        retry = True
    raise TunnelError(f"host {route.host}: no SSH tunnel to its API ({where}): {why}", retry)


@contextmanager
def open_tunnel(route: SshRoute, timeout: float = CONNECT_TIMEOUT) -> Iterator[Tunnel]:
    """An SSH tunnel to a host's API service, closed (connection and thread) when the block ends."""
    client = _connect(route, timeout)
    transport = client.get_transport()
    if transport is None:  # pragma: no cover - paramiko returns one after a successful connect
        client.close()
        raise TunnelError(f"host {route.host}: SSH connected but gave no transport", True)
    tunnel = Tunnel(route, client, _TunnelTransport(_ChannelBackend(route, transport)))
    try:
        yield tunnel
    finally:
        tunnel.close()
