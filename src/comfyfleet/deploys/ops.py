"""Day-to-day tasks on running hosts: status, logs, restart, and a ComfyUI core update with rollback."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from comfyfleet.deploys.tasks import task
from comfyfleet.inventory import host_config
from comfyfleet.operations import comfyui, docker, inspect


@task("status")
def status_task() -> None:
    """Containers, ComfyUI version and health, GPU, disk, memory and busiest processes (a report, no change)."""
    cfg = host_config(host)
    inspect.status(name="Collect status", cfg=cfg)


@task("logs")
def logs_task() -> None:
    """Recent ComfyUI and API container logs, errors highlighted; ``export_dir`` writes one file per host."""
    cfg = host_config(host)
    inspect.logs(name="Collect logs", cfg=cfg, lines=cfg.log_lines, export_dir=cfg.export_dir)


@deploy("Restart")
def restart(component: str) -> None:
    """Restart comfyui, api or all gracefully and wait until each answers again."""
    cfg = host_config(host)
    lay = cfg.layout
    if component in ("comfyui", "all"):
        docker.restart(name="Restart ComfyUI", container=lay.comfyui_container)
        comfyui.wait_healthy(
            name="ComfyUI health",
            url=cfg.comfyui_url,
            container=lay.comfyui_container,
            timeout=cfg.health_timeout,
        )
    if component in ("api", "all"):
        # A host without the API service yet reports that and carries on (restart is a noop).
        api = docker.restart(name="Restart comfyui-api", container=lay.api_container)
        docker.wait_http(
            name="comfyui-api health",
            url=f"{cfg.api_local_url}/health",
            container=lay.api_container,
            timeout=cfg.health_timeout,
            _if=api.did_change,
        )


@task("restart")
def restart_task() -> None:
    """``--data component=comfyui|api|all``."""
    restart(component=host_config(host).component)


@deploy("Update ComfyUI core")
def update_core(ref: str) -> None:
    """Move ComfyUI core to ``ref``; when it then fails its health check, go back to the previous commit.

    The previous commit is recorded on the host before the checkout moves, so a
    rollback works even if the operator's machine disconnects. The host ends as
    failed after a rollback, with the reason.
    """
    cfg = host_config(host)
    lay = cfg.layout
    core = comfyui.checkout(
        name="ComfyUI core checkout", path=lay.comfyui, repo=cfg.comfyui_repo, ref=ref, record_to=lay.state
    )
    env = comfyui.python_env(
        name="ComfyUI Python env", venv=lay.venv, comfyui=lay.comfyui, image=cfg.runtime_image
    )
    docker.restart(
        name="Restart ComfyUI",
        container=lay.comfyui_container,
        _if=lambda: core.did_change() or env.did_change(),
    )
    health = comfyui.wait_healthy(
        name="ComfyUI health",
        url=cfg.comfyui_url,
        container=lay.comfyui_container,
        timeout=cfg.health_timeout,
        _ignore_errors=True,
    )
    comfyui.rollback(
        name="Roll back ComfyUI core",
        path=lay.comfyui,
        container=lay.comfyui_container,
        state_dir=lay.state,
        url=cfg.comfyui_url,
        ref=ref,
        timeout=cfg.health_timeout,
        _if=health.did_error,
    )


@task("update-comfyui-core")
def update_core_task() -> None:
    """``--data ref=REF`` (default: the inventory's comfyui_ref)."""
    cfg = host_config(host)
    update_core(ref=cfg.ref or cfg.comfyui_ref)
