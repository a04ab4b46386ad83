"""Who is calling, and may they: Bearer keys with scopes, throttles, body caps, local-mode guards.

One ASGI middleware, in front of every route:
- keys: `Authorization: Bearer KEY`; a key's scope is "user" (its own jobs, inputs, outputs)
  or "admin" (raw /prompt, everyone's jobs). The caller's key id and scope go to
  scope["state"] for the routes (see caller()).
- the caller's address is the socket peer; X-Forwarded-For is believed only from a
  configured trusted proxy, so a header cannot buy a fresh rate-limit bucket.
- wrong keys are throttled per address (a token bucket of failures), then answered 429.
- requests that create work are rate-limited per key (per address when keyless).
- keyless local mode (loopback, no keys): the Host header must name loopback (DNS
  rebinding), a browser Origin must be loopback, and bodies must be JSON (multipart only
  for uploads), so a web page cannot drive the API with a simple cross-site POST.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfyui_api.docs import ASSET_PATHS
from comfyui_api.settings import Network, parse_networks

OPEN_PATHS = {"/health", "/ready", "/docs", "/openapi.json", *ASSET_PATHS}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}


def key_id(key: str) -> str:
    """A short, stable, non-secret name for a key (logged instead of the key)."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: key id (None without keys), admin scope, and whether a key was proven."""

    key_id: str | None
    admin: bool
    authenticated: bool
    address: str

    def owns(self, owner: str | None) -> bool:
        """May this caller see or act on something created by owner?"""
        return self.admin or owner == self.key_id


def caller(scope: Any) -> Caller:
    """The Caller the middleware recorded for this request."""
    return (scope.get("state") or {}).get("caller") or Caller(None, False, False, "")


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self) -> float:
        """0 when a token was taken, else seconds until one is available."""
        self.refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def wait(self) -> float:
        """Seconds until a token is available (0 now), without taking one."""
        self.refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class Buckets:
    """Token buckets by name, pruned of full ones when they grow past a bound."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = max(per_minute, 1) / 60.0
        self.burst = max(burst, 1)
        self.items: dict[str, TokenBucket] = {}

    def get(self, name: str) -> TokenBucket:
        bucket = self.items.get(name)
        if bucket is None:
            if len(self.items) > 10000:
                now = time.monotonic()
                self.items = {
                    k: b for k, b in self.items.items() if b.tokens + (now - b.stamp) * b.rate < b.burst
                }
            bucket = self.items[name] = TokenBucket(self.rate, self.burst)
        return bucket


async def _reject(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def _in(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def _loopback_host(value: str) -> bool:
    """A Host header or Origin host naming this machine's loopback, with any port."""
    host = value.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SecurityMiddleware:
    """Checks keys, throttles and local-mode guards before the app sees a request; caps bodies (413)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: list[str],
        required: bool,
        rate_per_minute: int,
        burst: int,
        max_body: int,
        admin_keys: list[str] | None = None,
        trusted_proxies: list[str] | None = None,
        auth_failures_per_minute: int = 10,
        local_only: bool = False,
    ) -> None:
        self.app = app
        admin = set(admin_keys or [])
        self.keys = {k.encode(): (key_id(k), k in admin) for k in [*keys, *sorted(admin - set(keys))]}
        self.required = required
        self.local_only = local_only
        self.max_body = max_body
        self.proxies = parse_networks(trusted_proxies or [])
        self.work = Buckets(rate_per_minute, burst)
        self.failures = Buckets(auth_failures_per_minute, auth_failures_per_minute)

    def _address(self, scope: Scope) -> str:
        peer = (scope.get("client") or ("anonymous",))[0]
        if not self.proxies or not _in(peer, self.proxies):
            return peer
        hops = [h.strip() for h in (_header(scope, b"x-forwarded-for") or "").split(",") if h.strip()]
        for hop in reversed(hops):  # the rightmost address no trusted proxy added
            if not _in(hop, self.proxies):
                return hop
        return peer

    def _identify(self, scope: Scope) -> tuple[str, bool] | None | bool:
        """(key id, admin) for a valid key, None without a key header, False for a wrong one."""
        value = _header(scope, b"authorization")
        if value is None:
            return None
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer":
            return False
        raw = token.strip().encode("latin-1")
        found: tuple[str, bool] | bool = False
        for key, ident in self.keys.items():
            if hmac.compare_digest(key, raw):
                found = ident
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        address = self._address(scope)
        if self.local_only:
            problem = self._local_problem(scope, path, method)
            if problem is not None:
                await _reject(send, problem[0], problem[1])
                return
        guessing = self.failures.items.get(address)
        if guessing is not None and guessing.wait() > 0 and _header(scope, b"authorization") is not None:
            # Throttled for wrong keys: every key from this address waits, the right one too.
            await _reject(
                send,
                429,
                "too many wrong API keys from this address; wait and retry",
                {"retry-after": str(max(1, math.ceil(guessing.wait())))},
            )
            return
        ident = self._identify(scope) if self.keys else None
        if ident is False:
            self.failures.get(address).take()
        if isinstance(ident, tuple):
            who = Caller(ident[0], ident[1], True, address)
        else:
            # Keyless service: the operator on loopback is trusted like an admin; nobody else is.
            who = Caller(None, not self.required and self.local_only, not self.required, address)
        if self.required and path not in OPEN_PATHS and not who.authenticated:
            await _reject(
                send,
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                {"www-authenticate": "Bearer"},
            )
            return
        scope.setdefault("state", {})["caller"] = who
        # Only requests that create work count; polling GET /jobs/{id} stays cheap and unlimited.
        if method in ("POST", "PUT", "PATCH", "DELETE") and path not in OPEN_PATHS:
            wait = self.work.get(who.key_id or address).take()
            if wait > 0:
                await _reject(
                    send,
                    429,
                    "rate limit exceeded for this API key",
                    {"retry-after": str(max(1, math.ceil(wait)))},
                )
                return
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            await _reject(send, 413, f"request body over the {self.max_body} byte limit")
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await _reject(send, 413, f"request body over the {self.max_body} byte limit")

    def _local_problem(self, scope: Scope, path: str, method: str) -> tuple[int, str] | None:
        """Why a keyless loopback service refuses this request (a browser was made to send it), or None."""
        host = _header(scope, b"host")
        if host is None or not _loopback_host(host):
            return 421, "this keyless service answers only requests addressed to localhost / 127.0.0.1"
        origin = _header(scope, b"origin")
        if origin is not None and origin != "null" and not _loopback_host(origin.split("://", 1)[-1]):
            return 403, "cross-site requests are refused (the Origin is not this machine)"
        if origin == "null":
            return 403, "cross-site requests are refused (opaque Origin)"
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            ctype = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
            length = _header(scope, b"content-length")
            has_body = (length is not None and length.strip() not in ("", "0")) or _header(
                scope, b"transfer-encoding"
            )
            wanted = (
                ("application/json", "multipart/form-data")
                if path == "/upload/image"
                else ("application/json",)
            )
            if has_body and ctype not in wanted:
                return 415, f"send the body as {' or '.join(wanted)}"
        return None


class BodyTooLarge(Exception):
    pass
