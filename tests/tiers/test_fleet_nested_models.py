"""A nested model folder on a real SSH host: analyze -> lock -> deploy-all -> ComfyUI lists the file.

The node pack does what XLabs' x-flux-comfyui does at import (nodes.py, lines 42-59):
``folder_paths.folder_names_and_paths["xlabs_loras"] = ([<models_dir>/xlabs/loras], ...)``
and lists ``get_filename_list("xlabs_loras")`` as FluxLoraLoader's choices. ComfyUI 0.8.0
(server.py ``/models/{folder}``, folder_paths ``models_dir = <base>/models``) then lists the
file under ``/models/xlabs_loras``; a folder name with ``/`` is never a route, and core's own
``loras`` does not see ``models/xlabs/loras``. So the layout is the contract: no
extra_model_paths.yaml entry is needed (the pack registers the name itself).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from comfyfleet.devkit.fleet import Fleet, Host
from comfyfleet.devkit.upstreams.model_servers import Upstreams
from comfyfleet.runner import run

pytestmark = pytest.mark.fleet
LORA = "flux_realism_lora.safetensors"
PACK_BODY = """
import os as _os
import folder_paths as _fp
_fp.folder_names_and_paths["xlabs_loras"] = ([_os.path.join(_fp.models_dir, "xlabs", "loras")], _fp.supported_pt_extensions)
CATEGORY = "comfyfleet/test"
RETURN_TYPES = ("STRING",)
FUNCTION = "run"

@classmethod
def INPUT_TYPES(cls):
    import folder_paths
    return {"required": {"lora_name": (folder_paths.get_filename_list("xlabs_loras"),)}}

def run(self, lora_name):
    return (lora_name,)
"""


def test_nested_folder_model_is_listed_by_comfyui_on_the_host(
    fleet: Fleet, fleet_hosts: dict[str, Host], write_inventory: Callable[..., Path], tmp_path: Path
) -> None:
    host = fleet_hosts["lambda1"]
    up = Upstreams(tmp_path / "models")
    stored = up.add_hf("XLabs-AI/flux-RealismLora", "lora.safetensors", 200_000)
    up.start_process()
    try:
        fleet.make_node_pack_repo("XFluxLike", classes={"FluxLoraLoader": PACK_BODY})
        wf = tmp_path / "workflows"
        wf.mkdir()
        (wf / "flux.json").write_text(
            json.dumps({"1": {"class_type": "FluxLoraLoader", "inputs": {"lora_name": LORA}}})
        )
        (wf / "overrides.yaml").write_text(
            yaml.safe_dump(
                {
                    "nodes": {"FluxLoraLoader": {"repo": "https://github.com/testorg/XFluxLike"}},
                    "models": {
                        LORA: {"url": up.hf_resolve_url("XLabs-AI/flux-RealismLora", "lora.safetensors")}
                    },
                }
            )
        )
        lock = wf / "comfyfleet.lock.yaml"
        cli = Path(sys.executable).parent / "comfyfleet"
        subprocess.run(
            [str(cli), "analyze", str(wf), "--out", str(lock)], check=True, capture_output=True, timeout=120
        )
        assert {m["filename"]: m["folder"] for m in yaml.safe_load(lock.read_text())["lock"]["models"]}[
            LORA
        ] == "xlabs/loras"
        inv = write_inventory([host], tmp_path / "inventory.py")
        data = {
            "workflows_dir": str(wf),
            "hf_endpoint": up.hf_url,
            "deploy_api": False,
            "git_mirrors": {"https://github.com/": f"{fleet.upstreams.base_url}/"},
        }
        result = run(str(inv), "deploy-all", data)
        h = result.hosts[0]
        assert h.status == "changed", h.reason
        assert {r[0]: r[1] for r in h.report.sections["models"].rows} == {f"xlabs/loras/{LORA}": "downloaded"}
        assert (
            host.exec(f"sha256sum {host.data_root}/models/xlabs/loras/{LORA}").stdout.split()[0]
            == stored.sha256
        )
        base = f"http://127.0.0.1:{host.comfyui_port}"
        assert httpx.get(f"{base}/models/xlabs_loras", timeout=30).json() == [LORA]
        info = httpx.get(f"{base}/object_info/FluxLoraLoader", timeout=30).json()
        assert info["FluxLoraLoader"]["input"]["required"]["lora_name"][0] == [LORA]
        assert LORA not in httpx.get(f"{base}/models/loras", timeout=30).json()  # core's loras: not there
        recorded = {m["filename"]: m["sha256"] for m in yaml.safe_load(lock.read_text())["lock"]["models"]}
        assert recorded[LORA] == stored.sha256
    finally:
        up.stop()
