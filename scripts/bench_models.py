#!/usr/bin/env python3
"""Benchmark the host-side model downloader against what users would run instead, side by side.

Every client fetches the same Hugging Face URL from the local HF-compatible server
(``tests/upstreams/model_servers.py``: resolve answers 302 to a CDN host name, with Range):

- ``curl -o`` (one stream, no verification), ``curl | sha256sum`` (one stream, verified by hand),
- huggingface_hub's own ``hf_hub_download`` (``HF_ENDPOINT`` pointed at the local server,
  ``local_dir`` on the same filesystem; run as its own process, as ``hf download`` would be),
- ours: ``hostside/fetch_models.py`` (sha256 verified, fsync, rename into place; ranged
  parallel segments where the server serves Range).

Cases, each with ``--runs`` interleaved runs (the order rotates; dirty pages are flushed
before each timed run) and min/median wall time reported:

(a) plain loopback, output on tmpfs (/dev/shm) and on disk. Target: ours ≥ 0.9× warm
    ``curl -o`` (median MB/s) on both. Printed beside it: ``curl -o && sync`` (the bytes on the
    disk, as ours has them before its rename), CPU seconds per client, and the ceiling when
    the cores are saturated by other work: wall time then follows CPU seconds, and a verified
    download needs curl's copies plus the sha256 (``cpu(curl) / (cpu(curl) + cpu(sha256))``).
    On disk also the disk's own durable write speed (no network): ours fsyncs before its rename,
    so ``durable / curl -o`` bounds its ratio. On tmpfs also ours' startup: ``--check`` (what
    every host runs on every no-op deploy) and a run with the file already present, beside
    ``python3 -c pass``, wall and CPU per call.
(b) the server paced per connection (``--throttle-mbps``, default 20 MB/s, like a WAN link
    from a CDN). Targets: ours ≥ 3× a single curl stream and ≥ 1.0× huggingface_hub.

Plus a download killed midway (on the paced server) and resumed: bytes fetched again beyond
what was missing. Target: at most one segment per connection (the segments in flight).

Usage: ``.venv/bin/python scripts/bench_models.py [--size-mb 256] [--throttled-mb 128] [--runs 3]``.
The last line says which targets were met or missed; exit 1 when one was missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from comfyfleet.devkit.upstreams.model_servers import Upstreams

ROOT = Path(__file__).resolve().parents[1]
FETCH = ROOT / "src" / "comfyfleet" / "hostside" / "fetch_models.py"

REPO = "bench/models"
HF_SCRIPT = (
    "import sys; from huggingface_hub import hf_hub_download; "
    "hf_hub_download(sys.argv[1], sys.argv[2], local_dir=sys.argv[3])"
)


LAST_CPU = [0.0]  # CPU seconds (user + system, every process) of the last timed run


def cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    c0, t0 = cpu_children(), time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    LAST_CPU[0] = cpu_children() - c0
    return wall


class Case:
    """One server setting and one output filesystem; every client writes below ``out``."""

    def __init__(self, up: Upstreams, name: str, out: Path, filename: str, sha256: str) -> None:
        self.up, self.name, self.out, self.filename, self.sha256 = up, name, out, filename, sha256
        self.url = f"{up.hf_url}/{REPO}/resolve/main/{filename}"  # what curl fetches
        self.env = {
            **os.environ,
            "HF_ENDPOINT": up.hf_url,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HOME": str(out / "hf-home"),
        }
        self.plan = out / "plan.json"
        self.plan.write_text(
            json.dumps(
                {
                    "models_dir": str(out / "models"),
                    "staging_dir": str(out / "staging"),
                    "hf_endpoint": up.hf_url,
                    "items": [
                        {"filename": filename, "folder": "checkpoints", "url": self.url, "sha256": None}
                    ],
                }
            )
        )

    def clients(self) -> dict[str, Callable[[], float]]:
        target = self.out / "client.bin"

        def curl() -> float:
            return timed(["curl", "-sfL", "-o", str(target), self.url])

        def curl_fsync() -> float:
            # What ours promises before it renames: the bytes on the disk, not only in the page cache.
            return timed(["sh", "-c", 'curl -sfL -o "$2" "$1" && sync "$2"', "sh", self.url, str(target)])

        def curl_sha() -> float:
            return timed(
                ["sh", "-c", 'curl -sfL "$1" | tee "$2" | sha256sum >/dev/null', "sh", self.url, str(target)]
            )

        def hf() -> float:
            return timed(
                [sys.executable, "-c", HF_SCRIPT, REPO, self.filename, str(self.out / "hf-local")], self.env
            )

        def ours() -> float:
            return timed([sys.executable, str(FETCH), "--plan", str(self.plan)], self.env)

        return {
            "curl -o": curl,
            "curl -o && sync": curl_fsync,
            "curl | sha256sum": curl_sha,
            "hf_hub_download": hf,
            "ours": ours,
        }

    def run(self, runs: int, only: list[str]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """(wall seconds, CPU seconds) per client, ``runs`` interleaved runs each."""
        clients = {k: v for k, v in self.clients().items() if k in only}
        times: dict[str, list[float]] = {k: [] for k in clients}
        cpu: dict[str, list[float]] = {k: [] for k in clients}
        order = list(clients)
        for _ in range(runs):
            for name in order:
                # Every client starts with no earlier download on the filesystem and nothing dirty:
                # deleting a 256 MiB file just before a timed run would charge its block freeing
                # (journal commit; discards, as this ext4 is mounted with discard) to the next fsync.
                (self.out / "client.bin").unlink(missing_ok=True)
                shutil.rmtree(self.out / "hf-local", ignore_errors=True)
                if name == "ours":
                    shutil.rmtree(self.out / "models", ignore_errors=True)
                os.sync()  # same dirty-page state for every client
                times[name].append(clients[name]())
                cpu[name].append(LAST_CPU[0])
            got = hashlib.sha256((self.out / "models/checkpoints" / self.filename).read_bytes()).hexdigest()
            assert got == self.sha256, "our download does not verify"
            order = order[1:] + order[:1]  # nobody always runs first or last
        return times, cpu


def sha256_speed(mb: int = 256) -> float:
    """hashlib.sha256 MB per CPU second over 1 MiB buffers on this CPU, best of 3: a verifying download's ceiling.

    Thread CPU time, not wall time: other processes taking the core meanwhile do not count.
    """
    view = memoryview(os.urandom(1 << 20))
    best = float("inf")
    for _ in range(3):
        h = hashlib.sha256()
        t0 = time.thread_time()
        for _ in range(mb):
            h.update(view)
        best = min(best, time.thread_time() - t0)
    return mb * (1 << 20) / best / 1e6


def durable_write_speed(where: Path, size: int) -> float:
    """MB/s of writing size bytes from memory to a new file in where and fsyncing it, best of 2.

    The way ours writes (page cache, writeback started every 8 MiB, fsync at the end): no network
    and no hashing, so a durable download on this disk cannot beat it.
    """
    block = os.urandom(1 << 20)
    path = where / "durable-probe.bin"
    best = float("inf")
    for _ in range(2):
        path.unlink(missing_ok=True)
        os.sync()
        t0 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for i in range(size >> 20):
                os.write(fd, block)
                if i % 8 == 7:
                    os.posix_fadvise(fd, (i - 7) << 20, 8 << 20, os.POSIX_FADV_DONTNEED)
            os.fsync(fd)
        finally:
            os.close(fd)
        best = min(best, time.perf_counter() - t0)
    path.unlink()
    return size / best / 1e6


def startup_costs(plan: Path, runs: int = 10) -> dict[str, tuple[float, float, float]]:
    """(min wall, median wall, median CPU) seconds of ours doing nothing but starting, and of bare Python.

    ``--check`` on a plan whose file is in place is what every host runs on every no-op deploy.
    """
    argvs = {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        "ours --check": [sys.executable, str(FETCH), "--plan", str(plan), "--check"],
        "ours, file present": [sys.executable, str(FETCH), "--plan", str(plan)],
    }
    out = {}
    for name, argv in argvs.items():
        walls, cpus = [], []
        for _ in range(runs):
            walls.append(timed(argv))
            cpus.append(LAST_CPU[0])
        out[name] = (min(walls), statistics.median(walls), statistics.median(cpus))
    return out


def report(
    title: str, size: int, times: dict[str, list[float]], cpu: dict[str, list[float]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Print min/median MB/s and median CPU seconds per client; returns both medians."""
    print(f"\n{title}  (load {os.getloadavg()[0]:.1f})")
    medians, cpus = {}, {}
    for name, ts in times.items():
        best, med = size / min(ts) / 1e6, size / statistics.median(ts) / 1e6
        medians[name], cpus[name] = med, statistics.median(cpu[name])
        print(
            f"  {name:18s} median {med:8.1f} MB/s   best {best:8.1f} MB/s   CPU {cpus[name]:.2f} s"
            f"   ({len(ts)} runs)"
        )
    return medians, cpus


def resume_check(up: Upstreams, out: Path, filename: str, size: int) -> tuple[int, str]:
    """Kill ours midway on the paced server, run again: (bytes fetched beyond what was missing, status)."""
    case = Case(up, "resume", out, filename, "")
    for d in ("models", "staging"):
        shutil.rmtree(out / d, ignore_errors=True)
    before = sum(up.stats.bytes_sent.values())
    proc = subprocess.Popen(
        [sys.executable, str(FETCH), "--plan", str(case.plan)],
        env=case.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = out / "staging/checkpoints" / (filename + ".part.json")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if len(json.loads(state.read_text()).get("done", [])) * (8 << 20) >= size * 0.4:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = sum(up.stats.bytes_sent.values()) - before
    kept_segments = json.loads(state.read_text()).get("done", [])
    kept = sum(min(8 << 20, size - i * (8 << 20)) for i in kept_segments)
    out_text = subprocess.run(
        [sys.executable, str(FETCH), "--plan", str(case.plan)],
        env=case.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out_text.split("RESULT ", 1)[1])[0]
    second = sum(up.stats.bytes_sent.values()) - before - first
    print(
        f"\nresume: killed with {kept / 1e6:.1f} MB of whole segments on disk ({first / 1e6:.1f} MB had "
        f"been sent), the second run fetched {second / 1e6:.1f} MB, reused {result['bytes_reused'] / 1e6:.1f} MB, "
        f"status {result['status']}"
    )
    return second - (size - kept), result["status"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256, help="file for the loopback cases")
    parser.add_argument("--throttled-mb", type=int, default=128, help="file for the paced case")
    parser.add_argument("--throttle-mbps", type=float, default=20.0, help="per-connection pace of case (b)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size, slow_size = args.size_mb << 20, args.throttled_mb << 20
    disk = Path(tempfile.mkdtemp(prefix="bench-models-", dir=os.environ.get("BENCH_DISK_DIR", "/var/tmp")))
    shm = Path(tempfile.mkdtemp(prefix="bench-models-", dir="/dev/shm"))
    up = Upstreams(disk / "upstream").start()
    met: list[str] = []
    missed: list[str] = []

    def target(ok: bool, text: str) -> None:
        (met if ok else missed).append(text)

    try:
        big = up.add_hf(REPO, "big.safetensors", size)
        slow = up.add_hf(REPO, "slow.safetensors", slow_size)
        print(
            f"files: {args.size_mb} MiB (loopback) and {args.throttled_mb} MiB (paced) from {up.hf_url}, "
            f"{args.runs} interleaved runs each; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
        )
        everyone = ["curl -o", "curl -o && sync", "curl | sha256sum", "hf_hub_download", "ours"]
        for label, where in (("tmpfs", shm), ("disk", disk / "out")):
            where.mkdir(parents=True, exist_ok=True)
            times, cpu = Case(up, label, where, "big.safetensors", big.sha256).run(args.runs, everyone)
            med, cpus = report(f"(a) loopback, output on {label} ({where})", size, times, cpu)
            ratio = med["ours"] / med["curl -o"]
            print(
                f"  ours = {ratio:.2f}x curl -o, {med['ours'] / med['curl -o && sync']:.2f}x curl -o && sync, "
                f"{med['ours'] / med['curl | sha256sum']:.2f}x curl | sha256sum, "
                f"{med['ours'] / med['hf_hub_download']:.2f}x hf_hub_download"
            )
            sha = sha256_speed()
            sha_cpu = size / sha / 1e6
            # With every core busy (other processes on the machine), wall time follows CPU
            # seconds: a verified download costs at least curl's copies plus the sha256.
            bound = cpus["curl -o"] / (cpus["curl -o"] + sha_cpu)
            print(
                f"  sha256 on this CPU now: {sha:.0f} MB/s = {sha_cpu:.2f} CPU s for the file; curl -o used "
                f"{cpus['curl -o']:.2f} CPU s, ours {cpus['ours']:.2f}: with the cores saturated a verified "
                f"download can reach at most {bound:.2f}x curl -o (with a core to spare for the hash: "
                f"{sha / med['curl -o']:.2f}x)"
            )
            why = f"saturated-CPU bound {bound:.2f}"
            if label == "disk":
                durable = durable_write_speed(where, size)
                disk_bound = min(1.0, durable / med["curl -o"])
                why += f", durable-write bound {disk_bound:.2f}"
                print(
                    f"  this disk's durable write, no network: {durable:.0f} MB/s (page cache, writeback "
                    f"started every 8 MiB, fsync): a download that lands durably can reach at most "
                    f"{disk_bound:.2f}x curl -o (which leaves its bytes in the page cache)"
                )
            else:
                for name, (best, med_wall, med_cpu) in startup_costs(
                    Case(up, label, where, "big.safetensors", big.sha256).plan
                ).items():
                    print(
                        f"  startup: {name:20s} wall min {best * 1e3:5.1f} ms, median {med_wall * 1e3:5.1f} ms,"
                        f" CPU {med_cpu * 1e3:5.1f} ms per call (10 runs)"
                    )
            target(ratio >= 0.9, f"(a) {label} {ratio:.2f}x curl -o (>= 0.9; {why})")
        up.connection_rate = args.throttle_mbps * 1e6
        paced = disk / "paced"
        paced.mkdir()
        times, cpu = Case(up, "paced", paced, "slow.safetensors", slow.sha256).run(
            args.runs, ["curl -o", "hf_hub_download", "ours"]
        )
        med, _cpus = report(
            f"(b) server paced at {args.throttle_mbps:.0f} MB/s per connection, output on disk",
            slow_size,
            times,
            cpu,
        )
        vs_curl, vs_hf = med["ours"] / med["curl -o"], med["ours"] / med["hf_hub_download"]
        print(
            f"  ours = {vs_curl:.2f}x one curl stream, {vs_hf:.2f}x hf_hub_download; server saw at most "
            f"{up.stats.peak} bodies at once"
        )
        target(vs_curl >= 3.0, f"(b) {vs_curl:.2f}x curl (>= 3)")
        target(vs_hf >= 1.0, f"(b) {vs_hf:.2f}x hf_hub_download (>= 1)")
        refetched, status = resume_check(up, paced, "slow.safetensors", slow_size)
        allowance = 4 * (8 << 20)  # the segments in flight when killed, one per connection
        print(
            f"  fetched again beyond what was missing: {refetched / 1e6:.1f} MB (allowed {allowance / 1e6:.0f} MB)"
        )
        target(
            refetched <= allowance and status == "downloaded", f"resume re-fetched {refetched / 1e6:.1f} MB"
        )
    finally:
        up.stop()
        shutil.rmtree(disk, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    print(f"\ntargets met: {'; '.join(met) or 'none'} | missed: {'; '.join(missed) or 'none'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
