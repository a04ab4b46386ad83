"""Downloads: a file counts as downloaded only with its length proven; cut bodies resume or fail cleanly;
cleanup deletes exactly the reviewed plan.

Every attack runs the host-side scripts as a host runs them, against real HTTP servers on
loopback (tests/upstreams/model_servers.py) that cut bodies short the way broken servers do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from comfyfleet.devkit.upstreams.model_servers import Upstreams
from comfyfleet.operations.downloads import record_hashes
from security._host_fixtures import MODEL_FILES, fetch, run_hostside

SIZE = 3 * 1024 * 1024 + 123


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Upstreams]:
    server = Upstreams(tmp_path / "upstream").start()
    try:
        yield server
    finally:
        server.stop()


def item(up: Upstreams, name: str = "m.safetensors", **extra: object) -> dict[str, object]:
    return {
        "filename": name,
        "folder": "checkpoints",
        "url": f"{up.files_url}/files/{name}",
        "sha256": None,
        **extra,
    }


def placed(where: Path, name: str = "m.safetensors") -> Path:
    return where / "models" / "checkpoints" / name


def test_close_without_length_is_not_a_download_and_never_reaches_the_lock(
    tmp_path: Path, up: Upstreams
) -> None:
    up.add_file("m.safetensors", SIZE)
    up.cut["files:m.safetensors"] = (SIZE // 3, "close")
    up.no_ranges.add("files:m.safetensors")  # nothing can prove where the file ends
    lock = tmp_path / "comfyfleet.lock.yaml"
    lock.write_text(
        yaml.safe_dump({"models": [{"filename": "m.safetensors", "folder": "checkpoints", "sha256": None}]})
    )
    rc, rows, err = fetch(tmp_path, [item(up)])
    assert rc == 1 and rows[0]["status"] == "failed"
    assert "sent no length" in rows[0]["error"] and "overrides.yaml" in rows[0]["error"]
    assert not placed(tmp_path).exists()
    assert record_hashes(lock, rows) == 0
    assert yaml.safe_load(lock.read_text())["models"][0]["sha256"] is None
    assert "Traceback" not in err


def test_close_without_length_resumes_to_the_true_file(tmp_path: Path, up: Upstreams) -> None:
    stored = up.add_file("m.safetensors", SIZE)
    up.cut["files:m.safetensors"] = (SIZE // 3, "close")  # plain GETs are cut; Range requests work
    rc, rows, _ = fetch(tmp_path, [item(up)], connections_per_file=1)
    assert rc == 0 and rows[0]["status"] == "downloaded", rows
    assert rows[0]["sha256"] == stored.sha256
    assert hashlib.sha256(placed(tmp_path).read_bytes()).hexdigest() == stored.sha256


def test_short_body_against_the_lock_size_is_refused(tmp_path: Path, up: Upstreams) -> None:
    up.add_file("m.safetensors", SIZE)
    up.cut["files:m.safetensors"] = (SIZE - 1000, "close")
    up.no_ranges.add("files:m.safetensors")
    rc, rows, _ = fetch(tmp_path, [item(up, size=SIZE)])
    assert rc == 1 and f"of {SIZE} bytes" in rows[0]["error"] and "run again to resume" in rows[0]["error"]
    assert not placed(tmp_path).exists()


def test_short_body_against_the_hub_metadata_size_is_refused(tmp_path: Path, up: Upstreams) -> None:
    up.add_hf("org/repo", "m.safetensors", SIZE)  # the Hub announces X-Linked-Size; the CDN cuts the body
    up.cut["hf:m.safetensors"] = (SIZE // 2, "close")
    up.no_ranges.add("hf:m.safetensors")
    url = up.hf_resolve_url("org/repo", "m.safetensors")
    rc, rows, _ = fetch(tmp_path, [{**item(up), "url": url}], hf_endpoint=up.hf_url)
    assert rc == 1 and rows[0]["status"] == "failed" and f"of {SIZE} bytes" in rows[0]["error"], rows
    assert not placed(tmp_path).exists()


def test_truncated_chunked_body_resumes(tmp_path: Path, up: Upstreams) -> None:
    stored = up.add_file("m.safetensors", SIZE)
    up.cut["files:m.safetensors"] = (SIZE // 2, "chunked")
    rc, rows, err = fetch(tmp_path, [item(up)], connections_per_file=1)
    assert rc == 0 and rows[0]["status"] == "downloaded" and rows[0]["sha256"] == stored.sha256, err
    assert 0 < rows[0]["bytes_reused"] < SIZE  # the second request continued after the cut


def test_truncated_chunked_body_without_ranges_fails_cleanly(tmp_path: Path, up: Upstreams) -> None:
    up.add_file("m.safetensors", SIZE)
    up.cut["files:m.safetensors"] = (SIZE // 2, "chunked")
    up.no_ranges.add("files:m.safetensors")
    rc, rows, err = fetch(tmp_path, [item(up)])
    assert rc == 1 and rows[0]["status"] == "failed"
    assert rows[0]["error"].startswith("m.safetensors: ") and "Traceback" not in err
    assert not placed(tmp_path).exists()


def test_wrong_bytes_from_a_ranged_download_are_discarded(tmp_path: Path, up: Upstreams) -> None:
    stored = up.add_file("m.safetensors", 6 * 1024 * 1024)
    up.corrupt.add("files:m.safetensors")
    rc, rows, _ = fetch(
        tmp_path,
        [item(up, sha256=stored.sha256)],
        parallel_min_bytes=1 << 20,
        segment_bytes=1 << 20,
        split_below_mbps=1e9,
    )
    assert rc == 1 and "sha256 mismatch" in rows[0]["error"] and not placed(tmp_path).exists()


def test_cleanup_deletes_exactly_the_reviewed_plan(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for rel, data in {
        "loras/old.safetensors": b"o" * 100,
        "loras/swap.safetensors": b"s" * 100,
        "checkpoints/used.safetensors": b"u" * 100,
    }.items():
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(data)
    plan = {
        "models_dir": str(models),
        "cleanup_plans_dir": str(tmp_path / "plans"),
        "referenced": [{"folder": "checkpoints", "filename": "used.safetensors"}],
    }
    listed = json.loads(run_hostside(MODEL_FILES, plan, tmp_path, "cleanup")[1].split("CLEANUP ", 1)[1])
    assert {f["file"] for f in listed["files"]} == {"loras/old.safetensors", "loras/swap.safetensors"}
    rc, _, err = run_hostside(MODEL_FILES, plan, tmp_path, "cleanup", "--save-plan", listed["plan_id"])
    assert rc == 0, err
    # After the review: one listed file is replaced by other content, a new unreferenced file appears,
    # and the workflows stop referencing used.safetensors. None of that was reviewed.
    (models / "loras/swap.safetensors").write_bytes(b"new content, same name")
    (models / "loras/fresh.safetensors").write_bytes(b"f")
    plan["referenced"] = []
    rc, out, err = run_hostside(
        MODEL_FILES, plan, tmp_path, "cleanup", "--delete", "--plan-id", listed["plan_id"]
    )
    result = json.loads(out.split("CLEANUP ", 1)[1])
    assert rc == 0 and result["deleted"] == ["loras/old.safetensors"], err
    assert result["skipped"] == [
        {"file": "loras/swap.safetensors", "reason": "changed since the plan was reviewed"}
    ]
    assert sorted(p.name for p in models.rglob("*.safetensors")) == [
        "fresh.safetensors",
        "swap.safetensors",
        "used.safetensors",
    ]
    rc, _, err = run_hostside(
        MODEL_FILES, plan, tmp_path, "cleanup", "--delete", "--plan-id", listed["plan_id"]
    )
    assert rc == 1 and "no reviewed cleanup plan" in err  # a plan is used once
    rc, _, err = run_hostside(MODEL_FILES, plan, tmp_path, "cleanup", "--delete")
    assert rc == 1 and "needs --plan-id" in err  # never a list computed at delete time
