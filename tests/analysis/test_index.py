"""The offline index: the shipped file, and `comfyfleet index refresh` from wheels and a source tree."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

from analysis.helpers import MANAGER, TEMPLATE
from comfyfleet.analysis import analyze_data
from comfyfleet.analysis.index import default_index, load_index


def test_shipped_index_records_sources_and_knows_core_and_packs() -> None:
    index = default_index()
    assert index.sources["comfyui-manager"] and index.sources["comfyui-workflow-templates-json"]
    assert index.sources["comfyui_source"]["from"].startswith("ComfyUI ")
    for core in ("KSampler", "CheckpointLoaderSimple", "SaveImage", "UNETLoader", "LoadImage"):
        assert index.is_core(core)
    assert not index.is_core("VHS_VideoCombine")
    assert [index.packs[i].repo for i in index.packs_listing("VHS_VideoCombine")] == [
        "https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite"
    ]
    assert index.input_folders["CheckpointLoaderSimple"] == {"ckpt_name": "checkpoints"}


def _wheel(path: Path, files: dict[str, object]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, json.dumps(data))


def _fake_comfyui(root: Path) -> Path:
    """A minimal tree shaped like ComfyUI's, written here (no ComfyUI code)."""
    (root / "comfy_extras").mkdir(parents=True)
    (root / "comfy_api_nodes").mkdir()
    (root / "comfyui_version.py").write_text('__version__ = "9.9.9"\n')
    (root / "nodes.py").write_text(
        textwrap.dedent(
            """
            import folder_paths

            class ThingLoader:
                @classmethod
                def INPUT_TYPES(cls):
                    return {"required": {"thing_name": (folder_paths.get_filename_list("loras"),)}}

            NODE_CLASS_MAPPINGS = {"ThingLoader": ThingLoader}
            """
        )
    )
    (root / "comfy_extras" / "nodes_new.py").write_text(
        textwrap.dedent(
            """
            import folder_paths
            from comfy_api.latest import io

            class NewStyle(io.ComfyNode):
                @classmethod
                def define_schema(cls):
                    return io.Schema(
                        node_id="NewStyleUpscaleLoader",
                        inputs=[io.Combo.Input("model_name", options=folder_paths.get_filename_list("upscale_models"))],
                    )
            """
        )
    )
    (root / "comfy_api_nodes" / "nodes_api.py").write_text('X = dict(node_id="SomeApiNode")\n')
    return root


def refresh(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfyfleet.cli.main", "index", "refresh", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_refresh_from_wheels_and_source_tree(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(
        wheels / "comfyui_manager-9.1-py3-none-any.whl",
        {f"comfyui_manager/{k}": v for k, v in MANAGER.items()},
    )
    _wheel(
        wheels / "comfyui_workflow_templates_json-0.0.7-py3-none-any.whl",
        {
            "comfyui_workflow_templates_json/templates/t.json": TEMPLATE,
            "comfyui_workflow_templates_json/templates/index.json": [],
        },
    )
    out = tmp_path / "index.json.gz"
    proc = refresh("--wheel-dir", wheels, "--out", out, "--comfyui-src", _fake_comfyui(tmp_path / "ComfyUI"))
    assert proc.returncode == 0, proc.stderr
    index = load_index(out)
    assert index.sources["comfyui-manager"] == "9.1"
    assert index.sources["comfyui-workflow-templates-json"] == "0.0.7"
    assert index.sources["comfyui_source"]["from"].startswith("ComfyUI 9.9.9")
    # Core: from the source tree, the Manager's ComfyUI entry, and the templates' comfy-core nodes.
    for core in ("ThingLoader", "NewStyleUpscaleLoader", "SomeApiNode", "KSampler", "CoreOnlyInTemplates"):
        assert index.is_core(core), core
    assert index.input_folders["ThingLoader"] == {"thing_name": "loras"}
    assert index.input_folders["NewStyleUpscaleLoader"] == {"model_name": "upscale_models"}
    manifest = analyze_data(
        {"1": {"class_type": "ThingLoader", "inputs": {"thing_name": "t.safetensors"}}},
        "wf",
        "wf",
        index=index,
    )
    assert [(m.folder, m.source) for m in manifest.models] == [("loras", "class_input")]

    # Without a source tree, what the last index learned from one is carried over.
    proc = refresh("--wheel-dir", wheels, "--out", out)
    assert proc.returncode == 0, proc.stderr
    again = load_index(out)
    assert again.is_core("ThingLoader") and again.sources["comfyui_source"] == index.sources["comfyui_source"]


def test_refresh_with_bad_source_is_one_line_exit_2(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    proc = refresh("--wheel-dir", wheels, "--out", tmp_path / "i.json.gz")
    assert proc.returncode == 2
    assert (
        proc.stderr.startswith("error: index refresh failed") and len(proc.stderr.strip().splitlines()) == 1
    )
    assert not (tmp_path / "i.json.gz").exists()
