#!/usr/bin/env python3
"""Benchmark the host-side model downloader against curl, on the same file from a local server.

Measures, on 127.0.0.1 only:

1. throughput of ``hostside/fetch_models.py`` (Range-capable transfer, sha256 verified
   while streaming, fsync, rename into place) vs ``curl -o`` of the same file, median of
   interleaved runs. Target: ≥ 0.9× curl. For context it also prints
   ``curl -o file && sync file`` (curl with the same durability: we fsync before the
   rename), ``curl | tee file | sha256sum`` (the same verified result by hand) and this
   CPU's sha256 speed: a downloader that verifies cannot be faster than its hash.
   Fairness: same server, same file, same filesystem for every client's output file;
   dirty pages are flushed (``sync``) before each timed run and the order of the
   clients rotates from run to run.
2. a download killed midway and resumed: the bytes the resume fetched again beyond the
   part that was missing. Target: 0.

Usage: ``.venv/bin/python scripts/bench_models.py [--size-mb 512] [--runs 3]``.
The last line says which targets were met or missed; exit 1 when one was missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from comfyfleet.devkit.upstreams.model_servers import Upstreams

ROOT = Path(__file__).resolve().parents[1]
FETCH = ROOT / "src" / "comfyfleet" / "hostside" / "fetch_models.py"


def timed(argv: list[str], **kwargs: object) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - t0


def sha256_speed(mb: int = 512) -> float:
    """hashlib.sha256 MB/s over 1 MiB buffers (the downloader's buffer size), best of 3."""
    view = memoryview(os.urandom(1 << 20))
    best = float("inf")
    for _ in range(3):
        h = hashlib.sha256()
        t0 = time.perf_counter()
        for _ in range(mb):
            h.update(view)
        best = min(best, time.perf_counter() - t0)
    return mb * (1 << 20) / best / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mb << 20
    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    up = Upstreams(work / "upstream").start()
    try:
        stored = up.add_file("model.safetensors", size)
        url = f"{up.files_url}/files/model.safetensors"
        plan = {"models_dir": str(work / "models"), "staging_dir": str(work / "staging"),
                "items": [{"filename": "model.safetensors", "folder": "checkpoints", "url": url,
                           "sha256": stored.sha256}]}
        (work / "plan.json").write_text(json.dumps(plan))
        out_file = work / "curl.bin"  # same filesystem as models/, where we write

        def curl() -> float:
            return timed(["curl", "-sf", "-o", str(out_file), url])

        def curl_sync() -> float:
            return timed(["sh", "-c", 'curl -sf -o "$2" "$1" && sync "$2"', "sh", url, str(out_file)])

        def curl_tee() -> float:
            return timed(["sh", "-c", 'curl -sf "$1" | tee "$2" | sha256sum >/dev/null', "sh", url, str(out_file)])

        def ours() -> float:
            shutil.rmtree(work / "models", ignore_errors=True)
            return timed([sys.executable, str(FETCH), "--plan", str(work / "plan.json")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        clients = {"curl": curl, "curl+sync": curl_sync, "tee": curl_tee, "ours": ours}
        times: dict[str, list[float]] = {k: [] for k in clients}
        order = list(clients)
        for _ in range(args.runs):
            for name in order:
                out_file.unlink(missing_ok=True)
                os.sync()  # same dirty-page state for every client
                times[name].append(clients[name]())
            got = hashlib.sha256((work / "models/checkpoints/model.safetensors").read_bytes()).hexdigest()
            assert got == stored.sha256, "downloaded file does not verify"
            order = order[1:] + order[:1]  # rotate: nobody always runs first or last
        out_file.unlink(missing_ok=True)
        mb = size / 1e6
        curl_mbs, sync_mbs, tee_mbs, ours_mbs = (mb / statistics.median(times[k]) for k in clients)
        ratio = ours_mbs / curl_mbs
        sha_mbs = sha256_speed()
        print(f"file: {args.size_mb} MiB from {up.files_url}, median of {args.runs} interleaved runs")
        print(f"curl -o:                      {curl_mbs:8.0f} MB/s")
        print(f"curl -o && sync file:         {sync_mbs:8.0f} MB/s")
        print(f"curl | tee | sha256sum:       {tee_mbs:8.0f} MB/s")
        print(f"fetch_models.py (verified):   {ours_mbs:8.0f} MB/s   = {ratio:.2f}x curl, "
              f"{ours_mbs / sync_mbs:.2f}x curl+sync, {ours_mbs / tee_mbs:.2f}x curl+sha256sum")
        print(f"sha256 on this CPU (hashlib): {sha_mbs:8.0f} MB/s   (1 MiB buffers): hashing alone caps a verifying download "
              f"at {sha_mbs / curl_mbs:.2f}x curl here")

        # Resume: kill a slow download midway, then finish it at full speed.
        shutil.rmtree(work / "models", ignore_errors=True)
        shutil.rmtree(work / "staging", ignore_errors=True)
        up.throttle["files:model.safetensors"] = max(size / 4, 1 << 20)
        before = up.stats.bytes_sent.get("files:model.safetensors", 0)
        proc = subprocess.Popen([sys.executable, str(FETCH), "--plan", str(work / "plan.json")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        part = work / "staging/checkpoints/model.safetensors.part"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < size * 0.4):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kept = part.stat().st_size
        first = up.stats.bytes_sent.get("files:model.safetensors", 0) - before
        up.throttle.clear()
        out = subprocess.run([sys.executable, str(FETCH), "--plan", str(work / "plan.json")],
                             capture_output=True, text=True, check=True).stdout
        result = json.loads(out.split("RESULT ", 1)[1])[0]
        second = up.stats.bytes_sent.get("files:model.safetensors", 0) - before - first
        refetched = second - (size - kept)
        print(f"resume: killed at {kept / 1e6:.1f} MB kept on disk ({first / 1e6:.1f} MB had been sent), "
              f"resume fetched {second / 1e6:.1f} MB, reused {result['bytes_reused'] / 1e6:.1f} MB, "
              f"re-fetched {refetched} bytes, status {result['status']}")
    finally:
        up.stop()
        shutil.rmtree(work, ignore_errors=True)

    met: list[str] = []
    missed: list[str] = []
    (met if ratio >= 0.9 else missed).append(f"throughput {ratio:.2f}x curl (target >= 0.9x)")
    (met if refetched <= 0 and result["status"] == "downloaded" else missed).append(
        f"resume re-fetched {refetched} bytes (target 0)")
    print(f"targets met: {'; '.join(met) or 'none'} | missed: {'; '.join(missed) or 'none'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
