"""Fixtures: a ComfyUI (the stand-in, or a real one from COMFYFLEET_TEST_COMFYUI_URL) and API processes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from comfyfleet.devkit.api_process import ApiProcess
from comfyfleet.devkit.standin import WEBSOCKET_IMAGE_SAVE, Standin, free_port  # noqa: F401 - tests import free_port from here

ROOT = Path(__file__).resolve().parents[2]

REAL_COMFYUI = os.environ.get("COMFYFLEET_TEST_COMFYUI_URL", "").rstrip("/")
needs_standin = pytest.mark.skipif(bool(REAL_COMFYUI), reason="controls the ComfyUI process (stand-in only)")

TINY = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x336699},
        "_meta": {"title": "canvas"},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tiny"}},
}
EXAMPLES = ("txt2img.json", "lora_txt2img.json", "upscale.json")
INVERT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}},
}


KJNODES = """
class GetImageSizeAndCount:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}
    RETURN_TYPES = ("IMAGE", "INT", "INT", "INT")
    RETURN_NAMES = ("image", "width", "height", "count")
    FUNCTION = "getsize"
    CATEGORY = "KJNodes/image"
    def getsize(self, image):
        return (image, image[0].width, image[0].height, len(image))

NODE_CLASS_MAPPINGS = {"GetImageSizeAndCount": GetImageSizeAndCount}
"""


class Comfy:
    """Where the tests' ComfyUI answers, and (stand-in only) the process to restart."""

    def __init__(self, url: str, standin: Standin | None) -> None:
        self.url = url
        self.standin = standin

    @property
    def output_dir(self) -> Path | None:
        return self.standin.base_dir / "output" if self.standin else None


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Comfy]:
    if REAL_COMFYUI:
        yield Comfy(REAL_COMFYUI, None)
        return
    s = Standin(tmp_path_factory.mktemp("comfy"))
    # What the example workflows in workflows/ need: their models and KJNodes' GetImageSizeAndCount.
    (s.models("checkpoints") / "v1-5-pruned-emaonly-fp16.safetensors").write_bytes(b"weights")
    (s.models("loras") / "Hyper-SD15-8steps-CFG-lora.safetensors").write_bytes(b"weights")
    (s.models("upscale_models") / "RealESRGAN_x4plus.safetensors").write_bytes(b"weights")
    s.add_custom_node("ComfyUI-KJNodes", KJNODES)
    s.add_custom_node("websocket_image_save", WEBSOCKET_IMAGE_SAVE)
    with s:
        yield Comfy(s.url, s)


@pytest.fixture()
def slow_comfy(tmp_path: Path) -> Iterator[Comfy]:
    """A stand-in whose every node takes 0.4 s, so jobs stay queued/running while a test acts."""
    if REAL_COMFYUI:
        pytest.skip("needs the stand-in's per-node delay")
    s = Standin(tmp_path / "slow-comfy", env={"COMFYUI_STANDIN_NODE_DELAY": "0.4"})
    with s:
        yield Comfy(s.url, s)


def write_workflows(directory: Path, files: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (directory / name).write_text(text)
    return directory


class Api(ApiProcess):
    """One comfyui-api process (python -m comfyui_api, or a .pyz) on a free loopback port."""

    def __init__(
        self,
        comfy_url: str,
        workflows: Path,
        db: Path,
        extra: list[str] | None = None,
        python: str | None = None,
        pyz: Path | None = None,
        host: str = "127.0.0.1",
        open_outbound: bool = True,
    ) -> None:
        args = ["--comfyui-url", comfy_url, "--workflows", str(workflows), "--host", host]
        args += ["--db", str(db), "--webhook-backoff", "0.1", *(extra or [])]
        if open_outbound:
            # These tests' image servers and webhook receivers live on loopback; tests/security keeps it closed.
            args += ["--allow-outbound", "127.0.0.0/8"]
        super().__init__(args, db.with_suffix(".log"), python=python, pyz=pyz)
        self.wait_workflows = True

    def start(self, wait_workflows: bool = True) -> Api:  # type: ignore[override]
        self.wait_workflows = wait_workflows
        super().start(self._started)
        return self

    def _started(self, url: str) -> bool:
        h = httpx.get(url + "/health", timeout=1).json()
        if not self.wait_workflows:
            return True
        if "comfyui" in h:
            return bool(h["workflows"] or h["comfyui"]["reachable"])
        # Keys required: /health is minimal without one, /ready says whether workflows loaded.
        return bool(httpx.get(url + "/ready", timeout=1).json().get("ready"))

    def __enter__(self) -> Api:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def workflows_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("workflows")
    repo = ROOT / "workflows"
    files: dict[str, object] = {"tiny.json": TINY, "invert.json": INVERT}
    for name in EXAMPLES:
        if (repo / name).exists():
            files[name] = (repo / name).read_text()
    return write_workflows(d, files)


@pytest.fixture(scope="session")
def api(comfy: Comfy, workflows_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The shared API: loopback, no keys, outputs read through ComfyUI's /view."""
    db = tmp_path_factory.mktemp("api") / "api.sqlite3"
    with Api(comfy.url, workflows_dir, db, ["--rate-limit", "100000", "--rate-burst", "10000"]) as a:
        yield a


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")
