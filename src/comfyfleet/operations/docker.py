"""Docker Engine, the NVIDIA container toolkit, and containers recreated only when their spec changed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from typing import Any

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from comfyfleet.context import report
from comfyfleet.facts import prefetch
from comfyfleet.facts.comfyui import HttpStatus
from comfyfleet.facts.docker import SPEC_LABEL, ContainerHost, DockerContainer
from comfyfleet.shell import fail, script

DOCKER_SOURCES = "/etc/apt/sources.list.d/docker.sources"
DOCKER_KEYRING = "/etc/apt/keyrings/docker.asc"
NVIDIA_SOURCES = "/etc/apt/sources.list.d/nvidia-container-toolkit.sources"
NVIDIA_KEYRING = "/etc/apt/keyrings/nvidia-container-toolkit.asc"
DOCKER_PACKAGES = (
    "docker-ce",
    "docker-ce-cli",
    "containerd.io",
    "docker-buildx-plugin",
    "docker-compose-plugin",
)
NVIDIA_PACKAGES = (
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
)

# deb822 .sources written from positional parameters; the keyring is fetched over https.
_DOCKER_REPO_SCRIPT = r"""
set -e
install -m 0755 -d /etc/apt/keyrings
curl -fsSL "$1/$2/gpg" -o "$5.tmp"
mv "$5.tmp" "$5"
chmod a+r "$5"
printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: stable\nArchitectures: %s\nSigned-By: %s\n' \
  "$1/$2" "$3" "$4" "$5" > "$6"
"""

_NVIDIA_REPO_SCRIPT = r"""
set -e
install -m 0755 -d /etc/apt/keyrings
curl -fsSL "$1/gpgkey" -o "$3.tmp"
mv "$3.tmp" "$3"
chmod a+r "$3"
printf 'Types: deb\nURIs: %s\nSuites: /\nSigned-By: %s\n' "$1/$2" "$3" > "$4"
"""

# nvidia-ctk owns daemon.json; docker is restarted only when the file really changed.
_NVIDIA_CONFIGURE_SCRIPT = r"""
set -e
before=$(sha256sum /etc/docker/daemon.json 2>/dev/null || true)
nvidia-ctk runtime configure --runtime=docker
after=$(sha256sum /etc/docker/daemon.json 2>/dev/null || true)
if [ "$before" != "$after" ]; then
  echo "daemon.json changed: restarting docker"
  systemctl restart docker 2>/dev/null || service docker restart
fi
"""


def _apt_install(*packages: str) -> StringCommand:
    return StringCommand(
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        *(QuoteString(p) for p in packages),
    )


@operation()
def engine(user: str, apt_url: str = "https://download.docker.com/linux") -> Generator[Any, None, None]:
    """Install Docker Engine from Docker's apt repository unless docker is already there.

    + user: login user added to the ``docker`` group (root is skipped)
    + apt_url: Docker's repository base (``https://download.docker.com/linux`` or a mirror)

    A host with Debian/Ubuntu's ``docker.io`` (Lambda Stack) keeps it: Docker's repository
    is never added on top, because docker-ce and docker.io conflict.

    **Example:**

    .. code:: python

        docker.engine(user="ubuntu")  # sudo comes from host data (`_sudo`)
    """
    facts = prefetch.fact(ContainerHost, user=user)
    have_docker = bool(facts.get("docker_cli") or facts.get("docker_io") or facts.get("docker_ce"))
    if have_docker:
        kind = (
            "docker.io" if facts.get("docker_io") else "docker-ce" if facts.get("docker_ce") else "docker CLI"
        )
        host.noop(f"docker already installed ({kind}): Docker's apt repository not added")
    else:
        if not facts.get("os_id") or not facts.get("os_codename"):
            yield fail("cannot tell the distribution (no /etc/os-release): install docker by hand")
            return
        if not facts.get("docker_sources"):
            yield script(
                _DOCKER_REPO_SCRIPT,
                apt_url,
                facts["os_id"],
                facts["os_codename"],
                facts.get("arch") or "amd64",
                DOCKER_KEYRING,
                DOCKER_SOURCES,
            )
        yield "DEBIAN_FRONTEND=noninteractive apt-get update -q"
        yield _apt_install(*DOCKER_PACKAGES)
        yield "systemctl enable --now docker 2>/dev/null || service docker start"

    if user == "root" or facts.get("user_in_group") == "yes":
        host.noop(f"{user} can use docker")
    elif facts.get("docker_group") or not have_docker:
        yield StringCommand("usermod", "-aG", "docker", QuoteString(user))
    else:
        host.noop(f"no docker group on this host: {user} not added (commands use sudo)")


@operation()
def nvidia_toolkit(
    version: str,
    apt_url: str = "https://nvidia.github.io/libnvidia-container/stable/deb",
    user: str = "root",
) -> Generator[Any, None, None]:
    """Install the NVIDIA container toolkit at a pinned version and configure docker's runtime.

    + version: Debian version of the toolkit packages, e.g. ``1.17.8-1``
    + apt_url: NVIDIA's libnvidia-container repository (or a mirror)
    + user: the login user (only so the engine's fact is shared with ``engine``)

    Skipped, with a message, on hosts without an NVIDIA driver (no ``nvidia-smi``). A
    toolkit that came with the machine (Lambda Stack) is kept when our repository is not
    configured. ``nvidia-ctk runtime configure --runtime=docker`` runs only when
    ``/etc/docker/daemon.json`` lacks the nvidia runtime, and docker restarts only
    when that changed the file.

    **Example:**

    .. code:: python

        docker.nvidia_toolkit(version="1.17.8-1")
    """
    facts = prefetch.fact(ContainerHost, user=user)
    if not facts.get("nvidia_smi"):
        host.noop("no NVIDIA driver (nvidia-smi not found): nvidia-container-toolkit skipped")
        return

    installed = facts.get("nvidia_toolkit", "")
    vendor_toolkit = bool(installed or facts.get("nvidia_ctk")) and not facts.get("nvidia_sources")
    if vendor_toolkit:
        host.noop(f"nvidia-container-toolkit {installed or '(nvidia-ctk)'} came with the machine: kept")
    elif installed == version:
        host.noop(f"nvidia-container-toolkit {version} installed")
    else:
        if not facts.get("nvidia_sources"):
            yield script(
                _NVIDIA_REPO_SCRIPT, apt_url, facts.get("arch") or "amd64", NVIDIA_KEYRING, NVIDIA_SOURCES
            )
        yield "DEBIAN_FRONTEND=noninteractive apt-get update -q"
        yield _apt_install(*(f"{p}={version}" for p in NVIDIA_PACKAGES))

    if facts.get("nvidia_runtime") == "yes":
        host.noop("docker already has the nvidia runtime")
    else:
        yield script(_NVIDIA_CONFIGURE_SCRIPT)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything that defines a container; its hash decides whether to recreate it.

    Mounts keep host and container paths identical (``-v P:P``), so paths in logs and
    in commands other tiers run inside the container mean the same thing on the host.
    ``env`` is for non-secret values (it is visible in ``docker inspect``); secrets go
    in ``env_file``, a root-only file on the host whose content hash is ``env_file_sha``.
    """

    name: str
    image: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[str, ...] = ()
    network: str = "host"
    init: bool = True
    gpus: bool = False
    restart: str = "unless-stopped"
    workdir: str | None = None
    env_file: str | None = None
    env_file_sha: str | None = None
    labels: tuple[tuple[str, str], ...] = field(default=())

    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def run_command(self) -> StringCommand:
        """``docker run -d`` for this spec, every value quoted."""
        parts: list[Any] = ["docker", "run", "-d", "--name", QuoteString(self.name)]
        parts += ["--network", QuoteString(self.network), "--restart", QuoteString(self.restart)]
        parts += ["--label", QuoteString(f"{SPEC_LABEL}={self.spec_hash()}")]
        if self.init:
            # An init as PID 1 forwards SIGTERM: python as PID 1 ignores it and every
            # graceful restart would wait for the kill timeout.
            parts.append("--init")
        for key, value in self.labels:
            parts += ["--label", QuoteString(f"{key}={value}")]
        if self.gpus:
            parts += ["--gpus", "all"]
        for mount in self.mounts:
            parts += ["-v", QuoteString(f"{mount}:{mount}")]
        for key, value in self.env:
            parts += ["-e", QuoteString(f"{key}={value}")]
        if self.env_file:
            parts += ["--env-file", QuoteString(self.env_file)]
        if self.workdir:
            parts += ["-w", QuoteString(self.workdir)]
        parts += [QuoteString(self.image), *(QuoteString(c) for c in self.command)]
        return StringCommand(*parts)


@operation()
def container(spec: ContainerSpec) -> Generator[Any, None, None]:
    """Run a container; recreate it only when its spec hash differs from the label it carries.

    + spec: a :class:`ContainerSpec`

    pyinfra 3.10's ``docker.container`` leaves a container whose image, env or ports
    changed as it is (pyinfra#1561); here the spec hash is stored as a label and
    compared on every run. A stopped container with the right spec is started.

    **Example:**

    .. code:: python

        docker.container(ContainerSpec(name="comfyui", image="img", command=("python3", "main.py")))
    """
    current = prefetch.fact(DockerContainer, container=spec.name)
    wanted = spec.spec_hash()
    if current is None:
        yield spec.run_command()
    elif current["spec_hash"] != wanted:
        yield StringCommand("docker", "rm", "-f", QuoteString(spec.name))
        yield spec.run_command()
    elif not current["running"]:
        yield StringCommand("docker", "start", QuoteString(spec.name))
    else:
        host.noop(f"container {spec.name} up to date (spec {wanted})")


@operation(is_idempotent=False)
def restart(container: str, timeout: int = 30) -> Generator[Any, None, None]:
    """Restart a container gracefully (SIGTERM, then SIGKILL after ``timeout`` seconds).

    + container: container name; a missing container is reported, not an error
    + timeout: seconds docker waits before killing it
    """
    current = prefetch.fact(DockerContainer, container=container)
    if current is None:
        report(host).note(f"container {container} does not exist: not restarted")
        host.noop(f"container {container} does not exist: nothing to restart")
        return
    yield StringCommand("docker", "restart", "-t", str(int(timeout)), QuoteString(container))


_WAIT_SCRIPT = r"""
i=0
state=unknown
while [ "$i" -lt "$3" ]; do
  code=$(curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" || true)
  [ "$code" = 200 ] && { echo "$1 answers after ${i}s"; exit 0; }
  state=$(docker inspect -f '{{.State.Status}}' "$2" 2>/dev/null) || state=missing
  # A crashing container cycles through "restarting": no point waiting for it.
  case "$state" in exited|dead|missing|restarting) [ "$i" -ge 3 ] && break;; esac
  sleep 1; i=$((i + 1))
done
echo "$1 did not answer within ${i}s (container $2: $state). Last log lines:" >&2
docker logs --tail 40 "$2" 2>&1 | sed 's/^/  | /' >&2
exit 1
"""


@operation()
def wait_http(url: str, container: str, timeout: int = 300) -> Generator[Any, None, None]:
    """Wait until ``GET url`` answers 200 on the host; fail with the container's last log lines.

    + url: URL as seen from the host itself
    + container: the container serving it (its state ends the wait early, its logs explain a failure)
    + timeout: seconds to wait
    """
    if prefetch.fact(HttpStatus, url=url) == 200:
        host.noop(f"{url} answers")
        return
    yield script(_WAIT_SCRIPT, url, container, int(timeout))
