"""Outputs in an S3-compatible bucket (AWS S3, Cloudflare R2, Backblaze B2, MinIO): upload, then a URL.

One JSON file configures a deployment's store; it holds the credentials, so it lives root-only
on the host (like the API keys) and is never passed on a command line::

    {"endpoint": "https://s3.eu-central-1.amazonaws.com", "region": "eu-central-1",
     "bucket": "renders", "prefix": "comfy/", "access_key_id": "AKIA...",
     "secret_access_key": "...", "public_base_url": null, "presign_expires_s": 3600}

Objects are addressed path-style (``<endpoint>/<bucket>/<key>``), which every S3-compatible
server accepts. A private bucket (no ``public_base_url``) gets presigned GET URLs valid for
``presign_expires_s``; a public one gets ``<public_base_url>/<key>``. Requests are signed with
AWS Signature Version 4, written here in the standard library so the single-file build needs
no botocore.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from comfyui_api.settings import ConfigError

ALGORITHM = "AWS4-HMAC-SHA256"
_REQUIRED = ("endpoint", "bucket", "access_key_id", "secret_access_key")


class UploadFailed(Exception):
    """The bucket refused or could not be reached; the message has its status and error code."""


@dataclass(frozen=True)
class ObjectStore:
    """Where outputs go and how to sign for them."""

    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"
    prefix: str = ""
    public_base_url: str | None = None
    presign_expires_s: int = 3600

    def __repr__(self) -> str:  # never print the secret
        return f"ObjectStore(endpoint={self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def object_url(self, key: str) -> str:
        return f"{self.endpoint}/{self.bucket}/{_quote(self.prefix + key)}"

    async def upload(self, key: str, data: bytes, content_type: str) -> str:
        """PUT one object, then return the URL a client downloads it from.

        The bucket is the operator's (it may sit on a private network), so this is not the
        client that keeps caller-given URLs away from private addresses.
        """
        url = self.object_url(key)
        headers = {"content-type": content_type, "content-length": str(len(data))}
        signed = self.sign("PUT", url, headers, hashlib.sha256(data).hexdigest())
        async with httpx.AsyncClient(timeout=60, follow_redirects=False) as client:
            response = await client.put(url, content=data, headers=signed)
        if response.status_code >= 300:
            code = _error_code(response.text)
            raise UploadFailed(
                f"bucket {self.bucket}: PUT {key} answered {response.status_code} {code}".rstrip()
            )
        if self.public_base_url:
            return f"{self.public_base_url.rstrip('/')}/{_quote(self.prefix + key)}"
        return self.presign("GET", url, self.presign_expires_s)

    def sign(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        payload_sha256: str,
        now: dt.datetime | None = None,
    ) -> dict[str, str]:
        """Headers for a request signed in the Authorization header."""
        stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
        parts = urllib.parse.urlsplit(url)
        all_headers = {k.lower(): v.strip() for k, v in headers.items()}
        all_headers.update(
            {"host": parts.netloc, "x-amz-date": stamp, "x-amz-content-sha256": payload_sha256}
        )
        names = sorted(all_headers)
        canonical = "\n".join(
            [
                method,
                parts.path or "/",
                _canonical_query(parts.query),
                "".join(f"{n}:{all_headers[n]}\n" for n in names),
                ";".join(names),
                payload_sha256,
            ]
        )
        scope, signature = self._signature(stamp, canonical)
        all_headers["authorization"] = (
            f"{ALGORITHM} Credential={self.access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        del all_headers["host"]
        return all_headers

    def presign(self, method: str, url: str, expires_s: int, now: dt.datetime | None = None) -> str:
        """A URL that allows ``method`` on one object, without credentials, for ``expires_s`` seconds."""
        stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
        parts = urllib.parse.urlsplit(url)
        query = {
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{self.access_key_id}/{self._scope(stamp)}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(max(1, min(expires_s, 604800))),
            "X-Amz-SignedHeaders": "host",
        }
        query_string = _canonical_query(urllib.parse.urlencode(query))
        canonical = "\n".join(
            [method, parts.path, query_string, f"host:{parts.netloc}\n", "host", "UNSIGNED-PAYLOAD"]
        )
        _, signature = self._signature(stamp, canonical)
        return f"{parts.scheme}://{parts.netloc}{parts.path}?{query_string}&X-Amz-Signature={signature}"

    def _scope(self, stamp: str) -> str:
        return f"{stamp[:8]}/{self.region}/s3/aws4_request"

    def _signature(self, stamp: str, canonical_request: str) -> tuple[str, str]:
        scope = self._scope(stamp)
        to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
        key = ("AWS4" + self.secret_access_key).encode()
        for part in (stamp[:8], self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        return scope, hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def load(path: Path) -> ObjectStore:
    """The store a deployment's JSON file describes; a bad file is one ConfigError naming the fix."""
    try:
        raw: Any = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read object store file ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: object store file is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: object store file must be a JSON object with {', '.join(_REQUIRED)}")
    missing = [k for k in _REQUIRED if not isinstance(raw.get(k), str) or not raw.get(k)]
    if missing:
        raise ConfigError(f"{path}: object store file lacks {', '.join(missing)}")
    unknown = sorted(set(raw) - {*_REQUIRED, "region", "prefix", "public_base_url", "presign_expires_s"})
    if unknown:
        raise ConfigError(f"{path}: unknown object store keys {', '.join(unknown)}")
    endpoint = str(raw["endpoint"]).rstrip("/")
    if urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
        raise ConfigError(
            f"{path}: endpoint must be an http(s) URL such as https://s3.us-east-1.amazonaws.com"
        )
    expires = raw.get("presign_expires_s", 3600)
    if not isinstance(expires, int) or not 1 <= expires <= 604800:
        raise ConfigError(f"{path}: presign_expires_s must be whole seconds between 1 and 604800 (7 days)")
    return ObjectStore(
        endpoint=endpoint,
        bucket=raw["bucket"],
        access_key_id=raw["access_key_id"],
        secret_access_key=raw["secret_access_key"],
        region=str(raw.get("region") or "us-east-1"),
        prefix=str(raw.get("prefix") or ""),
        public_base_url=raw.get("public_base_url") or None,
        presign_expires_s=expires,
    )


def _quote(key: str) -> str:
    return urllib.parse.quote(key, safe="/-_.~")


def _canonical_query(query: str) -> str:
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    return "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(pairs)
    )


def _error_code(body: str) -> str:
    start = body.find("<Code>")
    end = body.find("</Code>")
    return body[start + 6 : end] if 0 <= start < end else ""
