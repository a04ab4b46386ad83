"""Tier 3 in the background: model downloads started first, the other tiers alongside, then waited for.

On a cold host the model bytes are the long pole, so a ship and ``deploy-all`` start them
before anything else and gate only what needs them:

    models-start   data volume + folders, scripts and plan, then ``hostside/model_job.py start``:
                   ``fetch_models.py`` runs detached on the host (new session, pid and status
                   under ``<data root>/.comfyfleet/model-job``); nothing starts when every file
                   is in place, and a second start attaches to the running job
    ...            bootstrap, runtime, node installs, the API: they never wait for models
    models-wait    follows the job (every file's bytes, total and rate, each second) until it
                   ends; fails with the downloader's own error line; records computed hashes

An interrupted pipeline re-run resumes: a job still running is attached to, a finished or
killed one is started again and ``fetch_models.py`` resumes its ``.part`` files. Tokens go
through a 0600 file the job reads and deletes (:func:`~comfyfleet.operations.downloads.token_upload`).
"""

from __future__ import annotations

from typing import Any

from pyinfra import host

from comfyfleet.context import report
from comfyfleet.deploys.models import (
    manifests_from_data,
    model_plan,
    needed_models,
    tokens_needed,
)
from comfyfleet.deploys.nodes import stage, staged_facts, tier_deploy
from comfyfleet.deploys.tasks import task
from comfyfleet.facts import prefetch
from comfyfleet.facts.block import BlockVolume
from comfyfleet.facts.comfyui import MissingDirectories
from comfyfleet.inventory import HostConfig, host_config
from comfyfleet.manifest import Manifest
from comfyfleet.operations import block, comfyui
from comfyfleet.operations.downloads import start_download, wait_download

SCRIPTS = ["fetch_models.py", "model_job.py"]


def prepare_data_root(
    cfg: HostConfig, scripts: list[str], plans: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """What the downloads need on a bare host, in one fact round trip: volume, folders, scripts, plan."""
    lay = cfg.layout
    requests: list[prefetch.FactRequest] = [
        (MissingDirectories, {"paths": tuple(lay.directories)}),
        staged_facts(cfg, scripts, plans),
    ]
    if cfg.block_device:
        requests.append((BlockVolume, {"device": cfg.block_device, "mount_point": cfg.block_mount}))
    prefetch.prefetch(name="Read host state for downloads", requests=requests)
    if cfg.block_device:
        # The data root lives on the volume: bytes written before the mount would be hidden by it.
        block.volume(name="Block volume", device=cfg.block_device, mount_point=cfg.block_mount)
    comfyui.directories(name="Data folders", paths=lay.directories)
    return stage(cfg, scripts, plans, "Host scripts and plans")


@tier_deploy("Models, started")
def start_models(manifests: list[Manifest], staged: dict[str, str] | None = None) -> None:
    """Start downloading every model the manifests name, detached; returns at once.

    ``staged``: a :func:`~comfyfleet.deploys.nodes.stage` (or :func:`prepare_data_root`) call
    already uploaded :data:`SCRIPTS` and the ``models`` plan.
    """
    cfg = host_config(host)
    models = needed_models(manifests)
    if staged is None:
        prepare_data_root(cfg, SCRIPTS, {"models": model_plan(cfg, models)})
    start_download(
        name="Start model downloads",
        cfg=cfg,
        count=len(models),
        token_names=sorted(tokens_needed(models)),
    )
    missing_url = [m for m in models if not m.url]
    if missing_url:
        report(host).note(
            "no download URL for: "
            + ", ".join(f"{m.folder}/{m.filename}" for m in missing_url)
            + " (add url: in workflows/overrides.yaml)"
        )


@tier_deploy("Models, finished")
def wait_models(manifests: list[Manifest]) -> None:
    """Wait for the downloads :func:`start_models` started (same plan), showing every stream."""
    cfg = host_config(host)
    wait_download(
        name="Model downloads",
        cfg=cfg,
        count=len(needed_models(manifests)),
        lock_path=cfg.lock_path,
    )


@task("models-start")
def models_start_task() -> None:
    """Start the model downloads of ``--data workflow=FILE`` (default: every workflow) detached."""
    start_models(manifests_from_data(one=True))


@task("models-wait")
def models_wait_task() -> None:
    """Follow the detached model downloads to their end (``--data workflow=FILE`` as models-start)."""
    wait_models(manifests_from_data(one=True))
