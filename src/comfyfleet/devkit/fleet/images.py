"""Images of the test fleet: a debootstrapped Debian host image and the ComfyUI runtime image.

No registry image can be pulled here, so the base is made with ``debootstrap`` and
``docker import``. Each image is tagged with a hash of its recipe and reused while the
tag exists; the root filesystem tarball is cached under :data:`CACHE` so a machine
whose Docker storage was reset re-imports in seconds instead of bootstrapping again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from comfyfleet.devkit.fleet.engine import docker, run
from comfyfleet.devkit.fleet.errors import FleetUnavailable

CACHE = Path(os.environ.get("COMFYFLEET_FLEET_CACHE", "/var/cache/comfyfleet-fleet"))
SUITE = "bookworm"
HOST_REPO = "comfyfleet-fleet-host"
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
RUNTIME_REPO = "comfyfleet-fleet-runtime"
# Real ComfyUI needs torch; these CPU-capable wheels lie on this machine's disk for Python 3.11.
TORCH_PINS = os.environ.get("COMFYFLEET_TEST_TORCH", "torch==2.14.1 torchvision==0.29.1").split()

HOST_PACKAGES = [
    "openssh-server",
    "python3",
    "git",
    "curl",
    "sudo",
    "ca-certificates",
    "e2fsprogs",
    "util-linux",
    "mount",
    "procps",
    "iproute2",
    # Debian's docker.io, as Lambda Stack ships it: the client drives the machine's engine
    # through the mounted socket; its daemon is never started inside a host.
    "docker.io",
    "gnupg",
]
RUNTIME_PACKAGES = [
    "python3-aiohttp",
    "python3-venv",
    "python3-pip",
    "python3-yaml",
    "git",
    "ca-certificates",
]

# Runs inside the fresh root filesystem (chroot) once per image build.
HOST_SETUP = r"""
set -eu
useradd --create-home --shell /bin/bash --uid 1000 --user-group ubuntu
# '*' (not '!'): no password, but not a locked account, so sshd accepts keys with UsePAM no.
usermod -p '*' ubuntu
usermod -p '*' root
printf 'ubuntu ALL=(ALL) NOPASSWD:ALL\n' > /etc/sudoers.d/90-ubuntu
chmod 0440 /etc/sudoers.d/90-ubuntu
rm -f /etc/ssh/ssh_host_*
mkdir -p /run/sshd
chmod 0755 /usr/local/sbin/fleet-host-init
update-ca-certificates >/dev/null 2>&1
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
"""

SSHD_CONFIG = """\
# comfyfleet test host: keys only, one host key made per container.
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
"""

# PID 1's child (docker --init is PID 1): per-container host key, the login user's key,
# the docker group given the socket's gid so the ssh user can use docker once in that group.
HOST_INIT = r"""#!/bin/sh
set -eu
port="${FLEET_SSH_PORT:?FLEET_SSH_PORT is required}"
user="${FLEET_SSH_USER:-root}"
home=$(getent passwd "$user" | cut -d: -f6)
group=$(id -gn "$user")
install -d -m 0700 -o "$user" -g "$group" "$home/.ssh"
printf '%s\n' "${FLEET_AUTHORIZED_KEY:?FLEET_AUTHORIZED_KEY is required}" > "$home/.ssh/authorized_keys"
chown "$user:$group" "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"
[ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
if [ -S /var/run/docker.sock ]; then
  gid=$(stat -c %g /var/run/docker.sock)
  if [ "$gid" != 0 ] && [ "$(getent group docker | cut -d: -f3)" != "$gid" ]; then
    other=$(getent group "$gid" | cut -d: -f1 || true)
    [ -z "$other" ] || groupmod -g "$((gid + 30000))" "$other"
    groupmod -g "$gid" docker
  fi
fi
# Boot-time mounts from /etc/fstab (a block volume after a "reboot"); only hosts given
# CAP_SYS_ADMIN can mount, the others skip it like a host with nothing to mount.
mount -a 2>/dev/null || true
mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e -p "$port" -o ListenAddress=127.0.0.1
"""


def recipe_hash(recipe: dict[str, object]) -> str:
    """Short stable hash of a recipe (what goes into an image decides its tag)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (env COMFYFLEET_FLEET_MIRROR overrides)."""
    env = os.environ.get("COMFYFLEET_FLEET_MIRROR")
    if env:
        return env
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.suffix in (".list", ".sources") or path.name == "sources.list":
            with contextlib.suppress(OSError):
                texts.append(path.read_text())
    for text in texts:
        for m in re.finditer(r"(?:^deb\s+(?:\[[^]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.M):
            uri = m.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def build_lock(name: str) -> Iterator[None]:
    """Serialise builds of one image between concurrent test sessions."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def image_exists(ref: str) -> bool:
    """True when the engine has an image with this reference."""
    return run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], check=False).returncode == 0


def local_cas() -> dict[str, bytes]:
    """This machine's own CA certificates (its HTTPS egress to the registries may need them)."""
    return {p.name: p.read_bytes() for p in sorted(LOCAL_CA_DIR.glob("*.crt"))}


def host_recipe() -> dict[str, object]:
    """Everything that decides the host image's content."""
    salt = os.environ.get("COMFYFLEET_FLEET_RECIPE_SALT")  # scripts/bench_testfleet.py --cold: a fresh tag
    return {
        **({"salt": salt} if salt else {}),
        "local_cas": {name: hashlib.sha256(data).hexdigest() for name, data in local_cas().items()},
        "suite": SUITE,
        "variant": "minbase",
        "packages": HOST_PACKAGES,
        "setup": HOST_SETUP,
        "sshd": SSHD_CONFIG,
        "init": HOST_INIT,
    }


def host_image(log: list[str] | None = None) -> str:
    """The base host image, built with debootstrap once per recipe; returns its reference."""
    tag = f"{HOST_REPO}:{recipe_hash(host_recipe())}"
    if image_exists(tag):
        return tag
    with build_lock("host"):
        if image_exists(tag):
            return tag
        tarball = CACHE / f"{tag.replace(':', '-')}.tar"
        if not tarball.exists():
            _debootstrap_host(tarball, log)
        t0 = time.monotonic()
        docker("import", "--change", f"LABEL comfyfleet.recipe={tag}", str(tarball), tag)
        if log is not None:
            log.append(f"docker import {tag}: {time.monotonic() - t0:.1f}s")
        prune_images(HOST_REPO, keep=tag)
        for stale in CACHE.glob(f"{HOST_REPO}-*.tar"):
            if stale != tarball:
                stale.unlink(missing_ok=True)
    return tag


def prune_images(repo: str, keep: str, base: str | None = None) -> None:
    """Remove older images of ``repo`` (those in use by a container stay: rmi refuses them)."""
    if os.environ.get("COMFYFLEET_FLEET_RECIPE_SALT"):
        return  # a throwaway benchmark build: the real images stay
    fmt = '{{index .Config.Labels "comfyfleet.base"}}'
    for ref in docker("images", repo, "--format", "{{.Repository}}:{{.Tag}}", check=False).split():
        if ref == keep:
            continue
        if base is not None:
            label = run(["docker", "image", "inspect", "--format", fmt, ref], check=False)
            if label.returncode != 0 or label.stdout.strip() in (base, "<no value>", ""):
                continue  # the other flavour (stand-in or real ComfyUI) on the current base, or unknown
        docker("rmi", ref, check=False)


def _debootstrap_host(tarball: Path, log: list[str] | None) -> None:
    if shutil.which("debootstrap") is None:
        raise FleetUnavailable("debootstrap is missing: run `bash scripts/setup-dev.sh`")
    if os.geteuid() != 0:
        raise FleetUnavailable("building the fleet's host image needs root (debootstrap, chroot)")
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="build-") as tmp:
        root = Path(tmp) / "root"
        t0 = time.monotonic()
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(HOST_PACKAGES)}",
                f"--cache-dir={debs}",
                SUITE,
                str(root),
                debian_mirror(),
            ],
            timeout=1200,
        )
        t1 = time.monotonic()
        (root / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/ssh/sshd_config.d/comfyfleet.conf").write_text(SSHD_CONFIG)
        (root / "usr/local/sbin/fleet-host-init").write_text(HOST_INIT)
        for name, data in local_cas().items():
            (root / "usr/local/share/ca-certificates" / name).write_bytes(data)
        run(["chroot", str(root), "/bin/sh", "-c", HOST_SETUP])
        partial = tarball.with_suffix(".partial")
        with partial.open("wb") as out:
            subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=out, check=True)
        partial.rename(tarball)
        if log is not None:
            log.append(f"debootstrap: {t1 - t0:.1f}s, setup+tar: {time.monotonic() - t1:.1f}s")


def comfyui_checkout() -> Path | None:
    """The real ComfyUI checkout named by COMFYFLEET_TEST_COMFYUI, or None for the stand-in."""
    value = os.environ.get("COMFYFLEET_TEST_COMFYUI", "").strip()
    if not value:
        return None
    path = Path(value).expanduser().resolve()
    if not path.exists():
        raise FleetUnavailable(f"COMFYFLEET_TEST_COMFYUI={value}: no such directory")
    return path


def _checkout_requirements(checkout: Path) -> str:
    """requirements.txt of the checkout's HEAD (work tree or bare repository)."""
    if (checkout / "requirements.txt").is_file():
        text = (checkout / "requirements.txt").read_text()
    else:
        text = run(["git", "-C", str(checkout), "show", "HEAD:requirements.txt"]).stdout
    # torch and torchvision come pinned from TORCH_PINS; no torchaudio matches those pins on
    # PyPI, and ComfyUI needs it only for its optional audio nodes (they log an import error).
    keep = [
        line for line in text.splitlines() if not re.match(r"^\s*torch(vision|audio)?\s*([<>=!~;\[]|$)", line)
    ]
    return "\n".join(keep) + "\n"


def _pip_mounts() -> tuple[list[str], dict[str, str]]:
    """docker run options that give a build container this machine's pip sources (wheels on disk)."""
    mounts: list[str] = []
    env: dict[str, str] = {}
    for conf in (Path("/etc/pip.conf"), Path("/etc/xdg/pip")):
        if conf.exists():
            mounts += ["-v", f"{conf}:{conf}:ro"]
    text = ""
    for conf in (Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf")):
        with contextlib.suppress(OSError):
            text += conf.read_text()
    for key, value in os.environ.items():
        if key.startswith("PIP_"):
            env[key] = value
            text += f"\n{value}"
    for m in re.finditer(r"(?:file://)?(/[A-Za-z0-9._/-]+)", text):
        path = Path(m.group(1))
        if path.is_dir() and not str(path).startswith(("/etc", "/proc", "/sys", "/dev")):
            mounts += ["-v", f"{path}:{path}:ro"]
    for key, value in env.items():
        mounts += ["-e", f"{key}={value}"]
    return mounts, env


def runtime_recipe() -> dict[str, object]:
    """Everything that decides the runtime image's content."""
    recipe: dict[str, object] = {
        "base": f"{HOST_REPO}:{recipe_hash(host_recipe())}",
        "packages": RUNTIME_PACKAGES,
    }
    checkout = comfyui_checkout()
    if checkout is not None:
        recipe["torch"] = TORCH_PINS
        recipe["requirements"] = _checkout_requirements(checkout)
    return recipe


def runtime_image(log: list[str] | None = None) -> str:
    """The ComfyUI runtime image (stand-in, or real ComfyUI with CPU torch); returns its reference."""
    recipe = runtime_recipe()
    tag = f"{RUNTIME_REPO}:{recipe_hash(recipe)}"
    if image_exists(tag):
        return tag
    base = host_image(log)
    with build_lock("runtime"):
        if image_exists(tag):
            return tag
        t0 = time.monotonic()
        pkgs = " ".join(RUNTIME_PACKAGES)
        script = (
            "set -eu; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; "
            f"apt-get install -y -qq --no-install-recommends {pkgs} >/dev/null; "
        )
        extra: list[str] = []
        req = CACHE / f"requirements-{recipe_hash(recipe)}.txt"
        if "requirements" in recipe:
            req.write_text(str(recipe["requirements"]) + "\nrequests\n")
            extra, _ = _pip_mounts()
            extra += ["-v", f"{req}:/tmp/comfyui-requirements.txt:ro"]
            # System site-packages (PEP 668 override): a --system-site-packages venv made on
            # the data root by the deploy then sees torch without reinstalling it.
            script += (
                "pip install -q --no-cache-dir --break-system-packages "
                f"{' '.join(TORCH_PINS)} -r /tmp/comfyui-requirements.txt; "
            )
        script += "apt-get clean; rm -rf /var/lib/apt/lists/*"
        name = f"cf-build-runtime-{os.getpid()}"
        docker("rm", "-f", name, check=False)
        try:
            # Host network: apt and pip reach the package registries exactly as this machine does.
            docker(
                "run",
                "--name",
                name,
                "--network",
                "host",
                *extra,
                base,
                "/bin/sh",
                "-c",
                script,
                timeout=3600,
            )
            docker(
                "commit",
                "--change", f"LABEL comfyfleet.recipe={tag}",
                "--change", f"LABEL comfyfleet.base={base}",
                "--change", 'CMD ["python3"]',
                name, tag,
            )  # fmt: skip
        finally:
            docker("rm", "-f", name, check=False)
            req.unlink(missing_ok=True)
        if log is not None:
            log.append(f"runtime image {tag}: {time.monotonic() - t0:.1f}s")
        prune_images(RUNTIME_REPO, keep=tag, base=base)
    return tag
