#!/usr/bin/env python3
"""Sandbox SSH hosts on this machine (the test fleet, for people): up, list, down.

Examples:
  python scripts/fleet.py up 2                 # two Lambda-style hosts (user ubuntu)
  python scripts/fleet.py up 1 --volume        # one DataCrunch-style host (root) with a loop-device volume
  INV=$(python scripts/fleet.py up 1 --quiet)  # print only the inventory path
  python scripts/fleet.py build                # only start the engine and build the images (CI warm-up)
  python scripts/fleet.py list
  python scripts/fleet.py down ID              # or: down --all (every fleet, also crashed test sessions)

A fleet stays up (hosts, local git upstreams) until `down`. Needs root and a Debian
machine with scripts/setup-dev.sh run; the first `up` builds the images (about a minute).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from comfyfleet.devkit.fleet import Fleet, FleetUnavailable, cleanup, down_all, images, list_fleets
from comfyfleet.devkit.fleet.engine import ensure_engine
from comfyfleet.devkit.fleet.hosts import describe


def cmd_up(args: argparse.Namespace) -> int:
    provider = args.provider or ("datacrunch" if args.volume else "lambda")
    short = {"lambda": "lambda", "datacrunch": "dc", "generic": "host"}[provider]
    t0 = time.monotonic()
    fleet = Fleet(persistent=True)
    try:
        fleet.up()
        hosts = [
            fleet.add_host(f"{short}{i}", provider=provider, volume=args.volume) for i in range(1, args.n + 1)
        ]
    except (FleetUnavailable, RuntimeError) as exc:
        fleet.down()
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, FleetUnavailable) else 1
    inventory = fleet.write_inventory(hosts)
    elapsed = time.monotonic() - t0
    if args.quiet:
        print(inventory)
    elif args.json:
        print(
            json.dumps(
                {
                    "id": fleet.id,
                    "inventory": str(inventory),
                    "hosts": {h.name: fleet.host_data(h) for h in hosts},
                },
                indent=1,
            )
        )
    else:
        print(
            f"fleet {fleet.id} up in {elapsed:.1f}s (ComfyUI upstream {fleet.comfyui.url if fleet.comfyui else '-'})"
        )
        print(f"inventory: {inventory}")
        for host in hosts:
            print(f"  {describe(host)}")
        print(f"tear down: python scripts/fleet.py down {fleet.id}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    log: list[str] = []
    t0 = time.monotonic()
    try:
        engine = ensure_engine()
        host, runtime = images.host_image(log), images.runtime_image(log)
    except FleetUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in log:
        print(f"built: {line}")
    print(f"engine {engine}; host image {host}; runtime image {runtime}; {time.monotonic() - t0:.1f}s")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for state in list_fleets():
        kind = "persistent" if state.get("persistent") else ("stale" if state["stale"] else "test session")
        hosts = ", ".join(sorted(state.get("hosts", {})))
        print(f"{state['id']}  {kind:12}  {state['root']}  hosts: {hosts or '-'}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    if args.all:
        done = down_all()
    elif args.id:
        done = cleanup(Path(f"/tmp/cf-fleet-{args.id}"), args.id)
    else:
        print("error: name a fleet id (see `python scripts/fleet.py list`) or pass --all", file=sys.stderr)
        return 2
    for line in done:
        print(f"removed {line}")
    if not done:
        print("nothing to remove")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start N hosts and print the inventory path")
    up.add_argument("n", type=int, help="number of hosts")
    up.add_argument(
        "--volume", action="store_true", help="give each host a block volume on a real loop device"
    )
    up.add_argument(
        "--provider",
        choices=["lambda", "datacrunch", "generic"],
        help="default: lambda, or datacrunch with --volume",
    )
    out = up.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="print only the inventory path")
    out.add_argument("--json", action="store_true", help="print id, inventory and host data as JSON")
    up.set_defaults(func=cmd_up)
    build = sub.add_parser("build", help="start the engine and build the images, nothing else")
    build.set_defaults(func=cmd_build)
    ls = sub.add_parser("list", help="fleets on this machine")
    ls.set_defaults(func=cmd_list)
    down = sub.add_parser("down", help="remove a fleet: containers, loop devices, mounts, files")
    down.add_argument("id", nargs="?")
    down.add_argument("--all", action="store_true", help="remove every fleet (and leftovers by label)")
    down.set_defaults(func=cmd_down)
    args = parser.parse_args()
    if getattr(args, "n", 1) < 1:
        parser.error("N must be at least 1")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
