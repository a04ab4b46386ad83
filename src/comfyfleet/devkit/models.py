"""Real, tiny model files for tests and the sandbox (no torch needed to write them)."""

from __future__ import annotations

import json
from typing import Any


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
