"""Shared helpers of the Modal target tests: import a generated app, build manifests by hand."""

from __future__ import annotations

import importlib.util
import sys
import uuid
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from comfyfleet.manifest import Lock, Manifest, ModelRef, NodePack
from comfyfleet.modal_target.generate import AppInputs

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden" / "modal_app.py"


def import_app(path: Path) -> ModuleType:
    """Import a generated app file as a fresh module, as `modal deploy` does (offline: nothing is hydrated)."""
    name = f"generated_modal_app_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def app_layout(module: ModuleType) -> dict[str, Any]:
    """Functions, classes and web endpoints the module's modal.App registered."""
    with warnings.catch_warnings():
        # Deprecated in 1.6.4 (removed in 1.7); modal is pinned to 1.6.4.
        warnings.simplefilter("ignore")
        return {
            "functions": dict(module.app.registered_functions),
            "classes": dict(module.app.registered_classes),
            "web_endpoints": list(module.app.registered_web_endpoints),
        }


def workflow_file(tmp: Path, name: str = "wf") -> Path:
    """A minimal API-format workflow file (the generator only ships it)."""
    path = tmp / f"{name}.json"
    path.write_text('{"1": {"class_type": "EmptyImage", "inputs": {}}}')
    return path


def hand_inputs(
    tmp: Path, packs: list[NodePack] | None = None, models: list[ModelRef] | None = None, name: str = "wf"
) -> AppInputs:
    """AppInputs from a hand-built lock (what analysis would give), with one workflow file."""
    wf = workflow_file(tmp, name)
    lock = Lock(workflows={name: "0" * 64}, custom_nodes=packs or [], models=models or [])
    Manifest(workflow=name, source=str(wf), format="api")  # the same validation analysis output passes
    return AppInputs(lock=lock, workflow_files={f"{name}.json": wf})
