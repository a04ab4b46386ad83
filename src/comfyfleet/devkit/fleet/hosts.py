"""Test hosts: containers with their own filesystem and sshd on a 127.0.0.1 port, driving the machine's engine.

Each host runs with ``--network host`` (so it reaches the local upstreams on loopback),
the engine's socket mounted, and its data directory bind-mounted at the identical path,
so a bind mount the host asks the engine for resolves to the same files. A host with a
block volume gets a real loop device plus CAP_SYS_ADMIN, and its directory is mounted
``rshared``: what the deploy mounts inside the host (mkfs, mount by UUID) propagates to
the machine, where the engine's runtime containers see it.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.devkit.fleet.engine import docker, run

DOCKER_SOCKET = "/var/run/docker.sock"


def free_port(taken: set[int]) -> int:
    """A TCP port on 127.0.0.1 nobody listens on now, not in ``taken`` (which it joins)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass
class LoopVolume:
    """A sparse file on the machine attached to a real loop device."""

    image: Path
    device: str

    @classmethod
    def create(cls, image: Path, size: str = "2G") -> LoopVolume:
        run(["truncate", "-s", size, str(image)])
        device = run(["losetup", "--find", "--show", str(image)]).stdout.strip()
        return cls(image, device)


@dataclass
class Host:
    """One test host as the tests and the inventory see it."""

    name: str
    provider: str
    ssh_user: str
    ssh_port: int
    ssh_key: Path
    known_hosts: Path
    host_dir: Path
    data_root: str
    comfyui_port: int
    api_port: int
    container_prefix: str
    container: str | None = None
    volume: LoopVolume | None = None
    block_mount: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reachable(self) -> bool:
        return self.container is not None

    @property
    def block_device(self) -> str | None:
        return self.volume.device if self.volume else None

    def data(self) -> dict[str, Any]:
        """pyinfra host data for this host (keys of comfyfleet.inventory plus pyinfra's ssh_*)."""
        data: dict[str, Any] = {
            "ssh_hostname": "127.0.0.1",
            "ssh_port": self.ssh_port,
            "ssh_user": self.ssh_user,
            "ssh_key": str(self.ssh_key),
            "ssh_known_hosts_file": str(self.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            "provider": self.provider,
            "data_root": self.data_root,
            # "none", not None: None would fall back to the provider default ("auto" on datacrunch).
            "block_device": self.block_device or "none",
            "comfyui_listen": "127.0.0.1",
            "comfyui_port": self.comfyui_port,
            "api_port": self.api_port,
            "container_prefix": self.container_prefix,
            "gpu": False,
        }
        if self.block_mount:
            data["block_mount"] = self.block_mount
        data.update(self.extra)
        return data

    def exec(
        self, command: str, user: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside the host with ``docker exec`` (for assertions, not deploys)."""
        if self.container is None:
            raise RuntimeError(f"host {self.name} has no container (it is the unreachable one)")
        return run(
            ["docker", "exec", "-u", user or self.ssh_user, self.container, "sh", "-c", command], check=check
        )

    def ssh(self, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command over real SSH as the host's ssh user, as pyinfra would reach it."""
        return run(
            [
                "ssh",
                "-i", str(self.ssh_key),
                "-p", str(self.ssh_port),
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10",
                f"{self.ssh_user}@127.0.0.1",
                command,
            ],
            check=check,
            timeout=timeout,
        )  # fmt: skip


def start_container(
    host: Host,
    image: str,
    authorized_key: str,
    labels: dict[str, str],
    wait_s: float = 30.0,
) -> None:
    """Start the host's container and wait until its sshd answers; record its host key."""
    assert host.container is not None
    host.host_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "run", "-d", "--init",
        "--name", host.container,
        "--hostname", host.name,
        "--add-host", f"{host.name}:127.0.1.1",  # as Debian's installer does; sudo resolves it
        "--network", "host",
        "--restart", "no",
        "-e", f"FLEET_SSH_PORT={host.ssh_port}",
        "-e", f"FLEET_SSH_USER={host.ssh_user}",
        "-e", f"FLEET_AUTHORIZED_KEY={authorized_key}",
        "-v", f"{DOCKER_SOCKET}:{DOCKER_SOCKET}",
        "--mount", f"type=bind,source={host.host_dir},target={host.host_dir},bind-propagation=rshared",
    ]  # fmt: skip
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    if host.volume is not None:
        # mkfs and mount inside the host: the device node and CAP_SYS_ADMIN, nothing more
        # (--privileged fails on this machine and is not needed).
        args += ["--cap-add", "SYS_ADMIN", "--device", host.volume.device]
    docker(*args, image, "/usr/local/sbin/fleet-host-init")
    deadline = time.monotonic() + wait_s
    while True:
        if ssh_banner(host.ssh_port):
            break
        state = docker("inspect", "--format", "{{.State.Status}}", host.container, check=False).strip()
        if state not in ("running", "created") or time.monotonic() > deadline:
            logs = run(["docker", "logs", "--tail", "30", host.container], check=False)
            raise RuntimeError(
                f"host {host.name}: sshd did not answer on 127.0.0.1:{host.ssh_port} (container {state});"
                f" its log:\n{logs.stdout}{logs.stderr}"
            )
        time.sleep(0.1)
    key_fields = docker("exec", host.container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").split()
    host.known_hosts.write_text(f"[127.0.0.1]:{host.ssh_port} {key_fields[0]} {key_fields[1]}\n")
    host.known_hosts.chmod(0o600)


def ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(2)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def describe(host: Host) -> str:
    """One line saying how to reach a host by hand."""
    if not host.reachable:
        return f"{host.name}: unreachable on purpose (127.0.0.1:{host.ssh_port}, nothing listens)"
    vol = f", volume {host.volume.device} -> {host.block_mount}" if host.volume else ""
    cmd = shlex.join(
        ["ssh", "-i", str(host.ssh_key), "-p", str(host.ssh_port), "-o", f"UserKnownHostsFile={host.known_hosts}",
         f"{host.ssh_user}@127.0.0.1"]
    )  # fmt: skip
    return f"{host.name} ({host.provider}, {host.ssh_user}): {cmd}  data_root={host.data_root}{vol}"
