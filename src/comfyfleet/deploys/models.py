"""Tier 3: the model files the workflows need, fetched on the host straight into the data root.

``hostside/fetch_models.py`` does the downloading on the host (Hugging Face metadata as
huggingface_hub reads it, CivitAI through its API, any http(s) URL; ranged parallel
segments where the server serves Range, resume, sha256 check, a length proven before a
file counts, rename into place only when complete).
``hostside/model_files.py`` organizes, cleans up and measures the models folder.

Model names come from untrusted workflow JSON: every one is checked with
:func:`comfyfleet.safety.unsafe_model_name_reason` here, on the operator's machine,
and a workflow with an unsafe name is refused (exit 2) before anything reaches a host.

Tokens (``HF_TOKEN``, ``CIVITAI_API_TOKEN``) are read by :mod:`comfyfleet.operations.downloads`
and uploaded only when something must be downloaded, as a file in a 0700 folder of the
SSH user, read by the script from standard input and deleted by the same command.

Host data: ``workflow``, ``workflows_dir``, ``hf_endpoint``, ``civitai_endpoint``,
``models_parallel``, ``cleanup_plan``, ``yes``, ``lock_file`` (:mod:`comfyfleet.inventory`
documents and validates every key).
"""

from __future__ import annotations

import re
from typing import Any

from pyinfra import host
from pyinfra.api.operation import OperationMeta

from comfyfleet.context import report
from comfyfleet.deploys.nodes import load_manifests, stage, tier_deploy
from comfyfleet.deploys.tasks import task
from comfyfleet.errors import BadInput
from comfyfleet.inventory import HostConfig, host_config
from comfyfleet.manifest import Manifest, ModelRef
from comfyfleet.operations.downloads import fetch, report_downloads
from comfyfleet.operations.model_files import cleanup, organize, storage
from comfyfleet.safety import normalize_model_name, unsafe_model_name_reason

# A models subfolder, nested up to four deep as packs register them (XLabs: ``xlabs/loras``).
# Every segment starts with a letter, digit or underscore, so no ``.``/``..`` and no absolute path.
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
_FOLDER = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT}){{0,3}}$")
_URL = re.compile(r"^(https?://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+|civitai:\d+)$")


def needed_models(manifests: list[Manifest]) -> list[ModelRef]:
    """Models of the manifests, deduplicated by folder/filename; BadInput for any unsafe or unfetchable one."""
    out: dict[tuple[str, str], ModelRef] = {}
    for m in manifests:
        for un in m.unresolved.models:
            reason = unsafe_model_name_reason(un.filename)
            if reason or "unsafe" in un.reason:
                raise BadInput(
                    f"{m.source}: node {', '.join(un.node_ids) or '?'}: model name {un.filename!r} "
                    f"{reason or un.reason}: fix the workflow (nothing was sent to any host)"
                )
        for ref in m.models:
            reason = unsafe_model_name_reason(ref.filename)
            if reason is None and not _FOLDER.match(ref.folder):
                reason = f"goes to an invalid models folder {ref.folder!r}"
            if reason is None and ref.url and not _URL.match(ref.url):
                reason = f"has a download URL comfyfleet will not use ({ref.url!r})"
            if reason:
                raise BadInput(
                    f"{m.source}: node {', '.join(ref.node_ids) or '?'}: model {ref.filename!r} {reason}: "
                    "fix the workflow (nothing was sent to any host)"
                )
            key = (ref.folder, normalize_model_name(ref.filename))
            have = out.get(key)
            if have is None:
                out[key] = ref.model_copy(update={"filename": key[1]})
            elif ref.sha256 and have.sha256 and ref.sha256.lower() != have.sha256.lower():
                raise BadInput(
                    f"{m.source}: {key[0]}/{key[1]} has two different sha256 values across workflows"
                )
            else:
                have.url = have.url or ref.url
                have.sha256 = have.sha256 or ref.sha256
    return [out[k] for k in sorted(out)]


def model_plan(cfg: HostConfig, models: list[ModelRef]) -> dict[str, Any]:
    lay = cfg.layout
    return {
        "models_dir": lay.models,
        "staging_dir": f"{lay.state}/downloads",
        "state_file": f"{lay.state}/model-hashes.json",
        "hf_endpoint": cfg.hf_endpoint,
        "civitai_endpoint": cfg.civitai_endpoint,
        "parallel": cfg.models_parallel,
        "items": [
            {
                "filename": m.filename,
                "folder": m.folder,
                "url": m.url,
                "sha256": (m.sha256 or "").lower() or None,
                "size": m.size,
                "record_hash": m.sha256 is None,
            }
            for m in models
        ],
    }


def tokens_needed(models: list[ModelRef]) -> set[str]:
    names = set()
    for m in models:
        url = m.url or ""
        if re.match(r"^https://(www\.)?(huggingface\.co|hf\.co)/", url):
            names.add("HF_TOKEN")
        if url.startswith("civitai:") or re.match(r"^https://([a-z]+\.)?civitai\.com/", url):
            names.add("CIVITAI_API_TOKEN")
    return names


@tier_deploy("Models")
def download_models(manifests: list[Manifest], staged: dict[str, str] | None = None) -> OperationMeta:
    """Fetch every model the manifests name into models/<folder>/ on the host.

    ``staged``: paths from a :func:`~comfyfleet.deploys.nodes.stage` call that already
    uploaded ``fetch_models.py`` and the ``models`` plan.
    """
    cfg = host_config(host)
    models = needed_models(manifests)
    missing_url = [m for m in models if not m.url]
    paths = staged or stage(
        cfg, ["fetch_models.py"], {"models": model_plan(cfg, models)}, "Model scripts and plan"
    )
    step = fetch(
        name="Model files",
        script_path=paths["fetch_models.py"],
        plan_path=paths["models"],
        count=len(models),
        token_names=sorted(tokens_needed(models)),
    )
    report_downloads(name="Model report", step=step, lock_file=cfg.lock_path)
    if missing_url:
        report(host).note(
            "no download URL for: "
            + ", ".join(f"{m.folder}/{m.filename}" for m in missing_url)
            + " (add url: in workflows/overrides.yaml)"
        )
    return step


def manifests_from_data(one: bool) -> list[Manifest]:
    cfg = host_config(host)
    return load_manifests(cfg.workflow if one else None, cfg.workflows_dir)


@task("download-models")
def download_models_task() -> None:
    """``--data workflow=FILE`` (default: every workflow in workflows/)."""
    download_models(manifests_from_data(one=True))


def _admin_plan(cfg: HostConfig) -> tuple[str, str]:
    manifests = manifests_from_data(one=False)
    models = needed_models(manifests)
    # Names a workflow uses whose folder analysis could not tell: never "unreferenced".
    anywhere = sorted({normalize_model_name(u.filename) for m in manifests for u in m.unresolved.models})
    plan = {
        "models_dir": cfg.layout.models,
        "data_root": cfg.layout.root,
        "referenced": [{"folder": m.folder, "filename": m.filename, "sha256": m.sha256} for m in models],
        "referenced_anywhere": anywhere,
        "cleanup_plans_dir": f"{cfg.layout.state}/cleanup-plans",
    }
    paths = stage(cfg, ["model_files.py"], {"model-files": plan}, "Model folder scripts and plan")
    return paths["model_files.py"], paths["model-files"]


@task("organize-models")
def organize_models_task() -> None:
    """Move model files to the folders the manifests say."""
    cfg = host_config(host)
    script_path, plan_path = _admin_plan(cfg)
    organize(name="Organize models", script_path=script_path, plan_path=plan_path)


@task("cleanup-models")
def cleanup_models_task() -> None:
    """Lists and saves a cleanup plan; ``--data cleanup_plan=ID`` deletes exactly that reviewed plan."""
    cfg = host_config(host)
    plan_id = cfg.cleanup_plan or None
    if cfg.yes and not plan_id:
        raise BadInput(
            "cleanup-models --yes needs --plan ID (from a listing run): only a reviewed list is deleted"
        )
    if plan_id and not re.fullmatch(r"[0-9a-f]{16}", plan_id):
        raise BadInput(
            f"cleanup plan {plan_id!r}: give the 16-character id a --cleanup-models listing printed"
        )
    script_path, plan_path = _admin_plan(cfg)
    cleanup(name="Clean up models", script_path=script_path, plan_path=plan_path, plan_id=plan_id)


@task("storage-report")
def storage_report_task() -> None:
    """Sizes per folder, largest files, referenced vs unreferenced, free space on the data root."""
    cfg = host_config(host)
    script_path, plan_path = _admin_plan(cfg)
    storage(name="Storage report", script_path=script_path, plan_path=plan_path)
