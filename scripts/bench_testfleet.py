#!/usr/bin/env python3
"""Times the local test fleet: warm start of two SSH hosts, and (--cold) the image build from nothing.

  python scripts/bench_testfleet.py          # warm: images exist; up + 2 hosts + one pyinfra round trip
  python scripts/bench_testfleet.py --cold   # also debootstrap + import + runtime image into throwaway tags

Targets: two hosts answer SSH within 5 s of asking (warm); a cold build within 180 s (CI).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
WARM_TARGET_S = 5.0
COLD_TARGET_S = 180.0


def cold_build() -> float:
    """Build both images with an empty cache under a salted recipe, then remove them."""
    with tempfile.TemporaryDirectory(prefix="cf-bench-cache-") as cache:
        env = {
            **os.environ,
            "COMFYFLEET_FLEET_CACHE": cache,
            "COMFYFLEET_FLEET_RECIPE_SALT": f"bench-{time.time()}",
        }
        code = (
            "import sys, time\n"
            "from comfyfleet.devkit.fleet import images\n"
            "log = []; t = time.monotonic(); h = images.host_image(log); r = images.runtime_image(log)\n"
            "print(time.monotonic() - t); print(h); print(r); [print('  ' + x, file=sys.stderr) for x in log]\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(TESTS)], env=env, capture_output=True, text=True, check=True
        )
        sys.stderr.write(out.stderr)
        seconds, host, runtime = out.stdout.split()
        subprocess.run(["docker", "rmi", runtime, host], capture_output=True, check=False)
    return float(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cold", action="store_true", help="also time a build of the images from nothing")
    args = parser.parse_args()
    from comfyfleet.devkit.fleet import Fleet

    results: list[tuple[str, float, float]] = []
    if args.cold:
        cold = cold_build()
        print(f"cold image build (debootstrap + import + runtime): {cold:.1f} s")
        results.append(("cold build", cold, COLD_TARGET_S))
    fleet = Fleet()
    try:
        t0 = time.monotonic()
        fleet.up()
        t1 = time.monotonic()
        hosts = [
            fleet.add_host("bench1", provider="lambda"),
            fleet.add_host("bench2", provider="datacrunch", volume=True),
        ]
        t2 = time.monotonic()
        inv = fleet.write_inventory(hosts)
        pyinfra = Path(sys.executable).with_name("pyinfra")
        proc = subprocess.run(
            [str(pyinfra), "-y", str(inv), "exec", "--", "true"], capture_output=True, text=True
        )
        t3 = time.monotonic()
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr)
            return 1
    finally:
        fleet.down()
    t4 = time.monotonic()
    print(f"fleet up (engine, images present, upstreams): {t1 - t0:.2f} s")
    print(f"two hosts answering SSH: {t2 - t1:.2f} s")
    print(f"pyinfra exec round trip on both: {t3 - t2:.2f} s")
    print(f"teardown: {t4 - t3:.2f} s")
    results.append(("warm 2 hosts", t2 - t1, WARM_TARGET_S))
    met = [f"{name} {v:.1f}s <= {t:.0f}s" for name, v, t in results if v <= t]
    missed = [f"{name} {v:.1f}s > {t:.0f}s" for name, v, t in results if v > t]
    print(f"targets met: {', '.join(met) or 'none'}; missed: {', '.join(missed) or 'none'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
