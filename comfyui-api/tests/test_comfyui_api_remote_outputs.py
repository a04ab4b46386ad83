"""Outputs for an API without ComfyUI's output folder (a separate host, Modal volumes).

SaveImageWebsocket images arrive with the websocket frames (no /view, no file): against the
stand-in (which sends binary frames as ComfyUI 0.8.0 does) and, with
COMFYFLEET_TEST_COMFYUI_URL, against a real ComfyUI (its checkout ships the node). Files
SaveImage writes are fetched from /view as soon as their 'executed' frame names them.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import struct
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
from comfyui_api.comfy import ComfyClient
from conftest import ROOT, Api, Comfy, needs_standin, wait_for, write_workflows

from comfyfleet.devkit.standin import Standin

COLOUR = 0x3366CC


def graph(save: dict) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 2, "color": 0}},
        "2": save,
    }


WS = graph({"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}})
FILE = graph({"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "wsref"}})


def png_module() -> ModuleType:
    """The stand-in's stdlib PNG decoder (handles every PNG filter, so real ComfyUI's PNGs too)."""
    path = ROOT / "tests" / "standin" / "comfyui" / "standin_image.py"
    spec = importlib.util.spec_from_file_location("standin_image_for_tests", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_save_image_websocket_outputs_come_over_the_websocket(comfy: Comfy, tmp_path: Path) -> None:
    wf = write_workflows(tmp_path / "workflows", {"ws.json": WS, "file.json": FILE})
    png = png_module()
    with Api(comfy.url, wf, tmp_path / "api.sqlite3") as api:
        body = {"input": {"color": COLOUR}}
        ws = httpx.post(api.url + "/workflows/ws", json=body, timeout=60)
        ref = httpx.post(api.url + "/workflows/file", json=body, timeout=60)
        log = api.log()
    assert ws.status_code == 200, ws.text
    assert ref.status_code == 200, ref.text
    outs = ws.json()["outputs"]
    assert [(o["node"], o["type"], o["content_type"]) for o in outs] == [("2", "websocket", "image/png")] * 2
    assert len({o["filename"] for o in outs}) == 2  # one name per image of the batch
    pixels = [png.decode_png(base64.b64decode(o["base64"])) for o in outs]
    saved = [png.decode_png(base64.b64decode(o["base64"])) for o in ref.json()["outputs"]]
    # The same pixels as the file SaveImage wrote for the same graph: the requested colour.
    assert [(p.width, p.height, p.rgb) for p in pixels] == [(s.width, s.height, s.rgb) for s in saved]
    assert pixels[0].rgb[:3] == bytes((0x33, 0x66, 0xCC))
    assert "Traceback" not in log


def test_type_1_frames_belong_to_the_node_comfyui_says_it_executes() -> None:
    """Builds before feature flags send images without metadata: type 1, then format 2 (PNG)."""

    async def scenario() -> dict:
        client = ComfyClient("http://127.0.0.1:9")  # never connects: frames are fed by hand
        client.object_info = {
            "EmptyImage": {"output_node": False},
            "SaveImageWebsocket": {"output_node": True},
            "KSampler": {"output_node": False},
        }
        t = client.track({**WS, "3": {"class_type": "KSampler", "inputs": {}}})
        pid = t.prompt_id
        frames = [
            json.dumps({"type": "executing", "data": {"node": "3", "prompt_id": pid}}),
            struct.pack(">II", 1, 1) + b"a sampler preview",  # not an output node: dropped
            json.dumps({"type": "executing", "data": {"node": "2", "prompt_id": pid}}),
            struct.pack(">II", 1, 2) + b"\x89PNG first",
            struct.pack(">II", 1, 2) + b"\x89PNG second",
            json.dumps({"type": "execution_success", "data": {"prompt_id": pid}}),
        ]
        for frame in frames:
            if isinstance(frame, bytes):
                client._binary(frame)
            else:
                client._dispatch(json.loads(frame))
        status = await asyncio.wait_for(t.future, 1)
        names = [i["filename"] for i in t.outputs["2"]["images"]]
        await client.close()
        return {"status": status, "outputs": t.outputs, "held": [client.ws_file(n) for n in names]}

    got = asyncio.run(scenario())
    assert got["status"] == "success"  # finished at execution_success: no /history round trip
    assert list(got["outputs"]) == ["2"]
    assert got["held"] == [(b"\x89PNG first", "image/png"), (b"\x89PNG second", "image/png")]


@needs_standin
def test_files_are_fetched_while_comfyui_still_runs_the_prompt(tmp_path: Path) -> None:
    two_saves = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "b"}},
    }
    wf = write_workflows(tmp_path / "workflows", {"two.json": two_saves})
    standin = Standin(tmp_path / "comfy", env={"COMFYUI_STANDIN_NODE_DELAY": "2.0"})  # 2 s per node
    output = standin.base_dir / "output"
    with standin, Api(standin.url, wf, tmp_path / "api.sqlite3") as api:  # no --comfyui-output-dir
        job = httpx.post(api.url + "/workflows/two", json={"input": {}, "async": True}).json()["id"]
        first = wait_for(lambda: next(output.rglob("*.png"), None), timeout=30)
        # At least one node (2 s) is still to run. A second is the API's to fetch the file ...
        time.sleep(1.0)
        first.unlink()  # ... before it is gone from ComfyUI's disk.
        done = wait_for(
            lambda: (j := httpx.get(f"{api.url}/jobs/{job}").json())["status"] == "completed" and j,
            timeout=30,
        )
    shown = {o["filename"]: o for o in done["outputs"]}
    assert set(shown) == {first.name, next(output.rglob("*.png")).name}
    assert "expired" not in shown[first.name], "the file was only asked for after the prompt finished"
    assert base64.b64decode(shown[first.name]["base64"])[:8] == b"\x89PNG\r\n\x1a\n"
