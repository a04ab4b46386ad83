"""Bearer API keys, a per-key token-bucket rate limit and a request size cap, as one ASGI middleware."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfyui_api.docs import ASSET_PATHS

OPEN_PATHS = {"/health", "/ready", "/docs", "/openapi.json", *ASSET_PATHS}


def key_id(key: str) -> str:
    """A short, stable, non-secret name for a key (logged instead of the key)."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


async def _reject(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


class SecurityMiddleware:
    """Checks keys and rate before the app sees a request; caps request bodies (413)."""

    def __init__(self, app: ASGIApp, keys: list[str], required: bool, rate_per_minute: int, burst: int,
                 max_body: int) -> None:
        self.app = app
        self.keys = {k.encode(): key_id(k) for k in keys}
        self.required = required
        self.rate = max(rate_per_minute, 1) / 60.0
        self.burst = max(burst, 1)
        self.max_body = max_body
        self.buckets: dict[str, TokenBucket] = {}

    def _identify(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return None
                token = token.strip()
                for key, kid in self.keys.items():
                    if hmac.compare_digest(key, token):
                        return kid
                return None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        kid = self._identify(scope) if self.keys else None
        if self.required and path not in OPEN_PATHS:
            if kid is None:
                await _reject(send, 401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                              {"www-authenticate": "Bearer"})
                return
        scope.setdefault("state", {})["key_id"] = kid
        # Only requests that create work count; polling GET /jobs/{id} stays cheap and unlimited.
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE") and path not in OPEN_PATHS:
            bucket_key = kid or (scope.get("client") or ("anonymous",))[0]
            bucket = self.buckets.get(bucket_key)
            if bucket is None:
                if len(self.buckets) > 10000:
                    # Anonymous callers (by address) could grow this without end: drop full buckets.
                    now = time.monotonic()
                    self.buckets = {k: b for k, b in self.buckets.items()
                                    if b.tokens + (now - b.stamp) * b.rate < b.burst}
                bucket = self.buckets[bucket_key] = TokenBucket(self.rate, self.burst)
            wait = bucket.take()
            if wait > 0:
                await _reject(send, 429, "rate limit exceeded for this API key",
                              {"retry-after": str(max(1, math.ceil(wait)))})
                return
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        if length is not None and length > self.max_body:
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


class BodyTooLarge(Exception):
    pass


def describe(scope: Any) -> str | None:
    return (scope.get("state") or {}).get("key_id")
