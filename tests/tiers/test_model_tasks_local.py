"""Tier 3 tasks end to end through the runner on pyinfra's @local connector (no SSH needed).

The same operations run over SSH in the fleet tests; here they run against a data root in
a temporary folder, with the local HF / CivitAI servers, so every path of the operator
side (manifests, plans, token upload, reports, lock recording) is exercised in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.deploys.models import needed_models
from comfyfleet.devkit.upstreams.model_servers import Upstreams
from comfyfleet.errors import BadInput
from comfyfleet.runner import run
from comfyfleet.secrets import Tokens, load_tokens

WORKFLOW = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "10": {
        "class_type": "LoraLoader",
        "inputs": {
            "lora_name": "detail.safetensors",
            "model": ["4", 0],
            "clip": ["4", 1],
            "strength_model": 1.0,
            "strength_clip": 1.0,
        },
    },
    "11": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
}
OVERRIDES = {
    "models": {
        "sd15.safetensors": {
            "folder": "checkpoints",
            "url": "https://huggingface.co/org/sd15/resolve/main/sd15.safetensors",
        },
        "detail.safetensors": {"folder": "loras", "url": "https://civitai.com/api/download/models/4242"},
        "ae.safetensors": {
            "folder": "vae",
            "url": "https://huggingface.co/org/gated/resolve/main/ae.safetensors",
        },
    }
}


@pytest.fixture
def setup(tmp_path: Path, upstreams_factory: Upstreams, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    up = upstreams_factory
    up.add_hf("org/sd15", "sd15.safetensors", 1_000_000)
    up.add_hf("org/gated", "ae.safetensors", 100_000, gated=True)
    up.add_civitai(4242, "detail.safetensors", 200_000)
    up.start_process()
    wf = tmp_path / "workflows"
    wf.mkdir()
    (wf / "txt2img.json").write_text(json.dumps(WORKFLOW))
    (wf / "overrides.yaml").write_text(yaml.safe_dump(OVERRIDES))
    monkeypatch.setenv("HF_TOKEN", up.hf_token)
    monkeypatch.setenv("CIVITAI_API_TOKEN", up.civitai_token)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    data = {
        "workflow": str(wf / "txt2img.json"),
        "workflows_dir": str(wf),
        "data_root": str(tmp_path / "data"),
        "hf_endpoint": up.hf_url,
        "civitai_endpoint": up.civitai_url,
    }
    return {"up": up, "data": data, "root": tmp_path / "data", "wf": wf, "home": tmp_path / "home"}


def test_download_models_task_converges_records_hashes_and_keeps_tokens_out(
    setup: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    up, data, root = setup["up"], setup["data"], setup["root"]
    lock = setup["wf"] / "comfyfleet.lock.yaml"
    # The shape `comfyfleet analyze workflows/ --out workflows/comfyfleet.lock.yaml` writes.
    entry = {"filename": "sd15.safetensors", "folder": "checkpoints", "sha256": None}
    lock.write_text(
        yaml.safe_dump({"lock": {"models": [entry]}, "manifests": {"txt2img": {"models": [entry]}}})
    )
    caplog.set_level(logging.DEBUG)
    result = run("@local", "download-models", data)
    host = result.hosts[0]
    assert host.status == "changed", host.reason
    rows = {r[0]: r for r in host.report.sections["models"].rows}
    assert set(rows) == {"checkpoints/sd15.safetensors", "loras/detail.safetensors", "vae/ae.safetensors"}
    assert all(r[1] == "downloaded" for r in rows.values())
    for rel in rows:
        assert (root / "models" / rel).is_file()
    # The computed hash went into the lock, where the manifest had none.
    recorded = yaml.safe_load(lock.read_text())
    sha = up.hf_files[("org/sd15", "main", "sd15.safetensors")].sha256
    assert recorded["lock"]["models"][0]["sha256"] == sha
    assert recorded["manifests"]["txt2img"]["models"][0]["sha256"] == sha
    # Tokens: not in any log line, and the uploaded token file is gone.
    text = caplog.text + json.dumps([s.rows for s in host.report.sections.values()])
    assert up.hf_token not in text and up.civitai_token not in text
    secrets_dir = setup["home"] / ".comfyfleet-secrets"
    assert secrets_dir.stat().st_mode & 0o777 == 0o700 and list(secrets_dir.iterdir()) == []

    again = run("@local", "download-models", data).hosts[0]
    assert again.status == "no change", again.changed


def test_gated_model_without_token_fails_naming_model_and_variable(
    setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    host = run("@local", "download-models", setup["data"]).hosts[0]
    assert host.status == "failed"
    assert "ae.safetensors" in host.reason and "HF_TOKEN" in host.reason


def test_unsafe_model_name_is_refused_before_anything_reaches_the_host(setup: dict[str, Any]) -> None:
    bad = dict(WORKFLOW)
    bad["12"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "lora_name": "x$(touch /tmp/pwned).safetensors",
            "model": ["4", 0],
            "clip": ["4", 1],
            "strength_model": 1.0,
            "strength_clip": 1.0,
        },
    }
    path = setup["wf"] / "bad.json"
    path.write_text(json.dumps(bad))
    message = refusal(setup["data"], path)
    assert (
        "bad.json: node 12: model name 'x$(touch /tmp/pwned).safetensors' contains shell metacharacters"
        in message
    )
    assert not setup["root"].exists()  # no folder, no plan, no script: nothing was sent
    path.write_text(
        json.dumps({**WORKFLOW, "11": {"class_type": "VAELoader", "inputs": {"vae_name": "../../x.pt"}}})
    )
    assert "node 11: model name '../../x.pt' contains '..'" in refusal(setup["data"], path)
    assert not setup["root"].exists()


def refusal(data: dict[str, Any], workflow: Path) -> str:
    """The one-line refusal of a run: the task's BadInput reaches the caller (the CLI exits 2)."""
    with pytest.raises(BadInput) as exc:
        run("@local", "download-models", {**data, "workflow": str(workflow)})
    return str(exc.value)


def test_organize_cleanup_and_storage_report(setup: dict[str, Any]) -> None:
    data, root = setup["data"], setup["root"]
    assert run("@local", "download-models", data).hosts[0].ok
    models = root / "models"
    # A referenced file in the wrong folder, and two files nobody references.
    (models / "checkpoints/sd15.safetensors").rename(models / "loras/sd15.safetensors")
    (models / "upscale_models").mkdir()
    (models / "upscale_models/old.pth").write_bytes(b"x" * 5000)
    (models / "loras/unused.safetensors").write_bytes(b"y" * 3000)
    outside = root / "not-models.bin"
    outside.write_bytes(b"keep me")

    org = run("@local", "organize-models", data).hosts[0]
    assert org.status == "changed", org.reason
    assert (models / "checkpoints/sd15.safetensors").is_file() and not (
        models / "loras/sd15.safetensors"
    ).exists()
    assert run("@local", "organize-models", data).hosts[0].status == "no change"

    listed = run("@local", "cleanup-models", data).hosts[0]
    files = {r[0] for r in listed.report.sections["unreferenced models"].rows}
    assert files == {"upscale_models/old.pth", "loras/unused.safetensors"}
    assert (models / "upscale_models/old.pth").exists()  # a listing deletes nothing
    plan_id = re.search(r"cleanup plan ([0-9a-f]{16})", " ".join(listed.report.notes)).group(1)  # type: ignore[union-attr]

    with pytest.raises(BadInput, match="--yes needs --plan"):
        run("@local", "cleanup-models", {**data, "yes": True})
    # After the review, a new unreferenced file appears: it was not in the plan, so it stays.
    (models / "loras/new.safetensors").write_bytes(b"z" * 10)
    deleted = run("@local", "cleanup-models", {**data, "yes": True, "cleanup_plan": plan_id}).hosts[0]
    assert deleted.status == "changed", deleted.reason
    assert (
        not (models / "upscale_models/old.pth").exists()
        and not (models / "loras/unused.safetensors").exists()
    )
    assert (models / "loras/new.safetensors").exists()
    (models / "loras/new.safetensors").unlink()
    again = run("@local", "cleanup-models", {**data, "yes": True, "cleanup_plan": plan_id}).hosts[0]
    assert again.status == "failed" and f"no reviewed cleanup plan {plan_id}" in again.reason  # used once
    assert outside.read_bytes() == b"keep me"
    assert (models / "vae/ae.safetensors").exists()

    rep = run("@local", "storage-report", data).hosts[0]
    assert rep.status == "no change"
    folders = {r[0]: r for r in rep.report.sections["models per folder"].rows}
    assert set(folders) >= {"checkpoints", "loras", "vae"}
    storage = {r[0]: r for r in rep.report.sections["storage"].rows}
    assert storage["referenced"][1] == "3" and storage["unreferenced"][1] == "0"
    assert "free on data root" in storage


def test_needed_models_refuses_folder_and_url_tricks() -> None:
    from comfyfleet.manifest import Manifest, ModelRef

    ok = ModelRef(filename="a.safetensors", folder="checkpoints", url="https://example.org/a.safetensors")
    assert (
        needed_models([Manifest(workflow="w", source="w.json", format="api", models=[ok])])[0].filename
        == "a.safetensors"
    )
    for bad in (
        ok.model_copy(update={"folder": "../etc"}),
        ok.model_copy(update={"url": "https://x/$(id)`"}),
        ok.model_copy(update={"filename": "/abs.safetensors"}),
    ):
        with pytest.raises(BadInput, match="w.json"):
            needed_models([Manifest(workflow="w", source="w.json", format="api", models=[bad])])


def test_tokens_come_from_env_or_a_private_file_and_never_print(tmp_path: Path) -> None:
    tokens = load_tokens({"HF_TOKEN": "hf_secret", "HOME": "/x"})
    assert tokens.names() == ["HF_TOKEN"] and "hf_secret" not in repr(tokens) + str(tokens)
    assert tokens.redact("token hf_secret here") == "token <HF_TOKEN> here"
    f = tmp_path / "secrets.env"
    f.write_text("export CIVITAI_API_TOKEN='civ_secret'\n# comment\nHUGGING_FACE_HUB_TOKEN=hf_old\n")
    os.chmod(f, 0o600)
    tokens = load_tokens({"COMFYFLEET_SECRETS_FILE": str(f)})
    assert json.loads(tokens.payload()) == {"CIVITAI_API_TOKEN": "civ_secret", "HF_TOKEN": "hf_old"}
    os.chmod(f, 0o644)
    with pytest.raises(BadInput, match="chmod 600"):
        load_tokens({"COMFYFLEET_SECRETS_FILE": str(f)})
    assert not Tokens()
