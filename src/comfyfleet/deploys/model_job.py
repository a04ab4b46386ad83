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
through a 0600 file the job reads and deletes (:func:`~comfyfleet.deploys.models.token_upload`).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import gevent
from pyinfra import host
from pyinfra.api import FunctionCommand, Host, QuoteString, State, StringCommand, operation

from comfyfleet.context import report
from comfyfleet.deploys.models import (
    manifests_from_data,
    model_plan,
    needed_models,
    show_downloads,
    token_upload,
    tokens_needed,
)
from comfyfleet.deploys.nodes import stage, staged_facts, tier_deploy
from comfyfleet.deploys.tasks import task
from comfyfleet.facts import prefetch
from comfyfleet.facts.block import BlockVolume
from comfyfleet.facts.comfyui import MissingDirectories
from comfyfleet.facts.hostside import HostsideJson, parse_tagged
from comfyfleet.inventory import HostConfig, host_config
from comfyfleet.manifest import Manifest
from comfyfleet.operations import block, comfyui
from comfyfleet.operations.hostside import MODELS_CHECK, probed_or_fact
from comfyfleet.shell import fail, script

SCRIPTS = ["fetch_models.py", "model_job.py"]
POLL_SECONDS = 0.5
progress_log = logging.getLogger("comfyfleet.progress")
"""One line per host and poll while models download: every file's MB done/total and MB/s."""


def job_dir(cfg: HostConfig) -> str:
    return f"{cfg.layout.state}/model-job"


def _script(cfg: HostConfig, name: str) -> str:
    return f"{cfg.layout.state}/bin/{name}"


def _plan_path(cfg: HostConfig) -> str:
    return f"{cfg.layout.state}/plans/models.json"


@operation()
def start_download(cfg: HostConfig, count: int, token_names: list[str]) -> Generator[Any, None, None]:
    """Start the plan's downloads detached on the host (no change when every file is in place).

    + cfg: the host's config (paths of the staged scripts, the plan and the job folder)
    + count: how many files the plan names (for the no-op message)
    + token_names: which tokens the plan's URLs may need (read on the operator's machine)
    """
    fetch = _script(cfg, "fetch_models.py")
    check = probed_or_fact(("python3", fetch, "--plan", _plan_path(cfg), *MODELS_CHECK))
    rows = check.get("CHECK")
    if rows is None:
        yield fail(
            "; ".join(check.get("error", []))
            or "fetch_models.py --check gave no answer (python3 on the host?)"
        )
        return
    if all(r["state"] == "ok" for r in rows):
        host.noop(f"{count} model file(s) in place")
        return
    argv: list[Any] = [
        "python3",
        QuoteString(_script(cfg, "model_job.py")),
        "start",
        "--job-dir",
        QuoteString(job_dir(cfg)),
        "--fetch",
        QuoteString(fetch),
        "--plan",
        QuoteString(_plan_path(cfg)),
    ]
    upload, secrets_file = token_upload(token_names)
    yield from upload
    if secrets_file is not None:
        argv += ["--secrets-file", QuoteString(secrets_file)]
    yield StringCommand(*argv)


def progress_text(progress: dict[str, Any]) -> str:
    """``checkpoints/a 312/512 MB 39.8 MB/s; loras/b done 256/256 MB 41.0 MB/s``: every stream, one line."""
    parts = []
    for key, p in sorted(progress.items()):
        total = f"/{p['total'] / 1e6:.0f}" if p.get("total") else ""
        done = " done" if p.get("done") else ""
        parts.append(f"{key}{done} {p.get('bytes', 0) / 1e6:.0f}{total} MB {p.get('rate', 0) / 1e6:.1f} MB/s")
    return "; ".join(parts) or "starting"


@operation(is_idempotent=False)
def wait_download(cfg: HostConfig, count: int, lock_path: str | None) -> Generator[Any, None, None]:
    """Follow the host's download job until it ends; fail with the downloader's error.

    No change when no job of this plan is running (it finished before, or nothing had to
    be fetched): its outcome, or the files in place, are read without running anything.

    + cfg: the host's config (the job folder, the plan)
    + count: how many files the plan names
    + lock_path: where computed hashes are recorded
    """
    status = (
        "python3",
        _script(cfg, "model_job.py"),
        "status",
        "--job-dir",
        job_dir(cfg),
        "--plan",
        _plan_path(cfg),
    )
    check = ("python3", _script(cfg, "fetch_models.py"), "--plan", _plan_path(cfg), *MODELS_CHECK)
    now = host.get_fact(HostsideJson, argv=status)
    job = now.get("JOB")
    if job is None:
        yield fail(
            "; ".join(now.get("error", [])) or "model_job.py status gave no answer (python3 on the host?)"
        )
        return
    answer: dict[str, Any] = {"job": job}
    if job["state"] == "running":
        status_command = script('"$@"', *status)
        check_command = script('"$@"', *check)

        # pyinfra hands `state` and `host` to a callback by these parameter names.
        def follow(state: State, host: Host) -> bool:
            shown = ""
            while True:
                ok, output = host.run_shell_command(status_command, _sudo=cfg.sudo)
                line = parse_tagged(output.stdout_lines).get("JOB") if ok else None
                if line is None:
                    answer["error"] = (
                        "; ".join(output.stderr_lines[-3:]) or "model_job.py status gave no answer"
                    )
                    return True
                text = progress_text(line.get("progress") or {})
                if text != shown and (line["state"] == "running" or line.get("progress")):
                    progress_log.info("[%s] models: %s", host.name, text)
                    shown = text
                if line["state"] != "running":
                    break
                gevent.sleep(POLL_SECONDS)
            answer["job"] = line
            if not (line["state"] == "done" and line.get("same_plan")):
                _, out = host.run_shell_command(check_command, _sudo=cfg.sudo)
                answer["check"] = parse_tagged(out.stdout_lines).get("CHECK")
            return True

        yield FunctionCommand(follow, (), {})
        if "error" in answer:
            yield fail(f"model downloads: {answer['error']}")
            return
        job = answer["job"]
    elif not (job["state"] == "done" and job.get("same_plan")):
        answer["check"] = host.get_fact(HostsideJson, argv=check).get("CHECK")
    problem = _verdict(job, answer.get("check"), count, lock_path)
    if problem:
        yield fail(problem)
        return
    host.noop(f"{count} model file(s) in place")


def _verdict(
    job: dict[str, Any], rows: list[dict[str, Any]] | None, count: int, lock_path: str | None
) -> str:
    """What failed (one line), or "" when every file is in place (then reported)."""
    if job.get("same_plan") and job["state"] == "failed":
        errors = job.get("errors") or [f"the downloader exited with {job.get('rc')}"]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"model download failed: {errors[0]}{more}"
    if job.get("same_plan") and job["state"] == "done":
        show_downloads(job.get("result") or [], lock_path)
        return ""
    missing = [f"{r['folder']}/{r['filename']}" for r in rows or [] if r.get("state") != "ok"]
    if rows is not None and not missing:  # every file in place (a workflow without models: none)
        return ""
    why = (
        "its download stopped before the end (killed, or the host restarted)"
        if job.get("state") == "lost"
        else "no download of this plan is running"
    )
    return f"model files missing: {', '.join(missing) or 'unknown (no check answer)'}: {why}; run again to resume"


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
