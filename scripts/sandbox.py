#!/usr/bin/env python3
"""The main job on a machine with no GPU host: a sandbox host, deployed end to end over SSH.

  .venv/bin/python scripts/sandbox.py            # run it all, print the status table, tear down
  .venv/bin/python scripts/sandbox.py --keep     # leave the host up to poke at (prints how)

What it does, with the same commands an operator runs against a rented machine:

1. starts one DataCrunch-style host on this machine (a container with sshd on a
   127.0.0.1 port, a real loop device as its block volume; comfyfleet.devkit.fleet),
2. `comfyfleet analyze` of the sandbox's workflows: the examples in workflows/ that a real ComfyUI runs
   here on CPU (`upscale`: a real tiny RealESRGAN-Compact model served locally; `swatch`: core
   nodes only). The SD1.5 examples (`txt2img`, `lora_txt2img`) need 2 GB of weights and are not
   part of the sandbox run,
3. `comfyfleet bootstrap INVENTORY` (volume formatted because it is empty, mounted by
   UUID, directory layout, ComfyUI at its pinned ref, runtime container),
4. `comfyfleet common INVENTORY --deploy-all` (custom node packs, models, the API
   service built by scripts/build-binary),
5. `comfyfleet common INVENTORY --verify-endpoints` (health, ready, one generation per
   workflow) and `--status`.

Offline, the upstreams are local mirrors and say so: the ComfyUI repository is the
ComfyUI stand-in (tests/standin/comfyui), or the real ComfyUI checkout that
COMFYFLEET_TEST_COMFYUI names, served over git smart HTTP, github.com node packs
come from a local git mirror (host data `git_mirrors`), huggingface.co models from a local
Hugging Face-compatible server (host data `hf_endpoint`) holding the tiny real upscale model.
Against real hosts, none of this is used: see README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from comfyfleet.devkit.fleet import Fleet, FleetUnavailable
from comfyfleet.devkit.ship_fleet import ShipFleet, cpu_examples

ROOT = Path(__file__).resolve().parents[1]

BIN = Path(sys.executable).parent


def step(title: str, *args: str) -> None:
    print(f"\n=== {title}\n$ comfyfleet {' '.join(args)}", flush=True)
    rc = subprocess.run([str(BIN / "comfyfleet"), *args], cwd=ROOT).returncode
    if rc != 0:
        raise SystemExit(f"sandbox: `comfyfleet {' '.join(args)}` exited {rc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the sandbox host up")
    args = parser.parse_args()

    fleet = Fleet(persistent=args.keep)
    scratch = Path(tempfile.mkdtemp(prefix="cf-sandbox-"))
    ship: ShipFleet | None = None
    try:
        print(
            "sandbox: starting the Docker engine, images and one host (the first run builds images, ~2 min)"
        )
        fleet.up()
        host = fleet.add_host("sandbox1", provider="datacrunch", volume=True)
        ship = ShipFleet(fleet, scratch, examples=cpu_examples()).start()
        inventory = ship.inventory([host], scratch / "inventory.py")
        print(
            f"sandbox: host {host.name} at 127.0.0.1:{host.ssh_port} (ssh user {host.ssh_user}), "
            f"volume {host.block_device}; inventory {inventory}"
        )
        comfyui = fleet.comfyui
        if comfyui and comfyui.real:
            label = f"ComfyUI {comfyui.default_ref} (real, from COMFYFLEET_TEST_COMFYUI)"
        else:
            label = "ComfyUI stand-in (tests/standin/comfyui)"
        print(
            f"sandbox: offline mirrors: {label} {comfyui.url if comfyui else '-'}, "
            f"Hugging Face {ship.up.hf_url}, github.com -> {fleet.upstreams.base_url}"
        )

        print(f"sandbox: workflows {', '.join(cpu_examples())} (copied to {ship.workflows})")
        step("analyze the workflows", "analyze", str(ship.workflows))
        step("bootstrap the host (DataCrunch: volume, docker, ComfyUI runtime)", "bootstrap", str(inventory))
        step("converge: nodes, models, API service", "common", str(inventory), "--deploy-all")
        step(
            "verify every workflow endpoint with one generation",
            "common",
            str(inventory),
            "--verify-endpoints",
        )
        step("status", "common", str(inventory), "--status")
        if args.keep:
            print(
                f"\nsandbox kept: API on http://127.0.0.1:{host.api_port}/docs (key in {ship.api_keys}), "
                f"ComfyUI on 127.0.0.1:{host.comfyui_port}"
            )
            print(f"try: comfyfleet common {inventory} --logs")
            print(f"tear down: .venv/bin/python scripts/fleet.py down {fleet.id}")
        return 0
    except FleetUnavailable as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    finally:
        if ship is not None and not args.keep:
            ship.stop()
        if not args.keep:
            fleet.down()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
