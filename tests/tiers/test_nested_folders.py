"""Nested model folders (``xlabs/loras``) end to end on the operator side and on a host's disk.

analyze gives XLabs' FluxLoraLoader the folder ``xlabs/loras`` (the folder the pack reads:
``os.path.join(folder_paths.models_dir, "xlabs", "loras")``, registered as ``xlabs_loras``);
the model tier must place it there, still confined under models/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.deploys.models import needed_models
from comfyfleet.devkit.upstreams.model_servers import Upstreams
from comfyfleet.errors import BadInput
from comfyfleet.manifest import Manifest, ModelRef
from comfyfleet.runner import run

FETCH = Path(__file__).resolve().parents[2] / "src/comfyfleet/hostside/fetch_models.py"
LORA = "flux_realism_lora.safetensors"
WORKFLOW = {
    "1": {"class_type": "FluxLoraLoader", "inputs": {"lora_name": LORA, "strength_model": 1.0}},
}


def manifest(folder: str) -> list[Manifest]:
    ref = ModelRef(
        filename=LORA, folder=folder, url="https://huggingface.co/XLabs-AI/x/resolve/main/l.safetensors"
    )
    return [Manifest(workflow="w", source="w.json", format="api", models=[ref])]


def test_nested_folder_is_accepted_and_escapes_are_not() -> None:
    assert needed_models(manifest("xlabs/loras"))[0].folder == "xlabs/loras"
    assert needed_models(manifest("ultralytics/bbox"))[0].folder == "ultralytics/bbox"
    for bad in (
        "../loras",
        "/etc",
        "xlabs/../../etc",
        "xlabs//loras",
        "xlabs/.hidden",
        "xlabs/",
        "a/b/c/d/e",
        "xlabs/lo$(id)ras",
        "xlabs\\loras",
    ):
        with pytest.raises(BadInput, match="invalid models folder"):
            needed_models(manifest(bad))


def test_symlink_inside_models_cannot_carry_a_nested_folder_outside(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    up.add_file(LORA, 4096)
    outside = tmp_path / "outside"
    (outside / "loras").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    os.symlink(outside, tmp_path / "models" / "xlabs")
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "models_dir": str(tmp_path / "models"),
                "staging_dir": str(tmp_path / "staging"),
                "items": [
                    {
                        "filename": LORA,
                        "folder": "xlabs/loras",
                        "sha256": None,
                        "url": f"{up.files_url}/files/{LORA}",
                    }
                ],
            }
        )
    )
    out = subprocess.run(
        [sys.executable, str(FETCH), "--plan", str(plan)], capture_output=True, text=True, timeout=60
    )
    row = json.loads(out.stdout.split("RESULT ", 1)[1])[0]
    assert out.returncode == 1 and "would land outside" in row["error"]
    assert list((outside / "loras").iterdir()) == []


@pytest.fixture
def local(tmp_path: Path, upstreams_factory: Upstreams, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    up = upstreams_factory
    stored = up.add_hf("XLabs-AI/flux-RealismLora", "lora.safetensors", 300_000)
    up.start_process()
    wf = tmp_path / "workflows"
    wf.mkdir()
    (wf / "flux.json").write_text(json.dumps(WORKFLOW))
    url = up.hf_resolve_url("XLabs-AI/flux-RealismLora", "lora.safetensors")
    # Only the URL is given: the folder comes from analysis.
    (wf / "overrides.yaml").write_text(yaml.safe_dump({"models": {LORA: {"url": url}}}))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    data = {
        "workflow": str(wf / "flux.json"),
        "workflows_dir": str(wf),
        "data_root": str(tmp_path / "data"),
        "hf_endpoint": up.hf_url,
    }
    return {"up": up, "data": data, "wf": wf, "root": tmp_path / "data", "sha256": stored.sha256}


def test_analyze_lock_and_tier3_place_a_nested_folder(local: dict[str, Any]) -> None:
    wf, root = local["wf"], local["root"]
    cli = Path(sys.executable).parent / "comfyfleet"
    proc = subprocess.run(
        [str(cli), "analyze", str(wf), "--out", str(wf / "comfyfleet.lock.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lock = yaml.safe_load((wf / "comfyfleet.lock.yaml").read_text())
    folders = {m["filename"]: m["folder"] for m in lock["lock"]["models"]}
    assert folders[LORA] == "xlabs/loras", proc.stdout + proc.stderr
    host = run("@local", "download-models", local["data"]).hosts[0]
    rows = {r[0]: r[1] for r in host.report.sections["models"].rows}
    assert rows[f"xlabs/loras/{LORA}"] == "downloaded", rows
    assert (root / "models/xlabs/loras" / LORA).is_file()
    recorded = yaml.safe_load((wf / "comfyfleet.lock.yaml").read_text())
    assert {m["filename"]: m["sha256"] for m in recorded["lock"]["models"]}[LORA] == local["sha256"]
    # The file is referenced: neither organize nor cleanup treat it as stray.
    listed = run("@local", "cleanup-models", local["data"]).hosts[0]
    section = listed.report.sections.get("unreferenced models")
    files = {r[0] for r in section.rows} if section else set()
    assert f"xlabs/loras/{LORA}" not in files and not any(f.startswith("xlabs/") for f in files)
    assert run("@local", "organize-models", local["data"]).hosts[0].status == "no change"
