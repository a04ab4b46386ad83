#!/usr/bin/env python3
"""No-op ``--deploy-all`` on the local SSH fleet: our CLI vs raw pyinfra, one host vs four.

Starts the test fleet (comfyfleet.devkit.fleet) with four hosts, local model / package / git
upstreams and a workflow needing two node packs and three models, converges every host
once, then times re-runs that must change nothing (best of 3 each):

- ``comfyfleet common INV:one --deploy-all`` vs ``pyinfra INV:one deploy/common.py --data
  task=deploy-all`` (the same operations through pyinfra's own CLI). Target ≤ 2×.
- ``comfyfleet common INV --deploy-all`` on four hosts vs on one. Target ≤ 1.2×.

The last line says which targets were met or missed; exit 1 when one was missed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from comfyfleet.devkit.fleet import Fleet
from comfyfleet.devkit.upstreams.model_servers import Upstreams
from comfyfleet.devkit.upstreams.pypi import PackageIndex
from comfyfleet.runner import run

ROOT = Path(__file__).resolve().parents[1]

BIN = Path(sys.executable).parent
REPEATS = 5
WRAPPER_MAX = 2.0
FOUR_MAX = 1.2


def workflow() -> dict[str, object]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": "detail.safetensors", "model": ["4", 0],
                                                      "clip": ["4", 1], "strength_model": 1.0, "strength_clip": 1.0}},
        "11": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "20": {"class_type": "BenchNodeA", "inputs": {"text": "a lighthouse"}},
        "21": {"class_type": "BenchNodeB", "inputs": {"text": ["20", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ["21", 0], "clip": ["10", 1]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "bench"}},
    }


def timed(argv: list[str], env: dict[str, str]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"re-run failed ({' '.join(argv[:3])}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        best = min(best, elapsed)
    return best


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-deploy-all-"))
    up = Upstreams(work / "models")
    index = PackageIndex(work / "wheels")
    up.add_hf("org/sd15", "sd15.safetensors", 2_000_000)
    up.add_hf("org/gated", "ae.safetensors", 300_000, gated=True)
    up.add_civitai(4242, "detail.safetensors", 400_000)
    index.add("benchdep", "1.0")
    up.start_process()
    index.start_process()
    fleet = Fleet().up()
    try:
        fleet.make_node_pack_repo("BenchPackA", classes=["BenchNodeA"], requirements=["benchdep==1.0"])
        fleet.make_node_pack_repo("BenchPackB", classes=["BenchNodeB"])
        wf = work / "workflows"
        wf.mkdir()
        (wf / "bench.json").write_text(json.dumps(workflow()))
        (wf / "overrides.yaml").write_text(yaml.safe_dump({
            "nodes": {"BenchNodeA": {"repo": "https://github.com/testorg/BenchPackA", "version": "1.0.0"},
                      "BenchNodeB": {"repo": "https://github.com/testorg/BenchPackB"}},
            "models": {
                "sd15.safetensors": {"folder": "checkpoints", "url": up.hf_resolve_url("org/sd15", "sd15.safetensors")},
                "ae.safetensors": {"folder": "vae", "url": up.hf_resolve_url("org/gated", "ae.safetensors")},
                "detail.safetensors": {"folder": "loras", "url": "https://civitai.com/api/download/models/4242"},
            },
        }))
        hosts = [fleet.add_host(f"bench{i}", provider="lambda") for i in range(1, 5)]
        group = {"workflows_dir": str(wf), "hf_endpoint": up.hf_url, "civitai_endpoint": up.civitai_url,
                 "git_mirrors": {"https://github.com/": f"{fleet.upstreams.base_url}/"},
                 "pip_index_url": index.url, "deploy_api": False}
        inv = fleet.write_inventory(hosts, work / "inventory.py", **group)
        env = {**os.environ, "HF_TOKEN": up.hf_token, "CIVITAI_API_TOKEN": up.civitai_token}
        first = subprocess.run([str(BIN / "comfyfleet"), "common", str(inv), "--deploy-all"], capture_output=True,
                               text=True, env=env, cwd=ROOT, timeout=1800)
        if first.returncode != 0:
            print(first.stdout[-4000:] + first.stderr[-4000:])
            print("targets met: none | missed: first deploy-all failed")
            return 1
        os.environ.update(HF_TOKEN=up.hf_token, CIVITAI_API_TOKEN=up.civitai_token)
        again = run(str(inv), "deploy-all")
        busy = [(h.host, h.status, h.changed, h.reason) for h in again.hosts if h.status != "no change"]
        if busy:
            print(f"targets met: none | missed: the second deploy-all was not a no-op: {busy}")
            return 1
        # One host: an inventory of its own (same data), for both doors.
        inv_one = fleet.write_inventory(hosts[:1], work / "inventory-one.py", **group)
        ours_one = timed([str(BIN / "comfyfleet"), "common", str(inv_one), "--deploy-all"], env)
        raw_one = timed([str(BIN / "pyinfra"), "-y", str(inv_one), "deploy/common.py", "--data", "task=deploy-all"],
                        env)
        ours_four = timed([str(BIN / "comfyfleet"), "common", str(inv), "--deploy-all"], env)
    finally:
        fleet.down()
        up.stop()
        index.stop()
    wrapper = ours_one / raw_one
    four = ours_four / ours_one
    print(f"no-op deploy-all, 1 host, comfyfleet CLI : {ours_one:.2f} s (best of {REPEATS})")
    print(f"no-op deploy-all, 1 host, raw pyinfra    : {raw_one:.2f} s (best of {REPEATS})")
    print(f"no-op deploy-all, 4 hosts, comfyfleet CLI: {ours_four:.2f} s (best of {REPEATS})")
    print(f"ratios: comfyfleet / pyinfra {wrapper:.2f} (target <= {WRAPPER_MAX}), "
          f"4 hosts / 1 host {four:.2f} (target <= {FOUR_MAX})")
    met, missed = [], []
    (met if wrapper <= WRAPPER_MAX else missed).append(f"CLI vs raw pyinfra {wrapper:.2f}x")
    (met if four <= FOUR_MAX else missed).append(f"4 hosts vs 1 {four:.2f}x")
    print(f"targets met: {'; '.join(met) or 'none'} | missed: {'; '.join(missed) or 'none'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
