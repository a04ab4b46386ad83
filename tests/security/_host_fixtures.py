"""Fixtures for the host-side attacks: real loop devices, the real fact script, the real guard scripts.

Loop devices are made on this machine (root), as the test fleet's block volumes are. The
BlockVolume fact's own shell script runs against them for real; the facts it reports feed
the block.volume operation through the command-level harness, and the commands it yields
(the mkfs guard) run for real too. Nothing touches this machine's /etc/fstab.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deploy.deploy_harness import render, run_op

from comfyfleet.facts.block import BlockVolume


def sh(command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=check, timeout=120)


@contextmanager
def loop_device(image: Path, size: str = "64M") -> Iterator[str]:
    """A sparse file attached to a real loop device; unmounted, swapped off and detached afterwards."""
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield dev
    finally:
        sh(
            f"swapoff {dev} 2>/dev/null; umount {dev} 2>/dev/null; pvremove -q -y {dev} >/dev/null 2>&1; "
            f"losetup -d {dev}",
            check=False,
        )


def volume_facts(device: str, mount_point: str) -> dict[str, Any]:
    """What the BlockVolume fact reports for device on this machine (its real script, run for real)."""
    out = sh(render(BlockVolume().command(device, mount_point))).stdout
    facts = BlockVolume().process(out.splitlines())
    assert facts is not None
    return facts


def plan_volume(device: str, mount_point: str, facts: dict[str, Any]) -> list[str]:
    """The commands block.volume yields for these facts."""
    commands, _host = run_op(
        "block.volume", {"device": device, "mount_point": mount_point}, {"BlockVolume": facts}
    )
    return commands


def refusal_line(commands: list[str]) -> str:
    """The one line a refused volume fails with (the operation's `fail` command), or ''."""
    for command in commands:
        if command.startswith('sh -c \'printf "%s\\n" "$1" >&2; exit 1\''):
            return command.split("comfyfleet ", 1)[1].strip("'")
    return ""


ROOT = Path(__file__).resolve().parents[2]
FETCH = ROOT / "src" / "comfyfleet" / "hostside" / "fetch_models.py"
MODEL_FILES = ROOT / "src" / "comfyfleet" / "hostside" / "model_files.py"


def run_hostside(script: Path, plan: dict[str, Any], where: Path, *args: str) -> tuple[int, str, str]:
    """A host-side script run as the host runs it (its own process, a plan file): rc, stdout, stderr."""
    plan_file = where / f"plan-{script.stem}.json"
    plan_file.write_text(json.dumps(plan))
    proc = subprocess.run(
        [sys.executable, str(script), "--plan", str(plan_file), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def fetch(where: Path, items: list[dict[str, Any]], **plan: Any) -> tuple[int, list[dict[str, Any]], str]:
    """fetch_models.py over real HTTP: exit code, RESULT rows, stderr."""
    full = {
        "models_dir": str(where / "models"),
        "staging_dir": str(where / "staging"),
        "items": items,
        **plan,
    }
    rc, out, err = run_hostside(FETCH, full, where)
    assert "RESULT " in out, err
    return rc, json.loads(out.split("RESULT ", 1)[1]), err
