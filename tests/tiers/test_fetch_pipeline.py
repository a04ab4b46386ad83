"""The downloader's copy pipeline: O_DIRECT and page-cache writes, unaligned resumes, failures midway."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from comfyfleet.devkit.upstreams.model_servers import Upstreams
from tiers.helpers import FETCH, run_fetch, write_plan

WRITE_MODES = {"o_direct": {"COMFYFLEET_FETCH_DIRECT": "1"}, "page_cache": {}}


def load_fetch() -> ModuleType:
    """The host-side script as a module (it is a standalone file on hosts, not in a package)."""
    spec = importlib.util.spec_from_file_location("fetch_models_under_test", FETCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan_for(tmp_path: Path, url: str, sha256: str | None) -> Path:
    plan = {
        "models_dir": str(tmp_path / "data" / "models"),
        "staging_dir": str(tmp_path / "data" / ".comfyfleet" / "downloads"),
        "items": [{"filename": "m.safetensors", "folder": "checkpoints", "url": url, "sha256": sha256}],
    }
    return write_plan(tmp_path / "plan.json", plan)


def pattern(size: int) -> bytes:
    """Bytes where every offset differs from its neighbours' (misplaced blocks change the hash)."""
    return b"".join(hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(size // 32 + 1))[:size]


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_resume_from_a_part_ending_mid_block_reuses_every_byte_and_verifies(
    tmp_path: Path, model_upstreams: Upstreams, mode: str
) -> None:
    up = model_upstreams
    data = pattern(3 * 1024 * 1024 + 777)  # crosses several 1 MiB buffers, ends mid-block
    stored = up.add_file("m.safetensors", data)
    url = f"{up.files_url}/files/m.safetensors"
    plan = plan_for(tmp_path, url, stored.sha256)
    part = tmp_path / "data/.comfyfleet/downloads/checkpoints/m.safetensors.part"
    part.parent.mkdir(parents=True)
    kept = 12_345  # not a multiple of 4096: the first write is unaligned
    part.write_bytes(data[:kept])
    Path(str(part) + ".json").write_text(json.dumps({"url": url, "sha256": stored.sha256}))

    rc, out, err, rows = run_fetch(plan, None, WRITE_MODES[mode])

    assert rc == 0, err
    assert rows[0]["status"] == "downloaded"
    assert rows[0]["bytes_reused"] == kept
    assert rows[0]["bytes_fetched"] == len(data) - kept
    assert (tmp_path / "data/models/checkpoints/m.safetensors").read_bytes() == data
    assert ("GET", "/files/m.safetensors") in [
        (m, p) for m, p, h in up.stats.requests if h.get("Range", "").startswith(f"bytes={kept}-")
    ]
    assert not part.exists()


def test_disk_refusing_writes_midway_fails_cleanly_and_keeps_models_clean(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    stored = up.add_file("m.safetensors", 6 * 1024 * 1024)
    plan = plan_for(tmp_path, f"{up.files_url}/files/m.safetensors", stored.sha256)

    def small_disk() -> None:
        # Writes past 2 MiB fail with EFBIG (Python ignores SIGXFSZ), like a full disk would.
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, resource.RLIM_INFINITY))

    proc = subprocess.run(
        [sys.executable, str(FETCH), "--plan", str(plan)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=small_disk,
    )
    assert proc.returncode == 1
    row = json.loads(proc.stdout.split("RESULT ", 1)[1])[0]
    assert row["status"] == "failed" and "File too large" in row["error"], row
    assert not (tmp_path / "data/models/checkpoints/m.safetensors").exists()
    # What did reach the disk stays for the next run to resume from.
    part = tmp_path / "data/.comfyfleet/downloads/checkpoints/m.safetensors.part"
    assert part.stat().st_size <= 2 * 1024 * 1024
    assert part.read_bytes() == Path(stored.path).read_bytes()[: part.stat().st_size]


class Flaky(io.BytesIO):
    """A response body whose connection breaks after `fail_at` bytes."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data)
        self.fail_at = fail_at

    def readinto(self, buf: Any) -> int:
        if self.tell() >= self.fail_at:
            raise ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
        return super().readinto(memoryview(buf)[: max(1, min(len(buf), self.fail_at - self.tell()))])


class Paced(io.BytesIO):
    """A response body arriving 256 KiB at a time, 5 ms apart, like a network would."""

    def readinto(self, buf: Any) -> int:
        time.sleep(0.005)
        return super().readinto(memoryview(buf)[: 256 * 1024])


def copy(fm: ModuleType, path: Path, src: Any, offset: int = 0) -> tuple[str, int, Any]:
    with open(path, "r+b" if offset else "wb") as out:
        out.truncate(offset)
        sink = fm._Sink(out.fileno(), str(path), offset)
        h = hashlib.sha256(path.read_bytes()[:offset])
        try:
            got = fm._copy_hashing(src, sink, h, lambda n: None)
        finally:
            sink.close()
        os.fsync(out.fileno())
    return h.hexdigest(), got, sink


def test_direct_write_refused_midway_falls_back_to_the_page_cache(tmp_path: Path, monkeypatch: Any) -> None:
    fm = load_fetch()
    data = pattern(5 * 1024 * 1024 + 100)
    path = tmp_path / "out.part"
    real_pwrite = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, view: Any, offset: int) -> int:
        # The O_DIRECT descriptor has O_DIRECT in its flags: refuse it from the 3rd MiB on.
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT and offset >= 2 * 1024 * 1024:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, view, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setenv("COMFYFLEET_FETCH_DIRECT", "1")
    path.touch()
    probe = fm._open_direct(str(path))
    if probe is None:
        pytest.skip("this filesystem refuses O_DIRECT: nothing to fall back from")
    os.close(probe)
    digest, got, sink = copy(fm, path, io.BytesIO(data))
    assert refused == [2 * 1024 * 1024]  # refused once, then no more direct attempts
    assert sink.direct is None
    assert got == len(data) and path.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_page_cache_writeback_starts_behind_the_writes_while_downloading(
    tmp_path: Path, monkeypatch: Any
) -> None:
    fm = load_fetch()
    monkeypatch.setattr(fm, "_WRITEBACK_STEP", 1024 * 1024)
    real = os.posix_fadvise
    started: list[tuple[int, int, int]] = []

    def posix_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        started.append((offset, offset + length, os.fstat(fd).st_size))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", posix_fadvise)
    data = pattern(6 * 1024 * 1024 + 5)
    digest, got, sink = copy(fm, tmp_path / "out.part", Paced(data))
    assert sink.direct is None  # the page cache is the default
    assert digest == hashlib.sha256(data).hexdigest() and got == len(data)
    assert (tmp_path / "out.part").read_bytes() == data
    # Stretch after stretch, each handed to the disk while the file was still growing.
    assert [(a, b) for a, b, _size in started] == [(i << 20, (i + 1) << 20) for i in range(len(started))]
    assert len(started) >= 5 and all(size < len(data) for _a, _b, size in started[:-1])


def test_the_part_is_fsynced_before_it_is_renamed_into_place(
    tmp_path: Path, model_upstreams: Upstreams, monkeypatch: Any
) -> None:
    """Durable and atomic: the bytes are on the disk before the file appears under models/."""
    fm = load_fetch()
    up = model_upstreams
    data = pattern(3 * 1024 * 1024 + 11)
    stored = up.add_file("m.safetensors", data)
    plan = json.loads(plan_for(tmp_path, f"{up.files_url}/files/m.safetensors", stored.sha256).read_text())
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    result = fm.Fetcher(plan, {}).fetch(plan["items"][0])
    assert result["status"] == "downloaded", result
    part = str(tmp_path / "data/.comfyfleet/downloads/checkpoints/m.safetensors.part")
    placed = events.index(("replace", part))
    assert ("fsync", part) in events[:placed]
    assert (tmp_path / "data/models/checkpoints/m.safetensors").read_bytes() == data


@pytest.mark.parametrize("mode", list(WRITE_MODES))
def test_connection_lost_midway_raises_and_leaves_a_resumable_prefix(
    tmp_path: Path, monkeypatch: Any, mode: str
) -> None:
    fm = load_fetch()
    for k, v in WRITE_MODES[mode].items():
        monkeypatch.setenv(k, v)
    data = pattern(4 * 1024 * 1024)
    path = tmp_path / "out.part"
    path.write_bytes(data[:5000])
    with pytest.raises(fm._Cut, match="ConnectionResetError"):
        copy(fm, path, Flaky(data[5000:], 2 * 1024 * 1024 + 3), offset=5000)
    kept = path.read_bytes()
    assert 5000 <= len(kept) <= 5000 + 2 * 1024 * 1024 + 3
    assert kept == data[: len(kept)]  # everything on disk is right: a resume may trust it
