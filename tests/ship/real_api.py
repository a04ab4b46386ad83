"""The real comfyui-api service in front of the ComfyUI stand-in, both as processes on loopback."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from comfyfleet.devkit.api_process import ApiProcess
from comfyfleet.devkit.standin import Standin

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
        self.api: ApiProcess | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RealApi:
        self.comfy.add_custom_node("ComfyUI-KJNodes", KJNODES_STANDIN)
        self.comfy.start()
        for folder, names in EXAMPLE_MODELS.items():
            for name in names:
                (self.comfy.models(folder) / name).write_bytes(b"\0" * 64)
        args = ["--comfyui-url", self.comfy.url, "--workflows", str(self.workflows)]
        self.api = ApiProcess([*args, "--db", str(self.root / "api.sqlite3")], self.root / "api.log")
        self.port = self.api.port
        self.api.start(lambda url: httpx.get(f"{url}/health", timeout=1).status_code == 200, timeout=30)
        return self

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        self.comfy.stop()
