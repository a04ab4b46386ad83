"""The ComfyUI runtime on a host: folders, core checkout at the pinned ref, Python env, container, health."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Link

from comfyfleet.deploys.tasks import task
from comfyfleet.facts import prefetch
from comfyfleet.facts.comfyui import GitCheckout, HttpStatus, MissingDirectories, MissingInputFiles, PythonEnv
from comfyfleet.facts.docker import ContainerHost, DockerContainer
from comfyfleet.inventory import HostConfig, host_config
from comfyfleet.operations import comfyui, docker


def runtime_facts(cfg: HostConfig, ref: str) -> list[prefetch.FactRequest]:
    """The facts :func:`deploy_runtime`'s operations ask for, with the same arguments."""
    lay = cfg.layout
    requests: list[prefetch.FactRequest] = [
        (MissingDirectories, {"paths": tuple(lay.directories)}),
        (GitCheckout, {"path": lay.comfyui, "ref": ref}),
        (MissingInputFiles, {"source": f"{lay.comfyui}/input", "target": lay.input}),
        (
            PythonEnv,
            {"venv": lay.venv, "requirements": f"{lay.comfyui}/requirements.txt", "image": cfg.runtime_image},
        ),
        (DockerContainer, {"container": lay.comfyui_container}),
        (Link, {"path": f"{lay.comfyui}/user"}),
        (HttpStatus, {"url": f"{cfg.comfyui_url}/system_stats"}),
    ]
    if not isinstance(cfg.gpu, bool):
        requests.append((ContainerHost, {"user": cfg.ssh_user}))
    return requests


@deploy("ComfyUI runtime")
def deploy_runtime(ref: str | None = None, prefetched: bool = False) -> None:
    """Converge ComfyUI core and its container on the current host, then wait until it answers.

    The container is recreated only when its spec changed, and restarted when the
    checkout or its Python env changed under a running container. ``prefetched``:
    the caller already read :func:`runtime_facts` (one round trip for a whole bootstrap).
    """
    cfg = host_config(host)
    lay = cfg.layout
    ref = ref or cfg.comfyui_ref
    if not prefetched:
        prefetch.prefetch(name="Read host state", requests=runtime_facts(cfg, ref))
    comfyui.directories(name="Data folders", paths=lay.directories)
    core = comfyui.checkout(name="ComfyUI core checkout", path=lay.comfyui, repo=cfg.comfyui_repo, ref=ref)
    # ComfyUI keeps its database at <checkout>/user/comfyui.db whatever --base-directory says
    # (settings go to <data root>/user): one user/ folder on the data root holds both, and
    # survives re-clones and container recreation. Without it: "Failed to initialize database".
    user_link = comfyui.link(
        name="ComfyUI user folder on the data root", path=f"{lay.comfyui}/user", target=lay.user
    )
    comfyui.seed_inputs(name="ComfyUI example inputs", source=f"{lay.comfyui}/input", target=lay.input)
    env = comfyui.python_env(
        name="ComfyUI Python env", venv=lay.venv, comfyui=lay.comfyui, image=cfg.runtime_image
    )
    ctr = comfyui.runtime_container(name="ComfyUI container", cfg=cfg)
    docker.restart(
        name="Restart ComfyUI for new code",
        container=lay.comfyui_container,
        _if=lambda: (
            (core.did_change() or env.did_change() or user_link.did_change()) and not ctr.did_change()
        ),
    )
    comfyui.wait_healthy(
        name="ComfyUI health",
        url=cfg.comfyui_url,
        container=lay.comfyui_container,
        timeout=cfg.health_timeout,
    )


@task("runtime")
def runtime_task() -> None:
    """Converge the ComfyUI runtime only (no provider bootstrap)."""
    deploy_runtime()
