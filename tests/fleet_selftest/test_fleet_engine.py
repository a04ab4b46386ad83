"""Starting dockerd when none runs, on a second engine isolated from the machine's (which tests share)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from comfyfleet.devkit.fleet.engine import ensure_engine, run

pytestmark = pytest.mark.fleet


@pytest.mark.skipif(os.geteuid() != 0, reason="starting dockerd needs root")
def test_ensure_engine_starts_dockerd_detached_and_then_finds_it_running(tmp_path: Path) -> None:
    # Short paths: a unix socket path must stay under 108 bytes.
    base = Path(f"/tmp/cf-engine-{os.getpid()}")
    base.mkdir()
    sock, record, log = base / "docker.sock", base / "dockerd.json", base / "dockerd.log"
    args = (
        "-H", f"unix://{sock}", "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
        "--pidfile", str(base / "docker.pid"), "--bridge", "none", "--iptables=false",
    )  # fmt: skip
    # Its own network namespace: dockerd with --bridge none deletes any "docker0" it sees,
    # which must never be the shared engine's bridge.
    wrapper = ("unshare", "--net", "--")
    had_docker0 = Path("/sys/class/net/docker0").exists()
    pid = 0
    try:
        assert (
            ensure_engine(socket=sock, dockerd_args=args, record=record, log_path=log, wrapper=wrapper)
            == "started"
        )
        pid = json.loads(record.read_text())["pid"]
        # Its own session: it outlives the process group of whoever started it.
        assert os.getsid(pid) == pid
        env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
        assert run(["docker", "info", "--format", "{{.DockerRootDir}}"], env=env).stdout.strip() == str(
            base / "data"
        )
        assert (
            ensure_engine(socket=sock, dockerd_args=args, record=record, log_path=log, wrapper=wrapper)
            == "running"
        )
        assert Path("/sys/class/net/docker0").exists() == had_docker0
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            # It is this process's child: reap it (PID 1 here does not reap orphans).
            while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
                time.sleep(0.1)
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            target = line.split()[4]
            if target.startswith(f"{base}/"):
                run(["umount", "-l", target], check=False)
        run(["rm", "-rf", "--one-file-system", str(base)], check=False)
