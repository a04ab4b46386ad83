"""Facts about the container engine and the NVIDIA stack of a host, and about one container."""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import FactBase, StringCommand

from comfyfleet.shell import script

SPEC_LABEL = "comfyfleet.spec-hash"

# One dpkg-query for all packages: each extra process is a few ms on every no-op run.
_ENGINE_SCRIPT = r"""
kv() { printf '%s=%s\n' "$1" "$2"; }
pkgs=$(dpkg-query -W -f='${Package} ${Status} ${Version}\n' docker.io docker-ce nvidia-container-toolkit 2>/dev/null)
pkg() { printf '%s\n' "$pkgs" | awk -v p="$1" -v want="$2" '$1 == p && $4 == "installed" {print (want == "version" ? $5 : "yes")}'; }
kv docker_cli "$(command -v docker || true)"
kv docker_io "$(pkg docker.io)"
kv docker_ce "$(pkg docker-ce)"
kv docker_sources "$([ -e /etc/apt/sources.list.d/docker.sources ] && echo yes)"
kv docker_group "$(getent group docker >/dev/null 2>&1 && echo yes)"
kv user_in_group "$(id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx docker && echo yes)"
smi=$(command -v nvidia-smi || true)
kv nvidia_smi "$smi"
[ -n "$smi" ] && kv nvidia_driver "$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)"
kv nvidia_toolkit "$(pkg nvidia-container-toolkit version)"
kv nvidia_ctk "$(command -v nvidia-ctk || true)"
kv nvidia_sources "$([ -e /etc/apt/sources.list.d/nvidia-container-toolkit.sources ] && echo yes)"
kv nvidia_runtime "$(grep -qs '"nvidia"' /etc/docker/daemon.json && echo yes)"
. /etc/os-release 2>/dev/null
kv os_id "${ID:-}"
kv os_codename "${VERSION_CODENAME:-}"
kv arch "$(dpkg --print-architecture 2>/dev/null || uname -m)"
"""


class ContainerHost(FactBase[dict[str, str]]):
    """Docker engine, docker group and NVIDIA driver/toolkit state, in one round trip.

    Keys (empty string when absent): docker_cli, docker_io, docker_ce, docker_sources,
    docker_group, user_in_group, nvidia_smi, nvidia_driver, nvidia_toolkit, nvidia_ctk,
    nvidia_sources, nvidia_runtime, os_id, os_codename, arch.
    """

    @staticmethod
    def default() -> dict[str, str]:
        return {}

    def command(self, user: str) -> StringCommand:
        return script(_ENGINE_SCRIPT, user)

    def process(self, output: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in output:
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip()] = value.strip()
        return out


# Asking the engine's socket with curl costs a few ms; the docker CLI costs ~100 ms per call,
# which is most of a no-op run. The CLI is the fallback (another DOCKER_HOST, no curl).
_INSPECT_SCRIPT = r"""
sock=/var/run/docker.sock
if [ -z "${DOCKER_HOST:-}" ] && [ -S "$sock" ] && command -v curl >/dev/null 2>&1; then
  resp=$(curl -s --unix-socket "$sock" -w '\n%{http_code}' "http://localhost/containers/$1/json")
  code=$(printf '%s\n' "$resp" | tail -n 1)
  case "$code" in
    200) printf '['; printf '%s\n' "$resp" | sed '$d'; printf ']\n'; exit 0;;
    404) echo '[]'; exit 0;;
  esac
fi
out=$(docker inspect --type container "$1" 2>&1) && { printf '%s\n' "$out"; exit 0; }
case "$out" in *"No such"*|*"no such"*) echo '[]'; exit 0;; esac
printf '%s\n' "$out" >&2
exit 1
"""


class DockerContainer(FactBase[dict[str, Any] | None]):
    """One container's state: ``{running, status, image, spec_hash, started_at}`` or None when absent."""

    @staticmethod
    def default() -> None:
        return None

    def command(self, container: str) -> StringCommand:
        return script(_INSPECT_SCRIPT, container)

    def process(self, output: list[str]) -> dict[str, Any] | None:
        data = json.loads("\n".join(output) or "[]")
        if not data:
            return None
        item = data[0]
        labels = (item.get("Config") or {}).get("Labels") or {}
        state = item.get("State") or {}
        return {
            "running": bool(state.get("Running")),
            "status": state.get("Status", ""),
            "image": (item.get("Config") or {}).get("Image", ""),
            "spec_hash": labels.get(SPEC_LABEL, ""),
            "started_at": state.get("StartedAt", ""),
            "restart_count": item.get("RestartCount", 0),
        }
