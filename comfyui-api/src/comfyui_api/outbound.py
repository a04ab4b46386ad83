"""Outbound HTTP (image URLs, webhooks) only to public addresses, checked where the socket connects.

Each connection resolves its host once, refuses any address that is loopback, private,
link-local (cloud metadata), multicast, reserved or unspecified unless an allow-list entry
covers it, and connects to that very address: a name that resolves to a public address at
check time and to 127.0.0.1 a moment later (DNS rebinding) never gets a socket.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import typing

import httpcore
import httpx

from comfyui_api.settings import Network


class Blocked(httpcore.ConnectError):
    """The destination resolves only to addresses the outbound policy refuses."""


def is_blocked(exc: BaseException) -> bool:
    """Whether an httpx error came from the outbound policy (httpx wraps httpcore's errors)."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        if isinstance(cur, Blocked):
            return True
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return False


def allowed(ip: str, allow: list[Network]) -> bool:
    """True for a public unicast address, or one an allow-list entry covers."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in allow):
        return True
    return addr.is_global and not addr.is_multicast


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with a resolve-check-connect step in front of every TCP connect."""

    def __init__(self, allow: list[Network]) -> None:
        self.allow = allow
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
            )
        except (OSError, asyncio.TimeoutError):
            raise httpcore.ConnectError("name does not resolve") from None
        ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        good = [ip for ip in ips if allowed(ip, self.allow)]
        if not good:
            raise Blocked("destination is not a public address (refused by the outbound policy)")
        return await self.inner.connect_tcp(
            good[0], port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise Blocked("unix sockets are not reachable from outside")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on the guarded backend (no proxies, no env)."""

    def __init__(self, allow: list[Network], max_connections: int = 512) -> None:
        super().__init__(limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64))
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=64,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(allow),
        )


def client(allow: list[Network]) -> httpx.AsyncClient:
    """The client every fetch of a caller-given URL goes through."""
    return httpx.AsyncClient(
        transport=GuardedTransport(allow),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(10.0, connect=5.0),
    )


async def check_url(url: str, allow: list[Network]) -> str | None:
    """Why url may not be fetched (early answer at request time), or None; the connect checks again."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return "not a valid URL"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "must be an http(s) URL with a host"
    if parsed.userinfo:
        return "must not carry user:password"
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(parsed.host, parsed.port or 443, type=socket.SOCK_STREAM),
            5.0,
        )
    except (OSError, asyncio.TimeoutError):
        return "host name does not resolve"
    if not any(allowed(str(i[4][0]), allow) for i in infos):
        return "points at a non-public address (loopback, private, link-local or metadata); not allowed"
    return None
