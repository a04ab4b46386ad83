"""The local Hugging Face / CivitAI / file servers speak the protocol real clients rely on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from huggingface_hub import errors as hf_errors
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

from comfyfleet.devkit.upstreams.model_servers import Upstreams


@pytest.fixture
def up(tmp_path: Path) -> Upstreams:
    u = Upstreams(tmp_path / "up")
    u.add_hf("org/sd", "m.safetensors", 300_000)
    u.add_hf("org/sd", "config.json", b'{"a": 1}')
    u.add_hf("org/gated", "g.safetensors", 1000, gated=True)
    u.add_civitai(7, "lora.safetensors", 5000)
    u.add_file("x/v.pt", 4096)
    return u


def test_huggingface_hub_reads_metadata_and_downloads_through_hf_endpoint(
    up: Upstreams, tmp_path: Path
) -> None:
    with up:
        url = hf_hub_url("org/sd", "m.safetensors", endpoint=up.hf_url)
        meta = get_hf_file_metadata(url, endpoint=up.hf_url)
        stored = up.hf_files[("org/sd", "main", "m.safetensors")]
        assert meta.etag == stored.sha256 and meta.size == stored.size
        assert meta.commit_hash == up.repo_commit("org/sd")
        assert "localhost" in meta.location  # the "CDN" is another host name
        path = hf_hub_download("org/sd", "config.json", endpoint=up.hf_url, cache_dir=tmp_path / "cache")
        assert Path(path).read_bytes() == b'{"a": 1}'
        with pytest.raises(hf_errors.GatedRepoError):
            get_hf_file_metadata(hf_hub_url("org/gated", "g.safetensors", endpoint=up.hf_url), token=False)
        meta = get_hf_file_metadata(
            hf_hub_url("org/gated", "g.safetensors", endpoint=up.hf_url), token=up.hf_token
        )
        assert meta.size == 1000


def test_range_requests_and_civitai_token_flow(up: Upstreams) -> None:
    with up, httpx.Client() as client:
        url = f"{up.files_url}/files/x/v.pt"
        part = client.get(url, headers={"Range": "bytes=1000-"})
        assert part.status_code == 206 and len(part.content) == 3096
        assert part.headers["Content-Range"] == "bytes 1000-4095/4096"
        assert client.get(url, headers={"Range": "bytes=5000-"}).status_code == 416
        assert client.get(f"{up.civitai_url}/api/download/models/7").status_code == 401
        assert (
            client.get(
                f"{up.civitai_url}/api/download/models/7", headers={"Authorization": "Bearer nope"}
            ).status_code
            == 403
        )
        ok = client.get(
            f"{up.civitai_url}/api/download/models/7", headers={"Authorization": f"Bearer {up.civitai_token}"}
        )
        assert ok.status_code == 307 and "X-Amz-Signature" in ok.headers["Location"]
        body = client.get(ok.headers["Location"]).content
        info = client.get(f"{up.civitai_url}/api/v1/model-versions/7").json()
        assert info["files"][0]["hashes"]["SHA256"].lower() == hashlib.sha256(body).hexdigest()


def test_standalone_process_serves_the_same_tree(up: Upstreams) -> None:
    up.start_process()
    try:
        r = httpx.head(f"{up.hf_url}/org/gated/resolve/main/g.safetensors")
        assert r.status_code == 401 and r.headers["X-Error-Code"] == "GatedRepo"
        r = httpx.get(f"{up.files_url}/files/x/v.pt")
        assert r.status_code == 200 and len(r.content) == 4096
    finally:
        up.stop()
