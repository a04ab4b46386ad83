#!/usr/bin/env python3
"""Benchmark `comfyfleet ship`: every example workflow shipped to a fresh test host.

Starts the local SSH test fleet (comfyfleet.devkit.fleet), one fresh host bootstrapped as an operator
would before a first ship (not timed as part of a ship), local upstreams for the
examples' models and node pack, then ships each workflow in workflows/ through the same
pipeline as the CLI (analyze → install → api → health → generate → record). Prints
per-step and total seconds per workflow and the first-attempt success rate (a ship
counts only when it succeeded with every step on its first attempt).

Targets: 100% first-attempt success; under 180 s per workflow (model files are 256 KiB,
so model bytes do not count).

    .venv/bin/python scripts/bench_ship.py
    .venv/bin/python scripts/bench_ship.py --workflow workflows/txt2img.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TARGET_FIRST_ATTEMPT = 1.0
TARGET_SECONDS = 180.0
STEPS = ("analyze", "install", "api", "models", "health", "generate", "record")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", type=Path, action="append", help="only these workflows (default: all)")
    args = parser.parse_args()

    from comfyfleet.devkit.fleet import Fleet, FleetUnavailable
    from comfyfleet.devkit.ship_fleet import ShipFleet
    from comfyfleet.registry import Registry
    from comfyfleet.ship import prepare_ship, run_ship, standard_steps

    with tempfile.TemporaryDirectory(prefix="bench-ship-") as tmp:
        root = Path(tmp)
        os.environ["COMFYFLEET_STATE_DIR"] = str(root / "state")
        fleet = Fleet()
        env: ShipFleet | None = None
        try:
            t0 = time.monotonic()
            try:
                fleet.up()
            except FleetUnavailable as exc:
                print(f"error: test fleet unavailable: {exc}", file=sys.stderr)
                print("targets: first-attempt success missed, per-workflow time missed (no fleet)")
                return 1
            env = ShipFleet(fleet, root).start()
            host = fleet.add_host("benchship")
            inventory = env.inventory([host], root / "inventory.py")
            print(
                f"fleet up in {time.monotonic() - t0:.1f}s; bootstrap of fresh host {host.name}: "
                f"{env.bootstrap(inventory):.1f}s (not part of a ship)"
            )

            names = (
                [p.stem for p in args.workflow]
                if args.workflow
                else sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
            )
            registry = Registry()
            rows: list[tuple[str, bool, bool, dict[str, float], float, str]] = []
            for name in names:
                ctx = prepare_ship(env.workflows / f"{name}.json", str(inventory), "dev", None, registry)
                outcome = run_ship(ctx, standard_steps(ctx, registry), registry)
                result = outcome.result
                per_step: dict[str, float] = {}
                for r in result.results:
                    if not r.skipped:
                        per_step[r.step] = max(per_step.get(r.step, 0.0), r.seconds)
                first = result.ok and all(r.attempts == 1 for r in result.results)
                rows.append(
                    (
                        name,
                        result.ok,
                        first,
                        per_step,
                        result.seconds,
                        "" if result.ok else str(result.failure),
                    )
                )
        finally:
            if env is not None:
                env.stop()
            fleet.down()

    header = f"{'workflow':<16}{'ok':<5}{'1st':<5}" + "".join(f"{s:>10}" for s in STEPS) + f"{'total':>10}"
    print(header)
    for name, ok, first, per_step, total, why in rows:
        cells = "".join(f"{per_step[s]:>10.2f}" if s in per_step else f"{'-':>10}" for s in STEPS)
        print(f"{name:<16}{'yes' if ok else 'NO':<5}{'yes' if first else 'no':<5}{cells}{total:>10.2f}")
        if why:
            print(f"  {why}")
    rate = sum(1 for r in rows if r[2]) / len(rows) if rows else 0.0
    slowest = max((r[4] for r in rows), default=float("inf"))
    mean = sum(r[4] for r in rows) / len(rows) if rows else float("inf")
    print(
        f"first-attempt success: {rate:.0%} ({sum(1 for r in rows if r[2])}/{len(rows)}); "
        f"seconds per workflow: mean {mean:.1f}, slowest {slowest:.1f}"
    )
    first_ok = rate >= TARGET_FIRST_ATTEMPT
    time_ok = bool(rows) and slowest < TARGET_SECONDS
    print(
        f"targets: first-attempt success 100% {'met' if first_ok else 'missed'}, "
        f"under {TARGET_SECONDS:.0f}s per workflow {'met' if time_ok else 'missed'}"
    )
    return 0 if first_ok and time_ok else 1


if __name__ == "__main__":
    sys.exit(main())
