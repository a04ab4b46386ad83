"""What a ship on the test fleet needs: upstreams for the example workflows and a bootstrapped host.

Used by the fleet tests of ship and by scripts/bench_ship.py. The example workflows in
workflows/ name models on huggingface.co and the ComfyUI-KJNodes pack on github.com; here
the host gets them from local stand-ins (an HF-compatible server through ``hf_endpoint``,
a bare git repo through ``git_mirrors``), exactly the way it would reach the real ones.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from comfyfleet.devkit import REPO as ROOT
from comfyfleet.devkit.fleet import Fleet, Host
from comfyfleet.devkit.models import compact_upscaler_safetensors
from comfyfleet.devkit.upstreams.model_servers import Upstreams
from comfyfleet.runner import run

MODEL_BYTES = 256 * 1024  # small: the ship's own time is measured, not the transfer
KJNODES_BODY = """
CATEGORY = "KJNodes/image"
RETURN_TYPES = ("IMAGE", "INT", "INT", "INT")
RETURN_NAMES = ("image", "width", "height", "count")
FUNCTION = "run"

@classmethod
def INPUT_TYPES(cls):
    return {"required": {"image": ("IMAGE",)}}

def run(self, image):
    return (image, 64, 64, 1)
"""
# A node class whose import ends the ComfyUI process: it then cannot start at all.
CRASHING_BODY = """
raise SystemExit("ComfyUI-Crashing: exits the process on import, on purpose")
"""


# Example workflows that cannot generate on a real ComfyUI here, and why.
REAL_COMFYUI_SKIPS = {
    "txt2img": "needs the Stable Diffusion 1.5 checkpoint weights (about 2 GB; Hugging Face is unreachable "
    "here, and ComfyUI only recognises SD1.5 at full size); the stand-in accepts placeholder bytes",
    "lora_txt2img": "needs the Stable Diffusion 1.5 checkpoint weights (about 2 GB; Hugging Face is "
    "unreachable here); the stand-in accepts placeholder bytes",
}


def cpu_examples() -> list[str]:
    """The example workflows a real ComfyUI runs here on CPU with the local upstreams (the sandbox's set)."""
    return sorted(p.stem for p in (ROOT / "workflows").glob("*.json") if p.stem not in REAL_COMFYUI_SKIPS)


class ShipFleet:
    """Upstreams for the example workflows plus helpers to make hosts ready for a ship."""

    def __init__(
        self,
        fleet: Fleet,
        root: Path,
        model_bytes: int = MODEL_BYTES,
        examples: Sequence[str] | None = None,
    ) -> None:
        """``model_bytes``: size of each placeholder file (SD1.5 checkpoint, LoRA); ``examples``: the
        workflows/ files (by name) the hosts serve, default all of them."""
        self.fleet = fleet
        self.examples = examples
        self.model_bytes = model_bytes
        self.root = root
        self.workflows = root / "workflows"
        self.up = Upstreams(root / "upstream")

    def start(self) -> ShipFleet:
        self.artifact = self.root / "dist" / "comfyui-api.pyz"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "build-binary"), "--out", str(self.artifact)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        # The operator's API key: installed on the hosts by update-binary, read by ship.
        self.api_keys = self.root / "api-keys"
        self.api_keys.write_text(secrets.token_urlsafe(32) + "\n")
        self.api_keys.chmod(0o600)
        self.workflows.mkdir(parents=True, exist_ok=True)
        for f in (ROOT / "workflows").iterdir():
            if f.suffix == ".yaml" or (
                f.suffix == ".json" and (self.examples is None or f.stem in self.examples)
            ):
                shutil.copy(f, self.workflows / f.name)
        # Placeholder bytes for the SD1.5 checkpoint and LoRA (the stand-in does not load them;
        # a real ComfyUI needs the 2 GB weights, see REAL_COMFYUI_SKIPS); the upscale model is
        # a real tiny x4 RealESRGAN-Compact network that real ComfyUI loads and runs on CPU.
        for repo, filename, data in (
            (
                "Comfy-Org/stable-diffusion-v1-5-archive",
                "v1-5-pruned-emaonly-fp16.safetensors",
                self.model_bytes,
            ),
            ("ByteDance/Hyper-SD", "Hyper-SD15-8steps-CFG-lora.safetensors", self.model_bytes),
            (
                "Comfy-Org/Real-ESRGAN_repackaged",
                "RealESRGAN_x4plus.safetensors",
                compact_upscaler_safetensors(4, scale=4),
            ),
        ):
            self.up.add_hf(repo, filename, data)
        # A child process, not threads: loading an inventory file imports pyinfra's CLI
        # module, which monkey-patches threading with gevent in this process.
        self.up.start_process()
        # Test modules share one fleet session, and the pack is the same for each ShipFleet.
        if not self.fleet.upstreams.has("kijai/ComfyUI-KJNodes.git"):
            self.fleet.make_node_pack_repo(
                "ComfyUI-KJNodes",
                classes={"GetImageSizeAndCount": KJNODES_BODY},
                owner="kijai",
                versions=("1.1.7",),
            )
        return self

    def stop(self) -> None:
        self.up.stop()

    def host_data(self) -> dict[str, Any]:
        """Group data every host of a ship test gets (where its upstreams are)."""
        return {
            "workflows_dir": str(self.workflows),
            "hf_endpoint": self.up.hf_url,
            "git_mirrors": {"https://github.com/": f"{self.fleet.upstreams.base_url}/"},
            "api_binary": str(self.artifact),
            "api_keys_file": str(self.api_keys),
        }

    def inventory(self, hosts: list[Host], path: Path, **extra: Any) -> Path:
        """An inventory of the hosts with the ship data (group ``fleet``)."""
        return self.fleet.write_inventory(hosts, path, **{**self.host_data(), **extra})

    def bootstrap(self, inventory: Path) -> float:
        """Provision hosts as an operator would before their first ship; returns seconds."""

        started = time.monotonic()
        result = run(str(inventory), "bootstrap")
        bad = [f"{h.host}: {h.status} {h.reason}" for h in result.hosts if not h.ok]
        if bad:
            raise RuntimeError("bootstrap failed: " + "; ".join(bad))
        return time.monotonic() - started

    def add_workflow(self, name: str, graph: str, overrides: str | None = None) -> Path:
        """A workflow file in the ship's workflows folder (and extra overrides lines)."""
        path = self.workflows / f"{name}.json"
        path.write_text(graph)
        if overrides:
            with (self.workflows / "overrides.yaml").open("a") as f:
                f.write("\n" + overrides)
        return path
