"""The machine's Docker engine: found running, or started once and left running for the session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from comfyfleet.devkit.fleet.errors import FleetUnavailable

SOCKET = Path("/var/run/docker.sock")
# How the fleet started dockerd, so a person (or `scripts/fleet.py engine`) can tell later.
RECORD = Path("/var/run/comfyfleet-dockerd.json")
LOG = Path("/var/log/comfyfleet-dockerd.log")


def run(
    args: list[str],
    *,
    check: bool = True,
    input: bytes | str | None = None,
    timeout: float | None = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command without a shell; on failure raise with its stderr so the cause is visible."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(args, input=data, capture_output=True, timeout=timeout, env=env, check=False)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:6])} ... exited {proc.returncode}: {err.strip()[-2000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def docker(*args: str, check: bool = True, timeout: float | None = 600) -> str:
    """Run the docker client against the machine's engine and return its stdout."""
    return run(["docker", *args], check=check, timeout=timeout).stdout


def engine_answers(socket: Path = SOCKET) -> bool:
    """True when a Docker engine answers on ``socket``."""
    if shutil.which("docker") is None:
        return False
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket}"}
    try:
        proc = run(["docker", "version", "--format", "{{.Server.Version}}"], check=False, timeout=20, env=env)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def ensure_engine(
    wait_s: float = 60.0,
    socket: Path = SOCKET,
    dockerd_args: tuple[str, ...] = (),
    record: Path = RECORD,
    log_path: Path = LOG,
    wrapper: tuple[str, ...] = (),
) -> str:
    """Make sure a Docker engine runs; start ``dockerd`` detached when none does.

    Returns how the engine was found ("running" or "started"). The daemon is left
    running after the session: starting it costs seconds and other sessions share it.
    ``socket``, ``dockerd_args`` and ``wrapper`` (a command prefix such as ``unshare --net``)
    exist so the selftest can start a second engine isolated from the shared one.
    """
    if socket.exists() and engine_answers(socket):
        return "running"
    dockerd = shutil.which("dockerd")
    if dockerd is None or shutil.which("docker") is None:
        raise FleetUnavailable(
            "no Docker engine: dockerd is not installed; run `bash scripts/setup-dev.sh` (installs docker.io)"
        )
    if os.geteuid() != 0:
        raise FleetUnavailable("no Docker engine runs and starting dockerd needs root")
    cmd = [*wrapper, dockerd, *dockerd_args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        # setsid: the daemon must survive the pytest process (and its process group) ending.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    record.write_text(
        json.dumps({"pid": proc.pid, "cmd": cmd, "log": str(log_path), "started_at": time.time()}) + "\n"
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise FleetUnavailable(f"dockerd exited with {proc.returncode}; end of {log_path}:\n{tail}")
        if socket.exists() and engine_answers(socket):
            return "started"
        time.sleep(0.3)
    raise FleetUnavailable(f"dockerd did not answer within {wait_s:.0f} s; see {log_path}")
