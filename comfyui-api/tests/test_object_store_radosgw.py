"""Outputs in object storage, against a real S3 server: Ceph's radosgw (Debian 12's, 16.2).

- the storage path (signed PUT, then download through the returned presigned URL, also via
  comfyui-api) runs against radosgw on a one-node Ceph (``comfyfleet.devkit.radosgw``), which
  verifies Signature V4 as production Ceph does: a changed signature, an expired URL or a
  wrong secret are refused;
- the signatures are also compared byte for byte with botocore's SigV4 signer, AWS's own
  implementation (header-signed PUT and presigned GET).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import botocore.auth
import httpx
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from comfyui_api.object_store import ObjectStore, UploadFailed, load
from comfyui_api.settings import ConfigError
from conftest import TINY, Api, Comfy, write_workflows

from comfyfleet.devkit.radosgw import S3Server, radosgw


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with radosgw(tmp_path_factory.mktemp("radosgw")) as server:
        yield server


def store_for(s3: S3Server, **extra: object) -> ObjectStore:
    cfg = s3.store_config(**extra)
    return ObjectStore(**cfg)  # type: ignore[arg-type]


def upload(store: ObjectStore, key: str, data: bytes) -> str:
    return asyncio.run(store.upload(key, data, "image/png"))


@pytest.mark.parametrize("key", ["job1/0-out put+1.png", "job1/ünï/cødé&=.webp"])
def test_radosgw_upload_returns_presigned_url_that_downloads_the_bytes(s3: S3Server, key: str) -> None:
    store = store_for(s3)
    url = upload(store, key, b"\x89PNG bytes of " + key.encode())
    assert "X-Amz-Signature=" in url and s3.access_key in url and s3.secret_key not in url
    got = httpx.get(url)
    assert got.status_code == 200 and got.content == b"\x89PNG bytes of " + key.encode()
    # The bucket is private: the same object without the signature, or with another one, is refused.
    assert httpx.get(store.object_url(key)).status_code == 403
    tampered = httpx.get(url[:-4] + ("0000" if not url.endswith("0000") else "1111"))
    assert tampered.status_code == 403 and "<Code>SignatureDoesNotMatch</Code>" in tampered.text


def test_radosgw_refuses_an_expired_url_and_a_wrong_secret(s3: S3Server) -> None:
    url = upload(store_for(s3, presign_expires_s=1), "job2/0.png", b"short-lived")
    time.sleep(2.1)
    assert httpx.get(url).status_code == 403
    wrong = ObjectStore(**{**s3.store_config(), "secret_access_key": "not-the-secret"})  # type: ignore[arg-type]
    with pytest.raises(UploadFailed, match="answered 403 SignatureDoesNotMatch"):
        upload(wrong, "job2/1.png", b"x")


NOW = dt.datetime(2026, 12, 3, 12, 0, 0, tzinfo=dt.timezone.utc)
STORE = ObjectStore(
    endpoint="https://s3.eu-central-1.amazonaws.com",
    bucket="renders",
    region="eu-central-1",
    access_key_id="AKIDEXAMPLE",
    secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    prefix="fleet/",
)


def botocore_request(method: str, url: str, headers: dict[str, str], body: bytes) -> AWSRequest:
    return AWSRequest(method=method, url=url, headers=headers, data=body)


@pytest.mark.parametrize("key", ["job/0-plain.png", "job/1-with space+plus&amp;=.png", "ünï/cødé.webp"])
def test_header_signature_matches_botocore(key: str) -> None:
    url = STORE.object_url(key)
    body = b"\x89PNG" + key.encode()
    headers = {"content-type": "image/png", "content-length": str(len(body))}
    ours = STORE.sign("PUT", url, headers, hashlib.sha256(body).hexdigest(), now=NOW)
    request = botocore_request(
        "PUT", url, {**headers, "x-amz-content-sha256": hashlib.sha256(body).hexdigest()}, body
    )
    signer = S3SigV4Auth(Credentials(STORE.access_key_id, STORE.secret_access_key), "s3", STORE.region)
    with mock_now(signer):
        signer.add_auth(request)
    assert ours["authorization"] == request.headers["Authorization"]


def test_presigned_url_matches_botocore() -> None:
    url = STORE.object_url("job/0-out put.png")
    ours = STORE.presign("GET", url, 900, now=NOW)
    request = botocore_request("GET", url, {}, b"")
    signer = S3SigV4QueryAuth(
        Credentials(STORE.access_key_id, STORE.secret_access_key), "s3", STORE.region, expires=900
    )
    with mock_now(signer):
        signer.add_auth(request)
    assert parse_qs(urlsplit(ours).query) == parse_qs(urlsplit(request.url).query)
    assert urlsplit(ours).path == urlsplit(request.url).path


class mock_now:
    """Pin botocore's clock (it reads datetime.datetime.utcnow in botocore.auth) to NOW."""

    def __init__(self, signer: object) -> None:
        self.saved = botocore.auth.datetime.datetime

    def __enter__(self) -> None:
        class Fixed(dt.datetime):
            @classmethod
            def utcnow(cls) -> dt.datetime:  # type: ignore[override]
                return NOW.replace(tzinfo=None)

            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
                return NOW if tz else NOW.replace(tzinfo=None)

        botocore.auth.datetime.datetime = Fixed  # type: ignore[misc]

    def __exit__(self, *exc: object) -> None:
        botocore.auth.datetime.datetime = self.saved  # type: ignore[misc]


def test_public_bucket_gets_plain_urls(s3: S3Server) -> None:
    store = store_for(s3, public_base_url="https://cdn.example.test/renders/")
    assert upload(store, "job4/0.png", b"z") == "https://cdn.example.test/renders/outputs/job4/0.png"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "must be a JSON object"),
        ('{"endpoint": "http://x", "bucket": "b"}', "lacks access_key_id, secret_access_key"),
        (
            '{"endpoint": "ftp://x", "bucket": "b", "access_key_id": "a", "secret_access_key": "s"}',
            r"http\(s\) URL",
        ),
        (
            '{"endpoint": "http://x", "bucket": "b", "access_key_id": "a", "secret_access_key": "s", "acl": 1}',
            "unknown object store keys acl",
        ),
        ("{", "not JSON"),
    ],
)
def test_bad_store_file_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "store.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_secret_never_in_repr(s3: S3Server) -> None:
    assert s3.secret_key not in repr(store_for(s3))


def test_api_uploads_job_outputs_to_the_bucket(comfy: Comfy, s3: S3Server, tmp_path: Path) -> None:
    """comfyui-api with --object-store: outputs come back as presigned URLs of the uploaded PNGs."""
    wf = write_workflows(tmp_path / "wf", {"tiny.json": TINY})
    cfg = s3.write_config(tmp_path / "store.json", prefix="fleet/")
    with Api(
        comfy.url, wf, tmp_path / "api.sqlite3", ["--object-store", str(cfg), "--job-id-prefix", "h1-"]
    ) as api:
        r = httpx.post(f"{api.url}/workflows/tiny", json={"input": {"color": 0x123456}}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"].startswith("h1-")
        (out,) = [o for o in body["outputs"] if "filename" in o]
        assert "base64" not in out
        assert out["url"].startswith(f"{s3.endpoint}/{s3.bucket}/fleet/{body['id']}/0-")
        png = httpx.get(out["url"])
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert s3.secret_key not in api.log()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"endpoint": "http://x"}))
    failed = Api(comfy.url, wf, tmp_path / "api2.sqlite3", ["--object-store", str(bad)])
    with pytest.raises(RuntimeError, match="lacks bucket"):
        failed.start()
