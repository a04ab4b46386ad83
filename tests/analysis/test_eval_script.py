"""scripts/eval_analysis.py on a tiny fetched-repo folder: truth from metadata, PNG workflows, exit 0."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from analysis.helpers import ui_node, ui_workflow

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "eval_analysis.py"


def _png_with_text(**texts: str) -> bytes:
    """A 1x1 PNG carrying tEXt chunks, the way ComfyUI embeds workflow and prompt in its images."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + b"".join(chunk(b"tEXt", key.encode() + b"\0" + text.encode()) for key, text in texts.items())
        + chunk(b"IDAT", zlib.compress(b"\0\0"))
        + chunk(b"IEND", b"")
    )


def test_eval_script_scores_metadata_truth_from_json_and_png(tmp_path: Path) -> None:
    repo = tmp_path / "someone+example-workflows"
    repo.mkdir()
    ckpt = ui_node(
        1,
        "CheckpointLoaderSimple",
        ["sd15.safetensors"],
        props={"cnr_id": "comfy-core", "models": [{"name": "sd15.safetensors", "directory": "checkpoints"}]},
    )
    combine = ui_node(2, "VHS_VideoCombine", [], props={"cnr_id": "comfyui-videohelpersuite", "ver": "1.7.9"})
    (repo / "video.json").write_text(json.dumps(ui_workflow(ckpt, combine)))
    upscale = ui_node(3, "UpscaleModelLoader", ["4x_foo.pth"], props={"cnr_id": "comfy-core"})
    loader = ui_node(4, "VHS_LoadVideo", [], props={"aux_id": "Kosinkadink/ComfyUI-VideoHelperSuite"})
    prompt = {
        "3": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x_foo.pth"}},
        "4": {"class_type": "VHS_LoadVideo", "inputs": {"video": "clip.mp4"}, "_meta": {"title": "Load"}},
    }
    png = _png_with_text(workflow=json.dumps(ui_workflow(upscale, loader)), prompt=json.dumps(prompt))
    (repo / "example.png").write_bytes(png)
    (repo / "not_a_workflow.json").write_text('{"name": "package.json lookalike"}')

    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--mirror", str(tmp_path), "--misses", "5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "2 distinct UI workflows, 2 with metadata to score; 1 real API exports, 1 scored" in done.stdout
    all_ui = next(line for line in done.stdout.splitlines() if line.startswith("all ui"))
    # One pack per workflow, named by registry id in one and by aux_id in the other.
    assert "pack recall 1.000 (2/2)" in all_ui and "precision 1.000 (2/2)" in all_ui
    assert "model folder 1.000 (1/1)" in all_ui
    # The PNG's API prompt is scored against its UI twin's metadata.
    real_api = next(line for line in done.stdout.splitlines() if line.startswith("all real-api"))
    assert "pack recall 1.000 (1/1)" in real_api and "precision 1.000 (1/1)" in real_api


def test_eval_script_without_data_says_so_and_exits_0(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--mirror", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "no mirror directory" in done.stdout
