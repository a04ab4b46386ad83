"""`comfyfleet analyze` as a user runs it: real subprocess, exit codes, stdout/stderr, files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO_ROOT / "workflows"


def run(*args: str | Path, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfyfleet.cli.main", "analyze", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        # Wide enough that rich never folds a name across lines.
        env={**os.environ, "COLUMNS": "250"},
    )


def test_table_for_the_shipped_workflows_writes_nothing(tmp_path: Path) -> None:
    before = sorted(p.name for p in WORKFLOWS.iterdir())
    proc = run(WORKFLOWS)
    assert proc.returncode == 0, proc.stderr
    for name in ("txt2img", "upscale", "lora_txt2img", "comfyui-kjnodes", "RealESRGAN_x4plus", "bypassed"):
        assert name in proc.stdout
    assert proc.stderr == ""
    assert sorted(p.name for p in WORKFLOWS.iterdir()) == before


def test_single_file_json_is_its_manifest() -> None:
    proc = run(WORKFLOWS / "upscale.json", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["workflow"] == "upscale" and manifest["format"] == "ui"
    assert [(p["repo"], p["version"], p["provides"]) for p in manifest["custom_nodes"]] == [
        ("https://github.com/kijai/ComfyUI-KJNodes", "1.1.7", ["GetImageSizeAndCount"])
    ]
    assert [(m["filename"], m["folder"]) for m in manifest["models"]] == [
        ("RealESRGAN_x4plus.safetensors", "upscale_models")
    ]
    assert manifest["unresolved"] == {"nodes": [], "models": []}


def test_directory_yaml_out_file_holds_lock_and_manifests(tmp_path: Path) -> None:
    out = tmp_path / "deps" / "lock.yaml"
    proc = run(WORKFLOWS, "--format", "yaml", "--out", out)
    assert proc.returncode == 0, proc.stderr
    written = yaml.safe_load(out.read_text())
    assert written == yaml.safe_load(proc.stdout)
    assert set(written["manifests"]) >= {"txt2img", "upscale", "lora_txt2img"}
    assert set(written["lock"]["workflows"]) == set(written["manifests"])
    assert {m["folder"] for m in written["lock"]["models"]} >= {"checkpoints", "loras", "upscale_models"}


def test_bad_file_exit_2_after_analyzing_the_rest(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[]")
    (tmp_path / "good.json").write_text((WORKFLOWS / "txt2img.json").read_text())
    proc = run(tmp_path, "--format", "json")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'bad.json'}: top-level JSON is a list, not a workflow object"
    ]
    assert "Traceback" not in proc.stderr
    assert list(json.loads(proc.stdout)["manifests"]) == ["good"]


def test_strict_fails_on_unresolved_and_passes_when_resolved(tmp_path: Path) -> None:
    (tmp_path / "wf.json").write_text(
        json.dumps({"1": {"class_type": "NoSuchNodeAnywhere_42", "inputs": {}}})
    )
    assert run(tmp_path / "wf.json").returncode == 0
    strict = run(tmp_path / "wf.json", "--strict")
    assert strict.returncode == 1
    assert "NoSuchNodeAnywhere_42" in strict.stdout and "--strict" in strict.stderr
    assert run(WORKFLOWS, "--strict").returncode == 0


def test_missing_path_is_bad_input() -> None:
    proc = run("/nonexistent/flow.json")
    assert proc.returncode == 2 and proc.stderr.startswith("error: /nonexistent/flow.json: no such file")
