"""Provider bootstrap: Docker Engine, NVIDIA container toolkit, block volume, then the ComfyUI runtime.

Providers differ only in data (:data:`comfyfleet.inventory.PROVIDER_DEFAULTS`): Lambda
logs in as ``ubuntu`` and keeps everything under its home; DataCrunch logs in as
``root`` and puts the data root on a block volume.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from comfyfleet.deploys.runtime import deploy_runtime, runtime_facts
from comfyfleet.deploys.tasks import task
from comfyfleet.errors import BadInput
from comfyfleet.facts import prefetch
from comfyfleet.facts.block import BlockVolume
from comfyfleet.facts.docker import ContainerHost
from comfyfleet.inventory import host_config
from comfyfleet.operations import block, docker


@deploy("Provider bootstrap")
def provision(provider: str | None = None) -> None:
    """Bootstrap the current host for ``provider`` and deploy the ComfyUI runtime on it."""
    cfg = host_config(host, provider)  # a different provider in the host data: BadInput
    requests = [(ContainerHost, {"user": cfg.ssh_user}), *runtime_facts(cfg, cfg.comfyui_ref)]
    if cfg.block_device:
        requests.append((BlockVolume, {"device": cfg.block_device, "mount_point": cfg.block_mount}))
    prefetch.prefetch(name="Read host state", requests=requests)
    docker.engine(name="Docker Engine", user=cfg.ssh_user, apt_url=cfg.docker_apt_url)
    docker.nvidia_toolkit(
        name="NVIDIA container toolkit",
        version=cfg.nvidia_toolkit_version,
        apt_url=cfg.nvidia_apt_url,
        user=cfg.ssh_user,
    )
    block.volume(name="Block volume", device=cfg.block_device, mount_point=cfg.block_mount)
    deploy_runtime(prefetched=True)


@task("bootstrap")
def bootstrap_task() -> None:
    """Provider bootstrap for the provider named in the host data (``--data provider=...``)."""
    cfg = host_config(host)
    if not cfg.given("provider"):
        raise BadInput(
            f"host {host.name}: no provider: pass --provider lambda|datacrunch or set provider in its data"
        )
    provision(cfg.provider)
