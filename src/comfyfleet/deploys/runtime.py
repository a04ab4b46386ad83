"""The ComfyUI runtime on a host: folders, core checkout at the pinned ref, Python env, container, health."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from comfyfleet.deploys.tasks import task
from comfyfleet.inventory import host_config
from comfyfleet.operations import comfyui, docker


@deploy("ComfyUI runtime")
def deploy_runtime(ref: str | None = None) -> None:
    """Converge ComfyUI core and its container on the current host, then wait until it answers.

    The container is recreated only when its spec changed, and restarted when the
    checkout or its Python env changed under a running container.
    """
    cfg = host_config(host)
    lay = cfg.layout
    sudo = cfg.sudo
    comfyui.directories(name="Data folders", paths=lay.directories, _sudo=sudo)
    core = comfyui.checkout(
        name="ComfyUI core checkout", path=lay.comfyui, repo=cfg.comfyui_repo, ref=ref or cfg.comfyui_ref, _sudo=sudo
    )
    env = comfyui.python_env(name="ComfyUI Python env", venv=lay.venv, comfyui=lay.comfyui,
                             image=cfg.runtime_image, _sudo=sudo)
    ctr = comfyui.runtime_container(name="ComfyUI container", cfg=cfg, _sudo=sudo)
    docker.restart(
        name="Restart ComfyUI for new code",
        container=lay.comfyui_container,
        _if=lambda: (core.did_change() or env.did_change()) and not ctr.did_change(),
        _sudo=sudo,
    )
    comfyui.wait_healthy(name="ComfyUI health", url=cfg.comfyui_url, container=lay.comfyui_container,
                         timeout=cfg.health_timeout, _sudo=sudo)


@task("runtime")
def runtime_task() -> None:
    """Converge the ComfyUI runtime only (no provider bootstrap)."""
    deploy_runtime()
