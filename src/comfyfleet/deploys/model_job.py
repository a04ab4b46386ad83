"""Tier 3 in the background: model downloads started first, the other tiers alongside, then waited for.

On a cold host the model bytes are the long pole, so a ship and ``deploy-all`` start them
before anything else and gate only what needs them:

    models-start   data volume, then folders, scripts, plan and ``hostside/model_job.py start``
                   in one command after one fact round trip: ``fetch_models.py`` runs detached
                   on the host (new session, pid and status under
                   ``<data root>/.comfyfleet/model-job``); nothing starts when every file is in
                   place, and a second start attaches to the running job
    ...            bootstrap, runtime, node installs, the API: they never wait for models
    models-wait    follows the job (every file's bytes, total and rate, each second) until it
                   ends, which a host-side wait sees within 50 ms; fails with the downloader's
                   own error line; records computed hashes

An interrupted pipeline re-run resumes: a job still running is attached to, a finished or
killed one is started again and ``fetch_models.py`` resumes its ``.part`` files. Tokens go
through a 0600 file the job reads and deletes (:func:`~comfyfleet.operations.downloads.token_upload`).
"""

from __future__ import annotations

from pyinfra import host

from comfyfleet.context import report
from comfyfleet.deploys.models import (
    manifests_from_data,
    model_plan,
    needed_models,
    tokens_needed,
)
from comfyfleet.deploys.nodes import stage_plan, staged_facts, tier_deploy
from comfyfleet.deploys.tasks import task
from comfyfleet.facts import prefetch
from comfyfleet.facts.block import BlockVolume
from comfyfleet.facts.comfyui import MissingDirectories
from comfyfleet.inventory import host_config
from comfyfleet.manifest import Manifest
from comfyfleet.operations import block
from comfyfleet.operations.downloads import stage_and_start, start_download, wait_download

SCRIPTS = ["fetch_models.py", "model_job.py"]


@tier_deploy("Models, started")
def start_models(manifests: list[Manifest], staged: dict[str, str] | None = None) -> None:
    """Start downloading every model the manifests name, detached; returns at once.

    ``staged``: a :func:`~comfyfleet.deploys.nodes.stage` call already uploaded :data:`SCRIPTS`
    and the ``models`` plan. Without it (``models-start``, the first thing a ship does on a
    host) one round trip reads the host's state, and one command makes the folders, writes the
    scripts and plan that changed and starts the job.
    """
    cfg = host_config(host)
    models = needed_models(manifests)
    token_names = sorted(tokens_needed(models))
    if staged is None:
        lay = cfg.layout
        plans = {"models": model_plan(cfg, models)}
        files, probes = stage_plan(cfg, SCRIPTS, plans)[1:]
        requests: list[prefetch.FactRequest] = [
            (MissingDirectories, {"paths": tuple(lay.directories)}),
            staged_facts(cfg, SCRIPTS, plans),
        ]
        if cfg.block_device:
            requests.append((BlockVolume, {"device": cfg.block_device, "mount_point": cfg.block_mount}))
        prefetch.prefetch(name="Read host state for downloads", requests=requests)
        if cfg.block_device:
            # The data root lives on the volume: bytes written before the mount would be hidden by it.
            block.volume(name="Block volume", device=cfg.block_device, mount_point=cfg.block_mount)
        stage_and_start(
            name="Start model downloads",
            cfg=cfg,
            directories=lay.directories,
            files=files,
            probes=probes,
            count=len(models),
            token_names=token_names,
        )
    else:
        start_download(name="Start model downloads", cfg=cfg, count=len(models), token_names=token_names)
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
