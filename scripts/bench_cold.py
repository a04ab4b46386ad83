#!/usr/bin/env python3
"""Cold deploy: a bare test-fleet host to its first generated image vs downloading the same bytes alone.

Starts the local SSH test fleet (comfyfleet.devkit.fleet) and the local Hugging Face-compatible
server (comfyfleet.devkit.upstreams) paced per connection (``--mbps``, a WAN link from a CDN),
serving the ``lora_txt2img`` example's checkpoint and LoRA as placeholder files of ``--gib``
GiB in total. Each run takes a new bare host and times what an operator runs on it:
``comfyfleet bootstrap`` (provider bootstrap and the ComfyUI runtime), then ``comfyfleet ship``
(analyze, node packs, model files, the API service, health, first generation, record), through
the same functions the CLI calls. Phases printed: bootstrap+runtime (one task: provider
bootstrap and ComfyUI runtime), nodes (install-nodes), models (download-models), api
(update-binary), health, first image (the generate check), other (analysis, the node snapshot,
serving switch, API key fetch, record).

The floor: the same model plan fetched on a bare host of its own by the same downloader
(``hostside/fetch_models.py``, same parallelism), nothing else running. Target: cold deploy
<= 1.1x that download (medians over ``--runs``). Today's pipeline runs the tiers one after the
other, so the target is expected to be missed by the non-download phases; the line says by how
much. The last line says met or missed; exit 1 on a miss.

    .venv/bin/python scripts/bench_cold.py                  # 1 GiB at 40 MB/s per connection, 3 runs
    .venv/bin/python scripts/bench_cold.py --gib 2 --mbps 80 --runs 5
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
PHASES = ("bootstrap+runtime", "nodes", "models", "api", "health", "first image", "other")
FETCH = ROOT / "src" / "comfyfleet" / "hostside" / "fetch_models.py"


def timed_task_runner(phases: dict[str, float]) -> Callable[[Any, Any, dict[str, Any]], Any]:
    """runner.run for ship's host steps, adding each task's seconds to its phase."""
    names = {"install-nodes": "nodes", "download-models": "models"}

    def run_task(specs: Any, task: Any, data: dict[str, Any]) -> Any:
        label = task if isinstance(task, str) else getattr(task, "__name__", "deploy")
        t0 = time.perf_counter()
        try:
            return run(specs, task, data=data)
        finally:
            phase = names.get(label, "api" if label == "update-binary" else "other")
            phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - t0

    return run_task


def cold_deploy(env: ShipFleet, host: Host, root: Path, registry: Registry) -> dict[str, float]:
    """Bootstrap and ship on a bare host; seconds per phase and the total."""
    inventory = env.inventory([host], root / f"inventory-{host.name}.py")
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    boot = run(str(inventory), "bootstrap")
    phases["bootstrap+runtime"] = time.perf_counter() - t0
    if not boot.ok:
        raise SystemExit(f"bootstrap failed on {host.name}: {[(h.status, h.reason) for h in boot.hosts]}")
    ctx = prepare_ship(
        env.workflows / f"{WORKFLOW}.json", str(inventory), "dev", f"cold-{host.name}", registry
    )
    outcome = run_ship(ctx, standard_steps(ctx, registry, run_task=timed_task_runner(phases)), registry)
    phases["total"] = time.perf_counter() - t0
    if not outcome.result.ok:
        raise SystemExit(f"ship failed on {host.name}: {outcome.result.failure}")
    for r in outcome.result.results:
        if r.step in ("health", "generate") and not r.skipped:
            key = "health" if r.step == "health" else "first image"
            phases[key] = phases.get(key, 0.0) + r.seconds
    phases["other"] = phases["total"] - sum(v for k, v in phases.items() if k not in ("total", "other"))
    return phases


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="model bytes in total, GiB (default 1)")
    parser.add_argument("--mbps", type=float, default=40.0, help="MB/s per connection (default 40)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.gib <= 0 or args.mbps <= 0 or args.runs < 1:
        print("error: --gib and --mbps must be positive, --runs 1 or more", file=sys.stderr)
        return 2
    parallel_ssh()  # as the CLI does: hosts' SSH I/O is gevent-aware
    per_file = int(args.gib * 2**30) // len(MODELS)
    downloads: list[float] = []
    colds: list[dict[str, float]] = []
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
                downloads.append(download_alone(env, bare, parallel=3))
                fleet.remove_host(bare.name)
                host = fleet.add_host(f"cold{i}")
                colds.append(cold_deploy(env, host, root, registry))
                fleet.remove_host(host.name)
                row = "  ".join(f"{p} {colds[-1].get(p, 0.0):.1f}" for p in PHASES)
                print(
                    f"run {i + 1}: download alone {downloads[-1]:.1f} s; cold deploy {colds[-1]['total']:.1f} s "
                    f"({row})",
                    flush=True,
                )
        finally:
            if env is not None:
                env.stop()
            fleet.down()
    totals = [c["total"] for c in colds]
    print(f"{'':<28}{'seconds':>30}")
    print(f"{'download alone (floor)':<28}{stats(downloads):>30}")
    print(f"{'cold deploy, bare host':<28}{stats(totals):>30}")
    for phase in PHASES:
        print(f"{'  ' + phase:<28}{stats([c.get(phase, 0.0) for c in colds]):>30}")
    ratio = statistics.median(totals) / statistics.median(downloads)
    print(f"cold deploy / download alone (medians): {ratio:.2f}x (target <= {TARGET})")
    if ratio <= TARGET:
        print(f"targets met: cold deploy {ratio:.2f}x the download alone")
        return 0
    print(
        f"targets missed: cold deploy {ratio:.2f}x the download alone (> {TARGET}x): the tiers run one "
        "after the other, so bootstrap, runtime, nodes, api and the first image add to the download"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
