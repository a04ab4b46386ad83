"""s3rver (npm, "fake S3 server for node") on a loopback port: a test double of S3 that checks SigV4.

It is not S3: it stores objects as files and answers the S3 REST API, verifying Signature V4
in headers and in presigned query strings (``SignatureDoesNotMatch``, ``AccessDenied`` on an
expired URL), which is what the uploader must get right. Its fixed credentials are
``S3RVER`` / ``S3RVER``. ``scripts/setup-dev.sh`` installs it under ``.cache/s3rver``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from comfyfleet.devkit import REPO

BINARY = REPO / ".cache" / "s3rver" / "node_modules" / ".bin" / "s3rver"
ACCESS_KEY = SECRET_KEY = "S3RVER"


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible server on loopback with one bucket (s3rver here, radosgw in devkit/radosgw.py)."""

    endpoint: str
    bucket: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def store_config(self, prefix: str = "outputs/", **extra: object) -> dict[str, object]:
        """An object store file's content for comfyui-api pointing at this server."""
        return {
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "region": "us-east-1",
            "prefix": prefix,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            **extra,
        }

    def write_config(self, path: Path, **extra: object) -> Path:
        path.write_text(json.dumps(self.store_config(**extra)))  # type: ignore[arg-type]
        path.chmod(0o600)
        return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def s3rver(directory: Path, bucket: str = "renders") -> Iterator[S3Server]:
    """Run s3rver with one bucket until the block ends."""
    if not BINARY.exists():
        raise RuntimeError(f"{BINARY} missing: run bash scripts/setup-dev.sh (installs s3rver from npm)")
    port = _free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            str(BINARY),
            "-d",
            str(directory),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "--silent",
            "--no-vhost-buckets",
            "--configure-bucket",
            bucket,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("s3rver did not start (is port free, node installed?)") from None
                time.sleep(0.1)
        yield S3Server(endpoint=endpoint, bucket=bucket)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
