"""The real comfyui-api service in front of the ComfyUI stand-in, both as processes on loopback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from comfyfleet.devkit.standin import Standin, free_port, stop_process

TESTS = Path(__file__).resolve().parents[1]

ROOT = TESTS.parent
EXAMPLE_MODELS = {
    "checkpoints": ["v1-5-pruned-emaonly-fp16.safetensors"],
    "loras": ["Hyper-SD15-8steps-CFG-lora.safetensors"],
    "upscale_models": ["RealESRGAN_x4plus.safetensors"],
}
# The one class the examples take from a node pack (ComfyUI-KJNodes), in the stand-in's terms.
KJNODES_STANDIN = """
class GetImageSizeAndCount:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE", "INT", "INT", "INT")
    RETURN_NAMES = ("image", "width", "height", "count")
    FUNCTION = "run"
    CATEGORY = "KJNodes"

    def run(self, image):
        return (image, 64, 64, 1)


NODE_CLASS_MAPPINGS = {"GetImageSizeAndCount": GetImageSizeAndCount}
"""


class RealApi:
    """ComfyUI stand-in + comfyui-api serving a copy of workflows/ (plus extra workflow files)."""

    def __init__(self, root: Path, extra_workflows: dict[str, str] | None = None) -> None:
        self.root = root
        self.workflows = root / "workflows"
        self.workflows.mkdir(parents=True)
        for f in (ROOT / "workflows").glob("*.json"):
            shutil.copy(f, self.workflows)
        for name, text in (extra_workflows or {}).items():
            (self.workflows / name).write_text(text)
        self.comfy = Standin(root / "comfyui")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RealApi:
        self.comfy.add_custom_node("ComfyUI-KJNodes", KJNODES_STANDIN)
        self.comfy.start()
        for folder, names in EXAMPLE_MODELS.items():
            for name in names:
                (self.comfy.models(folder) / name).write_bytes(b"\0" * 64)
        log = (self.root / "api.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "comfyui_api",
                "--comfyui-url",
                self.comfy.url,
                "--workflows",
                str(self.workflows),
                "--port",
                str(self.port),
                "--db",
                str(self.root / "api.sqlite3"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"comfyui-api did not start: {(self.root / 'api.log').read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.comfy.stop()
