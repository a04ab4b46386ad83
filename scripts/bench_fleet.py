#!/usr/bin/env python3
"""No-op ``--deploy-all`` on the local SSH fleet: our CLI vs raw pyinfra, and fleet width (1, 4, 16 hosts).

Starts the test fleet (comfyfleet.devkit.fleet) with the widest host count asked for,
local model / package / git upstreams and a workflow needing two node packs and three
models, converges every host once, then times re-runs that must change nothing
(``--runs`` each, min and median printed):

- ``comfyfleet common INV:one --deploy-all`` vs ``pyinfra INV:one deploy/common.py --data
  task=deploy-all`` (the same operations through pyinfra's own CLI). Target <= 2x.
- ``comfyfleet common INV --deploy-all`` on N hosts vs on one, for every N of ``--hosts``
  (default 1,4,16). Targets (on medians): 4 hosts <= 1.2x one host, 16 hosts <= 1.5x.
- SSH round trips per host of one no-op deploy-all: pyinfra connector calls
  (``run_shell_command``, ``put_file``, ``get_file``) counted in this process, each listed with
  the CPU its host's container (cgroup) and the machine's Docker engine spent on it
  (``--commands FILE`` writes the full commands).
- Where the CPU of each width went: the CLI process, the host containers (sshd, sudo, the
  commands; per host) and the Docker engine. Every test host shares this machine's cores, so
  host CPU that a real fleet spends on its own machines is what widens the ratio here.

The last line says which targets were met or missed; exit 1 when one was missed.

    .venv/bin/python scripts/bench_fleet.py                 # 1, 4 and 16 hosts, 3 runs each
    .venv/bin/python scripts/bench_fleet.py --hosts 1,4 --runs 5
    .venv/bin/python scripts/bench_fleet.py --profile /tmp/fleet.txt   # + py-spy of the widest run

``--profile FILE`` samples one more run of the widest fleet with py-spy (``pip install py-spy``),
writes the collapsed stacks to FILE and prints where the samples went (by package, self time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pyinfra.connectors.ssh import SSHConnector

from comfyfleet.devkit.fleet import Fleet
from comfyfleet.devkit.upstreams.model_servers import Upstreams
from comfyfleet.devkit.upstreams.pypi import PackageIndex
from comfyfleet.runner import run

ROOT = Path(__file__).resolve().parents[1]

BIN = Path(sys.executable).parent
WRAPPER_MAX = 2.0
WIDTH_MAX = {4: 1.2, 16: 1.5}
CONNECTOR_CALLS = ("run_shell_command", "put_file", "get_file")


def workflow() -> dict[str, object]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "10": {
            "class_type": "LoraLoader",
            "inputs": {
                "lora_name": "detail.safetensors",
                "model": ["4", 0],
                "clip": ["4", 1],
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        },
        "11": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "20": {"class_type": "BenchNodeA", "inputs": {"text": "a lighthouse"}},
        "21": {"class_type": "BenchNodeB", "inputs": {"text": ["20", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ["21", 0], "clip": ["10", 1]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "bench"}},
    }


CPU: dict[str, list[float]] = {}
HOSTS_CPU: dict[str, list[float]] = {}  # CPU seconds the test hosts' containers used per run
ENGINE_CPU: dict[str, list[float]] = {}  # CPU seconds of the machine's Docker engine per run


def containers_cpu(prefix: str) -> float | None:
    """CPU seconds used so far by this fleet's containers (cgroup v1 or v2), None when unreadable."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--no-trunc", "--filter", f"name=^/{prefix}"], capture_output=True, text=True
    ).stdout.split()
    total = 0.0
    for cid in ids:
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")
        try:
            if v1.exists():
                total += int(v1.read_text()) / 1e9
            else:
                total += int(v2.read_text().split("usage_usec", 1)[1].split()[0]) / 1e6
        except (OSError, IndexError, ValueError):
            return None
    return total if ids else None


def timed(
    argv: list[str], env: dict[str, str], runs: int, label: str = "", hosts: str | None = None
) -> list[float]:
    """Wall clock of ``runs`` runs of a command that must succeed (its own CPU seconds kept in CPU[label],
    the CPU seconds of the containers named ``hosts``* in HOSTS_CPU[label], the engine's in ENGINE_CPU)."""
    times = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        hosts_before = containers_cpu(hosts) if hosts else None
        engine_before = engine_cpu()
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
        elapsed = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        CPU.setdefault(label, []).append(cpu)
        # max(0, ...): an engine process that ended meanwhile (a shim) takes its total with it.
        ENGINE_CPU.setdefault(label, []).append(max(0.0, engine_cpu() - engine_before))
        hosts_after = containers_cpu(hosts) if hosts else None
        if hosts_before is not None and hosts_after is not None:
            HOSTS_CPU.setdefault(label, []).append(hosts_after - hosts_before)
        if proc.returncode != 0:
            raise SystemExit(f"re-run failed ({' '.join(argv[:3])}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        times.append(elapsed)
    return times


def container_cgroup(name: str) -> Path | None:
    """The file holding a container's CPU usage (cgroup v1 cpuacct.usage in ns, or v2 cpu.stat)."""
    cid = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}}", name], capture_output=True, text=True
    ).stdout.strip()
    for path in (
        Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage"),
        Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"),
    ):
        if cid and path.exists():
            return path
    return None


def cgroup_cpu(path: Path | None) -> float:
    """CPU seconds a container used so far (0 when its cgroup is unknown)."""
    if path is None:
        return 0.0
    text = path.read_text()
    if path.name == "cpuacct.usage":
        return int(text) / 1e9
    return int(text.split("usage_usec", 1)[1].split()[0]) / 1e6


def engine_cpu() -> float:
    """CPU seconds used so far by this machine's Docker engine: dockerd, containerd and the shims with
    the runc children they reaped (a ``docker exec``/``docker inspect`` on a host costs most here)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            if fields[0].split("(", 1)[1].startswith(("dockerd", "containerd")):
                ticks = fields[1].split()
                total += sum(int(t) for t in ticks[11:15]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class Call:
    """One pyinfra connector call of a host: what it ran and the CPU it cost the host and the engine."""

    name: str
    command: str
    sudo: bool
    wall: float
    host_cpu: float
    engine_cpu: float


@contextmanager
def counted_round_trips(cgroups: dict[str, Path | None] | None = None) -> Iterator[dict[str, list[Call]]]:
    """Record pyinfra's SSH connector calls per host while the block runs (this process only).

    With ``cgroups`` (host name -> its container's CPU file) each call carries the CPU seconds the
    host's container and the machine's Docker engine used during it; ``connect`` is recorded too.
    """
    calls: dict[str, list[Call]] = {}
    cgroups = cgroups or {}
    names = (*CONNECTOR_CALLS, "connect")
    originals = {name: getattr(SSHConnector, name) for name in names}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def recording(self: SSHConnector, *args: Any, **kwargs: Any) -> Any:
            cg = cgroups.get(self.host.name)
            cpu0, eng0, t0 = cgroup_cpu(cg), engine_cpu() if cg else 0.0, time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                wall = time.perf_counter() - t0
                cmd = args[0] if name == "run_shell_command" and args else kwargs.get("command", "")
                text = cmd.get_masked_value() if hasattr(cmd, "get_masked_value") else str(cmd or "")
                if name in ("put_file", "get_file"):
                    text = str(args[1] if len(args) > 1 else kwargs.get("remote_filename", ""))
                sudo = bool(kwargs.get("_sudo", self.host.data.get("_sudo")))
                cpu = cgroup_cpu(cg) - cpu0
                eng = max(0.0, engine_cpu() - eng0) if cg else 0.0
                calls.setdefault(self.host.name, []).append(Call(name, text, sudo, wall, cpu, eng))

        return recording

    for name, fn in originals.items():
        setattr(SSHConnector, name, wrap(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(SSHConnector, name, fn)


def print_calls(calls: list[Call], out: Path | None) -> None:
    """Every connector call of one no-op host: wall, host CPU, engine CPU, and the command (first 100 chars)."""
    print(
        "connector calls of one no-op host (host CPU = its container's cgroup; engine = dockerd+containerd):"
    )
    for c in calls:
        first = " ".join(c.command.split())[:100]
        print(
            f"  {c.name:<17} wall {c.wall * 1000:6.0f} ms  host CPU {c.host_cpu * 1000:5.0f} ms  "
            f"engine CPU {c.engine_cpu * 1000:4.0f} ms  sudo {'y' if c.sudo else 'n'}  {first}"
        )
    if out:
        out.write_text("\n\n".join(f"## {c.name} sudo={c.sudo}\n{c.command}" for c in calls) + "\n")
        print(f"  (full commands in {out})")


def width_line(n: int, times: list[float]) -> str:
    """One width's wall clock with where the CPU went: the CLI, each host's container, the Docker engine."""
    med = statistics.median
    cli, engine = med(CPU[str(n)]), med(ENGINE_CPU[str(n)])
    hosts_cpu = HOSTS_CPU.get(str(n))
    line = f"no-op deploy-all, {n:>2} host(s), comfyfleet CLI: {stats(times)}\n    CPU (medians): CLI {cli:.2f} s"
    busy = cli + engine
    if hosts_cpu:
        line += (
            f", hosts {med(hosts_cpu):.2f} s ({med(hosts_cpu) / n * 1000:.0f} ms per host: sshd + commands)"
        )
        busy += med(hosts_cpu)
    line += f", Docker engine {engine:.2f} s; {busy / med(times):.2f} of {os.cpu_count()} cores busy"
    return line + f" (load {os.getloadavg()[0]:.1f})"


def stats(times: list[float]) -> str:
    return f"min {min(times):6.2f} s  median {statistics.median(times):6.2f} s  ({len(times)} runs)"


def parse_hosts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--hosts: {text!r} is not a comma list of host counts (e.g. 1,4,16)") from None
    if not counts or counts[0] < 1:
        raise SystemExit("--hosts: give host counts of 1 or more (e.g. 1,4,16)")
    return counts if counts[0] == 1 else [1, *counts]


def profile(argv: list[str], env: dict[str, str], out: Path) -> None:
    """One run under py-spy; samples per package (self time) and the busiest functions."""
    spy = BIN / "py-spy"
    if not spy.exists():
        print("profile: py-spy is not installed in this venv (pip install py-spy); skipped")
        return
    proc = subprocess.run(
        [str(spy), "record", "--format", "raw", "--rate", "200", "-o", str(out), "--", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    if proc.returncode != 0 or not out.exists():
        print(f"profile: py-spy failed: {(proc.stdout + proc.stderr)[-500:]}")
        return
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]  # "function (path:line)"
        name, _, where = leaf.partition(" (")
        path = where.rsplit(":", 1)[0]  # py-spy names files relative to sys.path: "gevent/hub.py"
        parts = path.split("/")
        by_package[parts[0].removesuffix(".py") if len(parts) > 1 else "stdlib"] += int(count)
        by_function[f"{name} ({'/'.join(parts[-2:])})"] += int(count)
        total += int(count)
    print(f"profile of one widest run ({total} samples, collapsed stacks in {out}), self time:")
    print("  by package: " + ", ".join(f"{k} {v / total:.0%}" for k, v in by_package.most_common(8)))
    for k, v in by_function.most_common(8):
        print(f"  {v / total:5.1%}  {k}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,4,16", help="comma list of host counts (default 1,4,16)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (default 3)")
    parser.add_argument(
        "--profile", type=Path, help="py-spy one more widest run; collapsed stacks to this file"
    )
    parser.add_argument(
        "--commands", type=Path, help="write the full commands of one no-op host to this file"
    )
    args = parser.parse_args()
    widths = parse_hosts(args.hosts)
    runs = max(1, args.runs)
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
    width_times: dict[int, list[float]] = {}
    try:
        fleet.make_node_pack_repo("BenchPackA", classes=["BenchNodeA"], requirements=["benchdep==1.0"])
        fleet.make_node_pack_repo("BenchPackB", classes=["BenchNodeB"])
        wf = work / "workflows"
        wf.mkdir()
        (wf / "bench.json").write_text(json.dumps(workflow()))
        (wf / "overrides.yaml").write_text(
            yaml.safe_dump(
                {
                    "nodes": {
                        "BenchNodeA": {"repo": "https://github.com/testorg/BenchPackA", "version": "1.0.0"},
                        "BenchNodeB": {"repo": "https://github.com/testorg/BenchPackB"},
                    },
                    "models": {
                        "sd15.safetensors": {
                            "folder": "checkpoints",
                            "url": up.hf_resolve_url("org/sd15", "sd15.safetensors"),
                        },
                        "ae.safetensors": {
                            "folder": "vae",
                            "url": up.hf_resolve_url("org/gated", "ae.safetensors"),
                        },
                        "detail.safetensors": {
                            "folder": "loras",
                            "url": "https://civitai.com/api/download/models/4242",
                        },
                    },
                }
            )
        )
        t0 = time.perf_counter()
        hosts = [fleet.add_host(f"bench{i}", provider="lambda") for i in range(1, widths[-1] + 1)]
        print(f"{len(hosts)} test hosts started in {time.perf_counter() - t0:.1f} s", flush=True)
        group = {
            "workflows_dir": str(wf),
            "hf_endpoint": up.hf_url,
            "civitai_endpoint": up.civitai_url,
            "git_mirrors": {"https://github.com/": f"{fleet.upstreams.base_url}/"},
            "pip_index_url": index.url,
            "deploy_api": False,
        }
        inv = fleet.write_inventory(hosts, work / "inventory.py", **group)
        env = {**os.environ, "HF_TOKEN": up.hf_token, "CIVITAI_API_TOKEN": up.civitai_token}
        t0 = time.perf_counter()
        first = subprocess.run(
            [str(BIN / "comfyfleet"), "common", str(inv), "--deploy-all"],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=3600,
        )
        if first.returncode != 0:
            print(first.stdout[-4000:] + first.stderr[-4000:])
            print("targets met: none | missed: first deploy-all failed")
            return 1
        print(
            f"first deploy-all on {len(hosts)} hosts: {time.perf_counter() - t0:.1f} s (not timed below)",
            flush=True,
        )
        os.environ.update(HF_TOKEN=up.hf_token, CIVITAI_API_TOKEN=up.civitai_token)
        inv_one = fleet.write_inventory(hosts[:1], work / "inventory-1.py", **group)
        cgroups = {h.name: container_cgroup(h.container) for h in hosts[:1] if h.container}
        with counted_round_trips(cgroups) as calls:
            again = run(str(inv_one), "deploy-all")
        busy = [(h.host, h.status, h.changed, h.reason) for h in again.hosts if h.status != "no change"]
        if busy:
            print(f"targets met: none | missed: the second deploy-all was not a no-op: {busy}")
            return 1
        one_calls = calls.get(hosts[0].name, [])
        print_calls(one_calls, args.commands)
        per_call = {name: sum(c.name == name for c in one_calls) for name in CONNECTOR_CALLS}
        trips = sum(per_call.values())
        raw_one = timed(
            [str(BIN / "pyinfra"), "-y", str(inv_one), "deploy/common.py", "--data", "task=deploy-all"],
            env,
            runs,
        )
        for n in widths:
            inv_n = (
                inv_one if n == 1 else fleet.write_inventory(hosts[:n], work / f"inventory-{n}.py", **group)
            )
            width_times[n] = timed(
                [str(BIN / "comfyfleet"), "common", str(inv_n), "--deploy-all"],
                env,
                runs,
                f"{n}",
                fleet.prefix,
            )
            print(width_line(n, width_times[n]), flush=True)
        if args.profile:
            profile([str(BIN / "comfyfleet"), "common", str(inv_n), "--deploy-all"], env, args.profile)
    finally:
        fleet.down()
        up.stop()
        index.stop()
    one = statistics.median(width_times[1])
    wrapper = one / statistics.median(raw_one)
    print(f"no-op deploy-all,  1 host,  raw pyinfra   : {stats(raw_one)}")
    print(
        f"SSH round trips per host (one no-op deploy-all, pyinfra connector calls): {trips} "
        f"({', '.join(f'{k} {v}' for k, v in per_call.items())})"
    )
    print(f"ratio comfyfleet / raw pyinfra, 1 host (medians): {wrapper:.2f} (target <= {WRAPPER_MAX})")
    met, missed = [], []
    (met if wrapper <= WRAPPER_MAX else missed).append(f"CLI vs raw pyinfra {wrapper:.2f}x")
    for n in widths[1:]:
        ratio = statistics.median(width_times[n]) / one
        best = min(width_times[n]) / min(width_times[1])
        limit = WIDTH_MAX.get(n)
        print(
            f"ratio {n} hosts / 1 host: median {ratio:.2f}, min {best:.2f}"
            + (f" (target <= {limit})" if limit else " (no target)")
        )
        if limit:
            (met if ratio <= limit else missed).append(f"{n} hosts vs 1 {ratio:.2f}x")
    print(f"targets met: {'; '.join(met) or 'none'} | missed: {'; '.join(missed) or 'none'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
