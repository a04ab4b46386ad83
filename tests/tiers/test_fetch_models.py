"""The host-side model downloader against the local HF / CivitAI / file servers (real HTTP)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.devkit.upstreams.model_servers import Upstreams
from tiers.helpers import FETCH, run_fetch, write_plan

HUB_MODES = {"stdlib": {}}


def plan_for(tmp_path: Path, up: Upstreams, items: list[dict[str, Any]], **extra: Any) -> Path:
    plan = {
        "models_dir": str(tmp_path / "data" / "models"),
        "staging_dir": str(tmp_path / "data" / ".comfyfleet" / "downloads"),
        "state_file": str(tmp_path / "data" / ".comfyfleet" / "model-hashes.json"),
        "hf_endpoint": up.hf_url,
        "civitai_endpoint": up.civitai_url,
        "parallel": 3,
        "items": items,
        **extra,
    }
    return write_plan(tmp_path / "plan.json", plan)


def tokens(up: Upstreams) -> dict[str, str]:
    return {"HF_TOKEN": up.hf_token, "CIVITAI_API_TOKEN": up.civitai_token}


def models(tmp_path: Path) -> Path:
    return tmp_path / "data" / "models"


def staged(tmp_path: Path) -> list[Path]:
    root = tmp_path / "data" / ".comfyfleet" / "downloads"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize("mode", list(HUB_MODES))
def test_hf_gated_hf_civitai_and_plain_url_land_verified_then_rerun_fetches_nothing(
    tmp_path: Path, model_upstreams: Upstreams, mode: str
) -> None:
    up = model_upstreams
    a = up.add_hf("org/sd15", "v1-5.safetensors", 2_000_000)
    g = up.add_hf("org/flux-gated", "ae.safetensors", 300_000, gated=True)
    c = up.add_civitai(4242, "detail.safetensors", 400_000)
    f = up.add_file("upscalers/4x.pth", 100_000)
    items = [
        {
            "filename": "v1-5.safetensors",
            "folder": "checkpoints",
            "url": up.hf_resolve_url("org/sd15", "v1-5.safetensors"),
        },
        {
            "filename": "flux/ae.safetensors",
            "folder": "vae",
            "url": up.hf_resolve_url("org/flux-gated", "ae.safetensors"),
        },
        {
            "filename": "detail.safetensors",
            "folder": "loras",
            "url": "https://civitai.com/models/1?modelVersionId=4242",
        },
        {
            "filename": "4x.pth",
            "folder": "upscale_models",
            "url": f"{up.files_url}/files/upscalers/4x.pth",
            "sha256": f.sha256,
        },
    ]
    plan = plan_for(tmp_path, up, items)
    rc, out, err, rows = run_fetch(plan, tokens(up), HUB_MODES[mode])
    assert rc == 0, err
    assert [r["status"] for r in rows] == ["downloaded"] * 4
    for rel, stored in [
        ("checkpoints/v1-5.safetensors", a),
        ("vae/flux/ae.safetensors", g),
        ("loras/detail.safetensors", c),
        ("upscale_models/4x.pth", f),
    ]:
        assert hashlib.sha256((models(tmp_path) / rel).read_bytes()).hexdigest() == stored.sha256
    assert {r["sha256"] for r in rows} == {a.sha256, g.sha256, c.sha256, f.sha256}
    assert staged(tmp_path) == []
    assert "progress:" in err

    sent_before = sum(up.stats.bytes_sent.values())
    rc, out, err, rows = run_fetch(plan, tokens(up), HUB_MODES[mode])
    assert rc == 0
    assert [r["status"] for r in rows] == ["present"] * 4
    assert sum(up.stats.bytes_sent.values()) == sent_before


@pytest.mark.parametrize("mode", list(HUB_MODES))
def test_gated_model_without_token_fails_naming_model_and_variable(
    tmp_path: Path, model_upstreams: Upstreams, mode: str
) -> None:
    up = model_upstreams
    up.add_hf("org/flux-gated", "flux1-dev.safetensors", 10_000, gated=True)
    up.add_civitai(77, "style.safetensors", 10_000)
    plan = plan_for(
        tmp_path,
        up,
        [
            {
                "filename": "flux1-dev.safetensors",
                "folder": "unet",
                "url": up.hf_resolve_url("org/flux-gated", "flux1-dev.safetensors"),
            },
            {
                "filename": "style.safetensors",
                "folder": "loras",
                "url": "https://civitai.com/api/download/models/77",
            },
        ],
    )
    rc, out, err, rows = run_fetch(plan, {}, HUB_MODES[mode])
    assert rc == 1
    assert "flux1-dev.safetensors" in rows[0]["error"] and "HF_TOKEN" in rows[0]["error"]
    assert "style.safetensors" in rows[1]["error"] and "CIVITAI_API_TOKEN" in rows[1]["error"]
    assert not models(tmp_path).exists() or not any(models(tmp_path).rglob("*.safetensors"))
    # A wrong token is a different failure: the repo's terms, not a missing variable.
    rc, out, err, rows = run_fetch(plan, {"HF_TOKEN": "hf_wrong"}, HUB_MODES[mode])
    assert rc == 1 and "flux1-dev.safetensors" in rows[0]["error"]


@pytest.mark.parametrize("mode", list(HUB_MODES))
def test_download_killed_midway_resumes_with_range_and_verifies(
    tmp_path: Path, model_upstreams: Upstreams, mode: str
) -> None:
    up = model_upstreams
    size = 6_000_000
    stored = up.add_hf("org/big", "big.safetensors", size)
    up.throttle["hf:big.safetensors"] = 3_000_000  # bytes/s: slow enough to kill midway
    plan = plan_for(
        tmp_path,
        up,
        [
            {
                "filename": "big.safetensors",
                "folder": "checkpoints",
                "url": up.hf_resolve_url("org/big", "big.safetensors"),
                "sha256": stored.sha256,
            },
        ],
    )
    proc = subprocess.Popen(
        [sys.executable, str(FETCH), "--plan", str(plan)],
        env={**os.environ, **HUB_MODES[mode]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    part = tmp_path / "data/.comfyfleet/downloads/checkpoints/big.safetensors.part"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 1_500_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    have = part.stat().st_size
    assert 1_500_000 <= have < size
    assert not (models(tmp_path) / "checkpoints/big.safetensors").exists()

    up.throttle.clear()
    rc, out, err, rows = run_fetch(plan, None, HUB_MODES[mode])
    assert rc == 0, err
    assert rows[0]["status"] == "downloaded"
    assert rows[0]["bytes_reused"] == have
    assert rows[0]["bytes_fetched"] == size - have
    assert (
        hashlib.sha256((models(tmp_path) / "checkpoints/big.safetensors").read_bytes()).hexdigest()
        == stored.sha256
    )
    ranges = [
        h.get("Range") for m, p, h in up.stats.requests if m == "GET" and "/cdn/" in p or "resolve" in p
    ]
    assert f"bytes={have}-" in ranges
    assert staged(tmp_path) == []


def test_wrong_file_in_place_is_replaced_and_partial_bytes_never_visible(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    stored = up.add_file("m/model.safetensors", 3_000_000)
    up.throttle["files:m/model.safetensors"] = 3_000_000
    dest = models(tmp_path) / "checkpoints/model.safetensors"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"stale bytes of another model" * 1000)
    old_inode = dest.stat().st_ino
    plan = plan_for(
        tmp_path,
        up,
        [
            {
                "filename": "model.safetensors",
                "folder": "checkpoints",
                "url": f"{up.files_url}/files/m/model.safetensors",
                "sha256": stored.sha256,
            },
        ],
    )
    proc = subprocess.Popen(
        [sys.executable, str(FETCH), "--plan", str(plan)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen_sizes = set()
    while proc.poll() is None:
        seen_sizes.add(dest.stat().st_size)
        assert {p.name for p in dest.parent.iterdir()} == {"model.safetensors"}
        time.sleep(0.02)
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0
    rows = json.loads(out.split("RESULT ", 1)[1])
    assert rows[0]["status"] == "replaced"
    # Only ever the old file or the complete new one, swapped by one rename.
    assert seen_sizes <= {28_000, stored.size}
    assert dest.stat().st_ino != old_inode
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == stored.sha256


def test_corrupt_download_is_discarded_and_never_reaches_models(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    stored = up.add_hf("org/sd", "m.safetensors", 500_000)
    up.corrupt.add("hf:m.safetensors")
    plan = plan_for(
        tmp_path,
        up,
        [
            {
                "filename": "m.safetensors",
                "folder": "checkpoints",
                "url": up.hf_resolve_url("org/sd", "m.safetensors"),
            },
        ],
    )
    # No sha256 in the manifest: the hash the Hub publishes (X-Linked-Etag) is checked.
    rc, out, err, rows = run_fetch(plan)
    assert rc == 1
    assert "sha256 mismatch" in rows[0]["error"] and stored.sha256 in rows[0]["error"]
    assert not (models(tmp_path) / "checkpoints/m.safetensors").exists()
    assert staged(tmp_path) == [] or all(not p.name.endswith(".part") for p in staged(tmp_path))


def test_hash_is_computed_when_the_manifest_has_none(tmp_path: Path, model_upstreams: Upstreams) -> None:
    up = model_upstreams
    stored = up.add_file("x/vae.pt", 123_457)
    plan = plan_for(
        tmp_path,
        up,
        [
            {"filename": "vae.pt", "folder": "vae", "url": f"{up.files_url}/files/x/vae.pt"},
        ],
    )
    rc, out, err, rows = run_fetch(plan)
    assert rc == 0
    assert rows[0]["sha256"] == stored.sha256


def test_unsafe_names_are_refused_on_the_host_too(tmp_path: Path, model_upstreams: Upstreams) -> None:
    up = model_upstreams
    up.add_file("x/a.pt", 10)
    items = [
        {"filename": "../../escape.pt", "folder": "vae", "url": f"{up.files_url}/files/x/a.pt"},
        {"filename": "a.pt", "folder": "../outside", "url": f"{up.files_url}/files/x/a.pt"},
        {"filename": "$(touch pwned).pt", "folder": "vae", "url": f"{up.files_url}/files/x/a.pt"},
    ]
    rc, out, err, rows = run_fetch(plan_for(tmp_path, up, items))
    assert rc == 1
    assert [r["status"] for r in rows] == ["failed"] * 3
    assert all("unsafe model path" in r["error"] for r in rows)
    assert not (tmp_path / "escape.pt").exists() and not (tmp_path / "data/outside").exists()
    assert not any(up.stats.bytes_sent.values())


def test_tokens_stay_out_of_output_and_off_redirect_targets(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    up.add_hf("org/flux-gated", "ae.safetensors", 50_000, gated=True)
    up.add_civitai(5, "l.safetensors", 50_000)
    plan = plan_for(
        tmp_path,
        up,
        [
            {
                "filename": "ae.safetensors",
                "folder": "vae",
                "url": up.hf_resolve_url("org/flux-gated", "ae.safetensors"),
            },
            {"filename": "l.safetensors", "folder": "loras", "url": "civitai:5"},
        ],
    )
    rc, out, err, rows = run_fetch(plan, tokens(up), HUB_MODES["stdlib"])
    assert rc == 0, err
    assert up.hf_token not in out + err and up.civitai_token not in out + err
    for _method, path, headers in up.stats.requests:
        if path.startswith(("/cdn/", "/files/")):
            assert "Authorization" not in headers, path  # the CDN host never sees the token


def test_several_files_download_in_parallel(tmp_path: Path, model_upstreams: Upstreams) -> None:
    up = model_upstreams
    items = []
    for i in range(3):
        up.add_file(f"p/{i}.pt", 1_000_000)
        up.throttle[f"files:p/{i}.pt"] = 1_000_000
        items.append({"filename": f"{i}.pt", "folder": "vae", "url": f"{up.files_url}/files/p/{i}.pt"})
    t0 = time.monotonic()
    rc, out, err, rows = run_fetch(plan_for(tmp_path, up, items, parallel=3))
    elapsed = time.monotonic() - t0
    assert rc == 0
    # One at a time takes 3 s; three at once about 1 s.
    assert elapsed < 2.4, elapsed


def test_redirect_to_a_local_file_is_refused(tmp_path: Path, model_upstreams: Upstreams) -> None:
    up = model_upstreams
    up.redirects["evil.pt"] = "file:///etc/passwd"
    rc, out, err, rows = run_fetch(
        plan_for(
            tmp_path,
            up,
            [
                {"filename": "evil.pt", "folder": "vae", "url": f"{up.files_url}/files/evil.pt"},
            ],
        )
    )
    assert rc == 1 and "non-HTTP location" in rows[0]["error"]
    assert not (models(tmp_path) / "vae/evil.pt").exists()
