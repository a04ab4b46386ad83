#!/usr/bin/env python3
"""No-op re-run of bootstrap + runtime on one test host and on four (the local SSH fleet).

Starts the test fleet (comfyfleet.devkit.fleet), bootstraps four hosts once, then times re-runs that
must change nothing. The targets apply to what an operator waits for, the wall clock of
``comfyfleet bootstrap TARGET`` (as the issue's reference numbers for pyinfra and Ansible
are command wall clocks), best of 5; the same runs through the Python API in this
process are printed too. Targets: one host <= 3 s; four hosts <= 1.2x one host.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from comfyfleet.devkit.fleet import Fleet
from comfyfleet.runner import RunOptions, parallel_ssh, prepare_hosts, run

ROOT = Path(__file__).resolve().parents[1]

ONE_HOST_MAX_S = 3.0
FOUR_RATIO_MAX = 1.2
REPEATS = 5


def timed_cli(target: str, hosts: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "comfyfleet.cli.main", "bootstrap", target],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        )
        elapsed = time.perf_counter() - started
        if res.returncode != 0 or f"{hosts} hosts: {hosts} no change" not in res.stdout:
            raise SystemExit(f"re-run was not a no-op:\n{res.stdout}{res.stderr}")
        best = min(best, elapsed)
    return best


def timed(target: str) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        result = run(target, "bootstrap", options=RunOptions())
        elapsed = time.perf_counter() - started
        bad = [(h.host, h.status, h.reason, h.changed) for h in result.hosts if h.status != "no change"]
        if bad:
            raise SystemExit(f"re-run was not a no-op: {bad}")
        best = min(best, elapsed)
    return best


def main() -> int:
    parallel_ssh()
    fleet = Fleet().up()
    try:
        hosts = [fleet.add_host(f"bench{i}", provider="lambda") for i in range(1, 5)]
        inventory = fleet.write_inventory(hosts)
        first = run(str(inventory), "bootstrap", options=RunOptions())
        failed = [(h.host, h.reason) for h in first.hosts if not h.ok]
        if failed:
            print(f"bootstrap failed: {failed}")
            return 1
        prepare_hosts(str(inventory))
        one = timed_cli(f"{inventory}:bench1", 1)
        four = timed_cli(str(inventory), 4)
        api_one = timed(f"{inventory}:bench1")
        api_four = timed(str(inventory))
    finally:
        fleet.down()
    ratio = four / one
    print(f"no-op bootstrap+runtime, `comfyfleet bootstrap`, 1 host : {one:.2f} s (best of {REPEATS})")
    print(f"no-op bootstrap+runtime, `comfyfleet bootstrap`, 4 hosts: {four:.2f} s (best of {REPEATS})")
    print(f"ratio 4 hosts / 1 host                                  : {ratio:.2f}")
    print(
        f"same through the Python API in-process: 1 host {api_one:.2f} s, 4 hosts {api_four:.2f} s "
        f"(ratio {api_four / api_one:.2f})"
    )
    one_ok = one <= ONE_HOST_MAX_S
    ratio_ok = ratio <= FOUR_RATIO_MAX
    verdict = (
        f"one host <= {ONE_HOST_MAX_S:.0f} s: {'met' if one_ok else 'missed'} ({one:.2f} s); "
        f"four hosts <= {FOUR_RATIO_MAX}x one: {'met' if ratio_ok else 'missed'} ({ratio:.2f}x)"
    )
    print(("targets met: " if one_ok and ratio_ok else "targets missed: ") + verdict)
    return 0 if one_ok and ratio_ok else 1


if __name__ == "__main__":
    sys.exit(main())
