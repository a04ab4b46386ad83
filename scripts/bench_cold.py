#!/usr/bin/env python3
"""Cold deploy: a bare test-fleet host to its first generated image vs downloading the same bytes alone.

Starts the local SSH test fleet (comfyfleet.devkit.fleet) and the local Hugging Face-compatible
server (comfyfleet.devkit.upstreams) paced per connection (``--mbps``, a WAN link from a CDN),
serving the ``lora_txt2img`` example's checkpoint and LoRA as placeholder files of ``--gib``
GiB in total. Each run takes a new bare host and times what an operator runs on it:
``comfyfleet ship --bootstrap`` (analysis, the model downloads started detached on the host,
provider bootstrap and runtime, node packs, the API service, the wait for the downloads,
health, first generation, record), through the same functions the CLI calls.

Printed per run: the timeline of every host task and check (seconds from the start of the
ship) and, from the host's own job files, when the download started and ended there, so
the time left after the download (what bounds the ratio) is visible.

The floor: the same model plan fetched on a bare host of its own by the same downloader
(``hostside/fetch_models.py``, same parallelism), nothing else running. Target: cold deploy
<= 1.1x that download, in every run. The last line says met or missed; exit 1 on a miss.
Each timed part starts after a ``sync``, so neither pays for writes the part before left behind
(the removed host's GiBs, its container's files).

Defaults: 4 GiB (an SDXL-sized workflow) at 10 MB/s per connection, so the download takes about
half a minute even with 16 connections per host: the case the pipeline is for, where the model
bytes are the long pole. With 1 GiB at 40 MB/s the ranged downloader needs ~3 s while a bare
host's bootstrap alone takes ~8 s on this machine, so that ratio (3.8-4.7x here) measures
bootstrap, not what hides behind the download; run it with ``--gib 1 --mbps 40`` to see it.

    .venv/bin/python scripts/bench_cold.py                  # 4 GiB at 10 MB/s per connection, 3 runs
    .venv/bin/python scripts/bench_cold.py --gib 1 --mbps 40 --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfyfleet.devkit import REPO as ROOT
from comfyfleet.devkit.fleet import Fleet, FleetUnavailable, Host
from comfyfleet.devkit.ship_fleet import ShipFleet
from comfyfleet.registry import Registry
from comfyfleet.runner import parallel_ssh, run
from comfyfleet.ship import prepare_ship, run_ship, standard_steps

TARGET = 1.1
WORKFLOW = "lora_txt2img"
MODELS = (  # (repo, file, folder) of the workflow's model files, as its overrides name them
    ("Comfy-Org/stable-diffusion-v1-5-archive", "v1-5-pruned-emaonly-fp16.safetensors", "checkpoints"),
    ("ByteDance/Hyper-SD", "Hyper-SD15-8steps-CFG-lora.safetensors", "loras"),
)
FETCH = ROOT / "src" / "comfyfleet" / "hostside" / "fetch_models.py"
Span = tuple[str, float, float]


def timed_task_runner(
    t0: float, spans: list[Span], serial: bool = False
) -> Callable[[Any, Any, dict[str, Any]], Any]:
    """runner.run for ship's host steps, recording each task's start and end (seconds after t0).

    ``serial``: the way before the pipeline, one tier after the other: the downloads are
    waited for right after they start, before bootstrap, nodes and the API.
    """

    def run_task(specs: Any, task: Any, data: dict[str, Any]) -> Any:
        label = task if isinstance(task, str) else getattr(task, "__name__", "deploy")
        start = time.perf_counter() - t0
        try:
            result = run(specs, task, data=data)
            if serial and label == "models-start" and all(h.ok for h in result.hosts):
                result = run(specs, "models-wait", data=data)
            return result
        finally:
            spans.append((label, start, time.perf_counter() - t0))

    return run_task


def host_job(host: Host) -> dict[str, Any]:
    """The download job's own record on the host: started/finished (epoch seconds), exit code."""
    job = Path(host.data_root) / ".comfyfleet" / "model-job"
    return {
        **json.loads((job / "started.json").read_text()),
        **json.loads((job / "status.json").read_text()),
    }


def cold_deploy(
    env: ShipFleet, host: Host, root: Path, registry: Registry, serial: bool = False
) -> dict[str, Any]:
    """`ship --bootstrap` on a bare host; the total, the host's download span, the timeline."""
    inventory = env.inventory([host], root / f"inventory-{host.name}.py")
    spans: list[Span] = []
    wall0 = time.time()
    t0 = time.perf_counter()
    ctx = prepare_ship(
        env.workflows / f"{WORKFLOW}.json", str(inventory), "dev", f"cold-{host.name}", registry
    )
    ctx.data["bootstrap"] = True
    outcome = run_ship(
        ctx, standard_steps(ctx, registry, run_task=timed_task_runner(t0, spans, serial)), registry
    )
    total = time.perf_counter() - t0
    if not outcome.result.ok:
        raise SystemExit(f"ship failed on {host.name}: {outcome.result.failure}")
    ended = 0.0
    for r in outcome.result.results:  # steps run one after another: each ends where the next starts
        ended += r.seconds
        if r.step in ("analyze", "health", "generate", "record"):
            spans.append((r.step, ended - r.seconds, ended))
    job = host_job(host)
    return {
        "total": total,
        "dl_start": job["started"] - wall0,
        "dl_end": job["finished"] - wall0,
        "spans": sorted(spans, key=lambda s: s[1]),
    }


def download_alone(env: ShipFleet, host: Host, parallel: int) -> float:
    """The same model files fetched by fetch_models.py on a bare host; seconds of the run."""
    # On the bind-mounted host folder, where the ship's data root is too (not the container's overlay).
    base = f"{host.host_dir}/cold-bench"
    plan = {
        "models_dir": f"{base}/models",
        "staging_dir": f"{base}/downloads",
        "state_file": f"{base}/hashes.json",
        "hf_endpoint": env.up.hf_url,
        "civitai_endpoint": None,
        "parallel": parallel,
        "items": [
            {
                "filename": f,
                "folder": d,
                "url": env.up.hf_resolve_url(r, f),
                "sha256": None,
                "size": None,
                "record_hash": True,
            }
            for r, f, d in MODELS
        ],
    }
    container = host.container
    subprocess.run(["docker", "cp", str(FETCH), f"{container}:/tmp/fetch_models.py"], check=True)
    subprocess.run(
        ["docker", "exec", "-i", container, "sh", "-c", "cat > /tmp/cold-plan.json"],
        input=json.dumps(plan),
        text=True,
        check=True,
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            container,
            "python3",
            "/tmp/fetch_models.py",
            "--plan",
            "/tmp/cold-plan.json",
            "--secrets-stdin",
        ],
        input="{}",
        capture_output=True,
        text=True,
        timeout=3600,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"download alone failed on {host.name}:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return elapsed


def stats(values: list[float]) -> str:
    return f"min {min(values):7.1f}  median {statistics.median(values):7.1f}"


def timeline(cold: dict[str, Any]) -> str:
    rows = [f"    {'download job (host clock)':<26}{cold['dl_start']:7.1f} -> {cold['dl_end']:6.1f}"]
    rows += [f"    {label:<26}{a:7.1f} -> {b:6.1f}" for label, a, b in cold["spans"]]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0, help="model bytes in total, GiB (default 4)")
    parser.add_argument("--mbps", type=float, default=10.0, help="MB/s per connection (default 10)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--serial-too",
        action="store_true",
        help="also time the tiers one after the other (download first, then the rest) on a third bare host",
    )
    args = parser.parse_args()
    if args.gib <= 0 or args.mbps <= 0 or args.runs < 1:
        print("error: --gib and --mbps must be positive, --runs 1 or more", file=sys.stderr)
        return 2
    parallel_ssh()  # as the CLI does: hosts' SSH I/O is gevent-aware
    per_file = int(args.gib * 2**30) // len(MODELS)
    downloads: list[float] = []
    colds: list[dict[str, Any]] = []
    serials: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        root = Path(tmp)
        os.environ["COMFYFLEET_STATE_DIR"] = str(root / "state")
        fleet = Fleet()
        env: ShipFleet | None = None
        try:
            try:
                fleet.up()
            except FleetUnavailable as exc:
                print(f"error: test fleet unavailable: {exc}", file=sys.stderr)
                print("targets missed: no test fleet")
                return 1
            env = ShipFleet(fleet, root, model_bytes=per_file)
            env.up.connection_rate = args.mbps * 1e6
            env.start()
            registry = Registry()
            print(
                f"{len(MODELS)} model files of {per_file / 2**20:.0f} MiB, paced at {args.mbps:g} MB/s "
                f"per connection",
                flush=True,
            )
            for i in range(args.runs):
                bare = fleet.add_host(f"dl{i}")
                os.sync()
                downloads.append(download_alone(env, bare, parallel=3))
                fleet.remove_host(bare.name)
                host = fleet.add_host(f"cold{i}")
                os.sync()
                colds.append(cold_deploy(env, host, root, registry))
                fleet.remove_host(host.name)
                c = colds[-1]
                print(
                    f"run {i + 1}: download alone {downloads[-1]:.1f} s; cold deploy {c['total']:.1f} s "
                    f"({c['total'] / downloads[-1]:.2f}x); download on the host {c['dl_end'] - c['dl_start']:.1f} s "
                    f"from {c['dl_start']:.1f} s; after it {c['total'] - c['dl_end']:.1f} s",
                    flush=True,
                )
                print(timeline(c), flush=True)
                if args.serial_too:
                    host = fleet.add_host(f"serial{i}")
                    os.sync()
                    serials.append(cold_deploy(env, host, root, registry, serial=True)["total"])
                    fleet.remove_host(host.name)
                    print(
                        f"run {i + 1}: the same ship, tiers one after the other: {serials[-1]:.1f} s",
                        flush=True,
                    )
        finally:
            if env is not None:
                env.stop()
            fleet.down()
    totals = [c["total"] for c in colds]
    ratios = [c["total"] / d for c, d in zip(colds, downloads, strict=True)]
    print(f"{'':<34}{'seconds':>30}")
    print(f"{'download alone (floor)':<34}{stats(downloads):>30}")
    print(f"{'cold deploy, bare host':<34}{stats(totals):>30}")
    print(f"{'  download starts (on the host)':<34}{stats([c['dl_start'] for c in colds]):>30}")
    print(f"{'  download on the host':<34}{stats([c['dl_end'] - c['dl_start'] for c in colds]):>30}")
    print(f"{'  after the download ends':<34}{stats([c['total'] - c['dl_end'] for c in colds]):>30}")
    if serials:
        print(f"{'tiers one after the other':<34}{stats(serials):>30}")
    print(
        f"cold deploy / download alone per run: {', '.join(f'{r:.2f}x' for r in ratios)} (target <= {TARGET})"
    )
    worst = max(ratios)
    if worst <= TARGET:
        print(f"targets met: cold deploy <= {TARGET}x the download alone in every run (worst {worst:.2f}x)")
        return 0
    # What bounds it: the work that does not overlap the download (before it starts, after it ends).
    before = statistics.median(c["dl_start"] for c in colds)
    after = statistics.median(c["total"] - c["dl_end"] for c in colds)
    print(
        f"targets missed: cold deploy {worst:.2f}x the download alone in the worst run (> {TARGET}x); "
        f"median {before:.1f} s before the download starts and {after:.1f} s after it ends"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
