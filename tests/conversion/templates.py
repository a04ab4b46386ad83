"""The official templates of ComfyUI 0.8.0 (comfyui-workflow-templates 0.7.67 and its media packages)
and the recorded /object_info of that ComfyUI: the corpus the conversion is measured on."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OBJECT_INFO = ROOT / "tests" / "data" / "comfyui-0.8.0" / "object_info.json.gz"
TEMPLATE_PACKAGES = (
    "comfyui_workflow_templates_media_api",
    "comfyui_workflow_templates_media_image",
    "comfyui_workflow_templates_media_other",
    "comfyui_workflow_templates_media_video",
)


def recorded_object_info() -> dict[str, Any]:
    """GET /object_info of a real ComfyUI 0.8.0 (source: the .source.json beside it)."""
    with gzip.open(OBJECT_INFO, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def template_files() -> list[Path]:
    """Every UI workflow of the installed template packages, by file name."""
    files: list[Path] = []
    for package in TEMPLATE_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise RuntimeError(
                f"{package} is not installed; run scripts/setup-dev.sh (it is a test dependency)"
            )
        folder = Path(spec.origin).parent / "templates"
        files += [p for p in folder.glob("*.json") if not p.name.startswith("index") and _is_workflow(p)]
    return sorted(files, key=lambda p: p.name)


def _is_workflow(path: Path) -> bool:
    # The packages also ship the search box's settings (fuse_options.json).
    data = json.loads(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and "nodes" in data


def repo_workflows() -> list[Path]:
    """The workflows shipped in this repository's workflows/ folder."""
    return sorted(
        p
        for p in (ROOT / "workflows").glob("*.json")
        if not p.name.endswith((".lock.json", ".manifest.json"))
    )
