"""Ranged parallel downloads: several connections per large file, a bound per host, resume per segment.

fetch_models.py runs as on a host, against the local file server paced per connection
(``connection_rate``), which is what makes extra connections pay off on a WAN link.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from comfyfleet.devkit.upstreams.model_servers import Upstreams

FETCH = Path(__file__).resolve().parents[2] / "src/comfyfleet/hostside/fetch_models.py"
MIB = 1024 * 1024


def plan(tmp_path: Path, up: Upstreams, names: list[str], **extra: Any) -> Path:
    items = [
        {"filename": n, "folder": "checkpoints", "url": f"{up.files_url}/files/{n}", "sha256": None}
        for n in names
    ]
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps(
            {
                "models_dir": str(tmp_path / "models"),
                "staging_dir": str(tmp_path / "staging"),
                "items": items,
                "parallel_min_bytes": 2 * MIB,
                "segment_bytes": MIB,
                **extra,
            }
        )
    )
    return path


def fetch(plan_path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, str(FETCH), "--plan", str(plan_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout.split("RESULT ", 1)[1]))


def ranges_asked(up: Upstreams, name: str) -> list[str]:
    return [h.get("Range", "") for m, p, h in up.stats.requests if m == "GET" and p == f"/files/{name}"]


def test_slow_link_splits_into_segments_over_several_connections_and_verifies(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    stored = up.add_file("big.safetensors", 12 * MIB + 5)
    up.connection_rate = 4 * MIB  # per connection: one stream would take 3 s
    t0 = time.monotonic()
    rows = fetch(plan(tmp_path, up, ["big.safetensors"], connections_per_file=4))
    elapsed = time.monotonic() - t0
    assert rows[0]["status"] == "downloaded" and rows[0]["sha256"] == stored.sha256
    assert (
        hashlib.sha256((tmp_path / "models/checkpoints/big.safetensors").read_bytes()).hexdigest()
        == stored.sha256
    )
    asked = ranges_asked(up, "big.safetensors")
    assert asked[0] == f"bytes=0-{MIB - 1}"  # the first segment measures the link ...
    assert f"bytes={12 * MIB}-{12 * MIB + 4}" in asked  # ... then every segment, the short last one too
    assert up.stats.peak == 4
    assert elapsed < 2.5, f"{elapsed:.1f}s: four connections at 4 MiB/s should beat one (3 s)"


def test_slow_first_stretch_starts_the_other_segments_before_it_ends(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    stored = up.add_file("big.safetensors", 16 * MIB)
    up.connection_rate = 4 * MIB  # the first 4 MiB segment alone takes 1 s on its connection
    sent_when_parallel: list[int] = []

    def watch() -> None:  # how much had been sent when a second body first ran beside the first
        deadline = time.monotonic() + 30
        while not sent_when_parallel and time.monotonic() < deadline:
            with up.stats.lock:
                if up.stats.active >= 2:
                    sent_when_parallel.append(up.stats.bytes_sent.get("files:big.safetensors", 0))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    rows = fetch(plan(tmp_path, up, ["big.safetensors"], connections_per_file=4, segment_bytes=4 * MIB))
    watcher.join()
    assert rows[0]["status"] == "downloaded" and rows[0]["sha256"] == stored.sha256
    asked = ranges_asked(up, "big.safetensors")
    # One request per segment: the first stretch is never asked for again, nothing else twice.
    assert asked[0] == f"bytes=0-{4 * MIB - 1}" and len(asked) == len(set(asked)) == 4
    assert up.stats.bytes_sent["files:big.safetensors"] == 16 * MIB
    assert up.stats.peak == 4
    # The other segments started while the first was far from done, not after it.
    assert sent_when_parallel and sent_when_parallel[0] < 3 * MIB, sent_when_parallel


def test_resumed_part_on_a_slow_link_splits_without_fetching_anything_twice(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    stored = up.add_file("big.safetensors", 8 * MIB)
    part = tmp_path / "staging/checkpoints/big.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(Path(stored.path).read_bytes()[:12345])  # a cut single stream, mid-segment
    Path(f"{part}.json").write_text(
        json.dumps({"url": f"{up.files_url}/files/big.safetensors", "sha256": None})
    )
    up.connection_rate = 4 * MIB
    rows = fetch(plan(tmp_path, up, ["big.safetensors"], connections_per_file=4, segment_bytes=2 * MIB))
    assert rows[0]["status"] == "downloaded" and rows[0]["sha256"] == stored.sha256
    assert rows[0]["bytes_reused"] == 12345
    asked = ranges_asked(up, "big.safetensors")
    assert asked[0] == f"bytes=12345-{2 * MIB - 1}" and len(asked) == len(set(asked)) == 4
    assert up.stats.bytes_sent["files:big.safetensors"] == 8 * MIB - 12345


def test_fast_link_stays_on_one_connection(tmp_path: Path, model_upstreams: Upstreams) -> None:
    up = model_upstreams
    stored = up.add_file("big.safetensors", 12 * MIB)
    rows = fetch(plan(tmp_path, up, ["big.safetensors"], connections_per_file=4, split_below_mbps=0.001))
    assert rows[0]["sha256"] == stored.sha256
    assert ranges_asked(up, "big.safetensors") == [f"bytes=0-{MIB - 1}", f"bytes={MIB}-"]


def test_connections_per_host_are_bounded_across_files(tmp_path: Path, model_upstreams: Upstreams) -> None:
    up = model_upstreams
    names = [f"m{i}.safetensors" for i in range(3)]
    stored = {n: up.add_file(n, 6 * MIB) for n in names}
    up.connection_rate = 4 * MIB
    rows = fetch(plan(tmp_path, up, names, parallel=3, connections_per_file=4, connections_per_host=5))
    assert {r["filename"]: r["sha256"] for r in rows} == {n: s.sha256 for n, s in stored.items()}
    assert 3 <= up.stats.peak <= 5


def test_killed_ranged_download_resumes_per_segment(tmp_path: Path, model_upstreams: Upstreams) -> None:
    up = model_upstreams
    size = 16 * MIB
    stored = up.add_file("big.safetensors", size)
    up.connection_rate = 2 * MIB
    plan_path = plan(tmp_path, up, ["big.safetensors"], connections_per_file=4)
    proc = subprocess.Popen(
        [sys.executable, str(FETCH), "--plan", str(plan_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = tmp_path / "staging/checkpoints/big.safetensors.part.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if len(json.loads(state.read_text()).get("done", [])) >= 6:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["done"]
    kept = len(done) * MIB
    deadline = time.monotonic() + 10
    while up.stats.active and time.monotonic() < deadline:  # the server notices the dead connections
        time.sleep(0.05)
    sent_before = up.stats.bytes_sent["files:big.safetensors"]
    up.connection_rate = 0
    rows = fetch(plan_path)
    assert rows[0]["status"] == "downloaded" and rows[0]["sha256"] == stored.sha256
    assert rows[0]["bytes_reused"] == kept
    # The second run fetched only the segments not on disk (plus the one-byte length probe).
    assert up.stats.bytes_sent["files:big.safetensors"] - sent_before == size - kept + 1


def test_resumed_part_on_a_fast_link_reports_only_its_own_bytes_as_reused(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    stored = up.add_file("big.safetensors", 12 * MIB)
    part = tmp_path / "staging/checkpoints/big.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(Path(stored.path).read_bytes()[:12345])
    url = f"{up.files_url}/files/big.safetensors"
    Path(f"{part}.json").write_text(json.dumps({"url": url, "sha256": None}))
    rows = fetch(plan(tmp_path, up, ["big.safetensors"], connections_per_file=4, split_below_mbps=0.001))
    assert rows[0]["sha256"] == stored.sha256 and rows[0]["bytes_reused"] == 12345
    assert ranges_asked(up, "big.safetensors") == [f"bytes=12345-{MIB - 1}", f"bytes={MIB}-"]
    assert up.stats.bytes_sent["files:big.safetensors"] == 12 * MIB - 12345


def test_the_request_target_is_never_empty() -> None:
    """A URL without a path asks for "/" on every request (a ranged segment asked for "" before)."""
    import importlib.util
    import urllib.parse

    spec = importlib.util.spec_from_file_location("fetch_models_under_test", FETCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target = module.request_target
    assert target(urllib.parse.urlsplit("http://cdn.example")) == "/"
    assert target(urllib.parse.urlsplit("http://cdn.example?sig=1")) == "/?sig=1"
    assert (
        target(urllib.parse.urlsplit("https://cdn.example/a/b.safetensors?x=1&y=2"))
        == "/a/b.safetensors?x=1&y=2"
    )
