"""Webhook delivery signed per the Standard Webhooks spec, retried with exponential backoff.

Headers: webhook-id (same for every attempt of one message), webhook-timestamp (unix
seconds, per attempt) and webhook-signature "v1,<base64 HMAC-SHA256 of id.timestamp.body>"
keyed with the base64 part of a "whsec_..." secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import httpx

from comfyui_api.outbound import is_blocked

log = logging.getLogger("comfyui_api.webhooks")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def secret_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header value for one attempt."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """Receiver-side check (used by tests and documented for users)."""
    msg_id, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > tolerance_s:
        return False
    expected = sign(secret, msg_id, int(ts), body).split(",", 1)[1]
    for part in headers.get("webhook-signature", "").split():
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    secret: str,
    event_type: str,
    data: dict[str, Any],
    max_attempts: int,
    backoff_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    """POST one event until a 2xx answer or attempts run out; returns what happened."""
    msg_id = "msg_" + uuid.uuid4().hex
    body = json.dumps(
        {"type": event_type, "timestamp": datetime.now(timezone.utc).isoformat(), "data": data},
        separators=(",", ":"),
    ).encode()
    last = ""
    where = redact_url(url)
    for attempt in range(1, max_attempts + 1):
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(secret, msg_id, ts, body),
            "user-agent": "comfyui-api",
        }
        try:
            r = await client.post(url, content=body, headers=headers, timeout=timeout_s)
            if 200 <= r.status_code < 300:
                return {"id": msg_id, "delivered": True, "attempts": attempt, "status": r.status_code}
            last, detail = "the receiver did not answer 2xx", f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            # What failed stays in the log: telling callers "refused" vs "timed out" maps ports.
            last, detail = "the receiver could not be reached", f"{type(exc).__name__}: {exc}"
            if is_blocked(exc):
                last = detail = "the receiver is not a public address (refused by the outbound policy)"
        detail = redact_urls(detail)  # an error's text may quote the URL (or one it was sent on to)
        log.warning("webhook %s attempt %d/%d to %s failed: %s", msg_id, attempt, max_attempts, where, detail)
        if attempt < max_attempts:
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
    return {"id": msg_id, "delivered": False, "attempts": max_attempts, "error": last}


def redact_urls(text: str) -> str:
    """``text`` with every URL in it cut down to scheme://host[:port]/… (see :func:`redact_url`)."""
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact_url(url: str) -> str:
    """scheme://host[:port]/… of a webhook URL: userinfo, paths, queries and fragments often carry tokens."""
    try:
        u = httpx.URL(url)
        return f"{u.scheme}://{u.host}{':' + str(u.port) if u.port else ''}/…"
    except (httpx.InvalidURL, ValueError):
        return "<invalid URL>"
