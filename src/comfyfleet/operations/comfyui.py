"""ComfyUI on a host: folders, the core checkout at a pinned ref, its Python env, the runtime container, health."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.facts.files import Link
from pyinfra.operations import files

from comfyfleet.facts import prefetch
from comfyfleet.facts.comfyui import GitCheckout, MissingDirectories, MissingInputFiles, PythonEnv
from comfyfleet.facts.docker import ContainerHost
from comfyfleet.inventory import HostConfig
from comfyfleet.operations import docker
from comfyfleet.pyinfra_compat import inner_commands
from comfyfleet.shell import script

PREVIOUS_REF_FILE = "comfyui-previous-ref"

_CHECKOUT_SCRIPT = r"""
set -e
if [ ! -d "$1/.git" ]; then git clone -q "$2" "$1"; fi
cd "$1"
[ "$(git config --get remote.origin.url)" = "$2" ] || git remote set-url origin "$2"
if [ "$4" = fetch ]; then git fetch -q --tags --force origin; fi
if git rev-parse -q --verify "refs/remotes/origin/$3" >/dev/null; then target="origin/$3"; else target="$3"; fi
commit=$(git rev-parse -q --verify "$target^{commit}") || { echo "ComfyUI ref '$3' not found in $2" >&2; exit 1; }
head=$(git rev-parse -q --verify 'HEAD^{commit}' || true)
if [ -n "$5" ] && [ -n "$head" ] && [ "$head" != "$commit" ]; then
  mkdir -p "$5"
  printf '%s\n' "$head" > "$5/comfyui-previous-ref"
  echo "recorded $head for rollback"
fi
git -c advice.detachedHead=false checkout -q --detach "$commit"
echo "ComfyUI at $3 ($commit)"
"""

_VENV_SCRIPT = r"""
set -e
docker run --rm --network host -v "$1:$1" "$3" python3 -m venv --system-site-packages "$1"
"""

# Runs pip inside the runtime image so the venv matches the interpreter ComfyUI runs with;
# the marker records which requirements (and image) the venv was built for.
_REQUIREMENTS_SCRIPT = r"""
set -e
want=$( (cat "$2/requirements.txt" 2>/dev/null; printf '%s' "$3") | sha256sum | cut -c1-64)
if [ -f "$2/requirements.txt" ]; then
  docker run --rm --network host -v "$1:$1" -v "$2:$2" "$3" \
    "$1/bin/python" -m pip install -q --disable-pip-version-check -r "$2/requirements.txt"
fi
printf '%s\n' "$want" > "$1/.comfyfleet-requirements"
"""

# Copies only what the target lacks: a file the user put there under the same name stays.
_SEED_INPUTS_SCRIPT = r"""
set -e
src=$1; dst=$2; shift 2
for f in "$@"; do
  [ -f "$src/$f" ] || continue
  [ -e "$dst/$f" ] || [ -L "$dst/$f" ] && continue
  mkdir -p "$(dirname "$dst/$f")"
  cp -p "$src/$f" "$dst/$f"
  printf 'seeded input/%s\n' "$f"
done
"""

_ROLLBACK_SCRIPT = r"""
prev=$(cat "$3/comfyui-previous-ref" 2>/dev/null)
[ -n "$prev" ] || { echo "update to $5 failed and no recorded ref to roll back to" >&2; exit 1; }
git -C "$1" -c advice.detachedHead=false checkout -q --detach "$prev" || exit 1
docker restart -t 30 "$2" >/dev/null
i=0
while [ "$i" -lt "$6" ]; do
  code=$(curl -s -o /dev/null -m 3 -w '%{http_code}' "$4/system_stats" || true)
  if [ "$code" = 200 ]; then
    echo "update to $5 failed its health check: rolled back to $prev, ComfyUI healthy" >&2
    exit 1
  fi
  sleep 1; i=$((i + 1))
done
echo "update to $5 failed its health check; rolled back to $prev but ComfyUI is still unhealthy" >&2
exit 1
"""


@operation()
def directories(paths: list[str]) -> Generator[Any, None, None]:
    """Create the folders that are missing (one fact round trip for all of them).

    + paths: absolute folders to create
    """
    missing = prefetch.fact(MissingDirectories, paths=tuple(paths))
    if missing:
        yield StringCommand("mkdir", "-p", *(QuoteString(p) for p in missing))
    else:
        host.noop(f"{len(paths)} folders present")


@operation()
def checkout(path: str, repo: str, ref: str, record_to: str | None = None) -> Generator[Any, None, None]:
    """Check out ComfyUI core at ``ref`` (detached), cloning ``repo`` the first time.

    + path: checkout folder
    + repo: git URL
    + ref: tag, commit or branch; branches are fetched every run, tags/commits only when missing
    + record_to: folder where the commit being left is written (``comfyui-previous-ref``) for rollback

    **Example:**

    .. code:: python

        comfyui.checkout(path="/opt/comfyfleet/ComfyUI", repo="https://github.com/comfyanonymous/ComfyUI.git",
                         ref="v0.3.75")
    """
    facts = prefetch.fact(GitCheckout, path=path, ref=ref)
    exists = facts.get("exists") == "yes"
    same_origin = facts.get("origin") == repo
    branch = facts.get("branch") == "yes"
    if exists and same_origin and not branch and facts.get("ref") and facts.get("ref") == facts.get("head"):
        host.noop(f"ComfyUI at {ref} ({facts['head'][:12]})")
        return
    fetch = exists and (branch or not same_origin or not facts.get("ref"))
    yield script(_CHECKOUT_SCRIPT, path, repo, ref, "fetch" if fetch else "", record_to or "")


@operation()
def python_env(venv: str, comfyui: str, image: str) -> Generator[Any, None, None]:
    """A persistent venv (``--system-site-packages``) with ComfyUI's requirements, built in the runtime image.

    + venv: venv folder on the data root (mounted at the same path in the container)
    + comfyui: ComfyUI checkout (its requirements.txt)
    + image: runtime image whose python3 (and torch) the venv sits on

    Node packs install their requirements into the same venv later, so they survive the
    container being recreated; torch stays the image's.
    """
    facts = prefetch.fact(PythonEnv, venv=venv, requirements=f"{comfyui}/requirements.txt", image=image)
    if facts.get("python") != "yes":
        yield script(_VENV_SCRIPT, venv, comfyui, image)
    if facts.get("python") != "yes" or facts.get("marker") != facts.get("requirements"):
        yield script(_REQUIREMENTS_SCRIPT, venv, comfyui, image)
    else:
        host.noop("Python env up to date")


@operation()
def seed_inputs(source: str, target: str) -> Generator[Any, None, None]:
    """Copy the files ComfyUI ships in its checkout's ``input/`` into the data root's, never overwriting.

    The runtime mounts ``<data_root>/input`` over the checkout's folder, so without this
    the defaults of ComfyUI's own nodes (``example.png`` in ``LoadImage``) are missing.

    + source: the checkout's ``input`` folder
    + target: the data root's ``input`` folder

    **Example:**

    .. code:: python

        comfyui.seed_inputs(source="/opt/comfyfleet/ComfyUI/input", target="/opt/comfyfleet/input")
    """
    missing = prefetch.fact(MissingInputFiles, source=source, target=target)
    if missing:
        yield script(_SEED_INPUTS_SCRIPT, source, target, *missing)
    else:
        host.noop("input files present")


def runtime_spec(cfg: HostConfig, gpu: bool) -> docker.ContainerSpec:
    """The ComfyUI runtime container, started the way ComfyUI's own ``main.py`` expects."""
    lay = cfg.layout
    command = [
        f"{lay.venv}/bin/python",
        f"{lay.comfyui}/main.py",
        "--listen",
        cfg.comfyui_listen,
        "--port",
        str(cfg.comfyui_port),
        "--base-directory",
        lay.root,
    ]
    if not gpu:
        command.append("--cpu")
    return docker.ContainerSpec(
        name=lay.comfyui_container,
        image=cfg.runtime_image,
        command=tuple(command),
        env=(("PYTHONUNBUFFERED", "1"),),
        mounts=(lay.comfyui, lay.models, lay.custom_nodes, lay.input, lay.output, lay.user, lay.venv),
        gpus=gpu,
        workdir=lay.comfyui,
        labels=(("comfyfleet.role", "comfyui"),),
    )


@operation()
def runtime_container(cfg: HostConfig) -> Generator[Any, None, None]:
    """The ComfyUI container for this host's config; ``gpu: auto`` means "nvidia-smi is present".

    + cfg: the host's validated :class:`~comfyfleet.inventory.HostConfig`
    """
    if isinstance(cfg.gpu, bool):
        gpu = cfg.gpu
    else:
        gpu = bool(prefetch.fact(ContainerHost, user=cfg.ssh_user).get("nvidia_smi"))
    yield from inner_commands(docker.container, runtime_spec(cfg, gpu))


@operation()
def link(path: str, target: str) -> Generator[Any, None, None]:
    """A symlink ``path`` -> ``target`` (pyinfra's ``files.link``), read from the prefetch while it is current.

    + path: the link
    + target: where it points
    """
    info = prefetch.fact(Link, path=path)
    if info and info.get("link_target") == target:
        host.noop(f"link {path} already points to {target}")
        return
    yield from inner_commands(files.link, path=path, target=target)


@operation()
def wait_healthy(url: str, container: str, timeout: int = 300) -> Generator[Any, None, None]:
    """Wait until ComfyUI answers ``GET /system_stats``; fail with the container's last log lines.

    + url: ComfyUI base URL as seen from the host
    + container: container name, for its state and logs
    + timeout: seconds to wait
    """
    yield from inner_commands(docker.wait_http, f"{url}/system_stats", container, timeout)


@operation(is_idempotent=False)
def rollback(
    path: str, container: str, state_dir: str, url: str, ref: str, timeout: int = 300
) -> Generator[Any, None, None]:
    """Go back to the recorded commit, restart, wait for health, and fail naming what happened.

    Always ends in an error: it only runs after an update failed its health check, and
    the host must show up as failed with the reason.
    """
    yield script(_ROLLBACK_SCRIPT, path, container, state_dir, url, ref, int(timeout))
