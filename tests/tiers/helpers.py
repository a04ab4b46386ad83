"""Helpers of the tier tests: paths of the host-side scripts and how to run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
HOSTSIDE = TESTS.parent / "src" / "comfyfleet" / "hostside"
FETCH = HOSTSIDE / "fetch_models.py"
INSTALL_NODES = HOSTSIDE / "install_nodes.py"


def write_plan(path: Path, plan: dict[str, Any]) -> Path:
    path.write_text(json.dumps(plan))
    return path


def run_fetch(
    plan_path: Path, secrets: dict[str, str] | None = None, env: dict[str, str] | None = None, *args: str
) -> tuple[int, str, str, list[dict[str, Any]]]:
    """Run the host-side downloader as a host would; returns rc, stdout, stderr, RESULT rows."""
    argv = [sys.executable, str(FETCH), "--plan", str(plan_path), *args]
    if secrets is not None:
        argv.append("--secrets-stdin")
    proc = subprocess.run(
        argv, input=json.dumps(secrets or {}), capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )
    rows: list[dict[str, Any]] = []
    for line in proc.stdout.splitlines():
        if line.startswith(("RESULT ", "CHECK ")):
            rows = json.loads(line.split(" ", 1)[1])
    return proc.returncode, proc.stdout, proc.stderr, rows


def compact_upscaler_safetensors(seed: int, num_feat: int = 8, scale: int = 2) -> bytes:
    """A real RealESRGAN-Compact (SRVGGNetCompact) x``scale`` upscale model as .safetensors bytes.

    Written without torch (the default suite has none) in the safetensors layout, with the
    state-dict keys of the published realesr-general models, so real ComfyUI's
    UpscaleModelLoader loads it through spandrel and ImageUpscaleWithModel runs it on CPU.
    """
    import random
    import struct

    rng = random.Random(seed)
    tensors: dict[str, tuple[list[int], list[float]]] = {}

    def conv(index: int, c_in: int, c_out: int) -> None:
        n = c_out * c_in * 9
        tensors[f"body.{index}.weight"] = ([c_out, c_in, 3, 3], [rng.uniform(-0.1, 0.1) for _ in range(n)])
        tensors[f"body.{index}.bias"] = ([c_out], [rng.uniform(-0.01, 0.01) for _ in range(c_out)])

    conv(0, 3, num_feat)
    tensors["body.1.weight"] = ([num_feat], [0.25] * num_feat)  # PReLU
    conv(2, num_feat, num_feat)
    tensors["body.3.weight"] = ([num_feat], [0.25] * num_feat)
    conv(4, num_feat, 3 * scale * scale)  # pixel shuffle: spandrel reads the scale from this
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for key, (shape, values) in tensors.items():
        blob = struct.pack(f"<{len(values)}f", *values)
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)
