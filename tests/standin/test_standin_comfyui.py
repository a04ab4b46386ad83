"""The ComfyUI stand-in over real HTTP and websockets: the API shapes deployments rely on."""

from __future__ import annotations

import json
import struct
import time
import uuid
import zlib
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from comfyfleet.devkit.standin import Standin

GOOD_PACK = """
import os, folder_paths

class Shout:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "test"
    def run(self, text):
        path = os.path.join(folder_paths.get_output_directory(), "shout.txt")
        with open(path, "w") as f:
            f.write(text.upper())
        return {"ui": {"text": [text.upper()]}}

class Boom:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "test"
    def run(self, images):
        raise ValueError("boom from a custom node")

NODE_CLASS_MAPPINGS = {"Shout": Shout, "Boom": Boom}
"""

BROKEN_PACK = """
import definitely_not_a_module_xyz
class Never:
    pass
NODE_CLASS_MAPPINGS = {"NeverLoaded": Never}
"""


def tiny_graph(color: int, prefix: str = "t", size: int = 64) -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def sd_graph(ckpt: str = "model.safetensors", seed: int = 1, steps: int = 4) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "karras",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "sd"}},
    }


def png_size_and_first_pixel(data: bytes) -> tuple[int, int, tuple[int, int, int]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    raw = zlib.decompress(idat)
    return w, h, (raw[1], raw[2], raw[3])


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("comfy")
    s = Standin(base)
    (s.models("checkpoints") / "model.safetensors").write_bytes(b"weights")
    (s.models("checkpoints") / "notes.txt").write_text("not a model")
    (s.models("upscale_models") / "4x.pth").write_bytes(b"w")
    s.add_custom_node("good-pack", GOOD_PACK)
    s.add_custom_node("broken-pack", BROKEN_PACK)
    with s:
        yield s


def run_to_end(url: str, graph: dict, timeout: float = 10.0) -> tuple[str, list[dict]]:
    """Submit with a client id, collect ws frames until 'executing' null for our prompt."""
    cid = uuid.uuid4().hex
    frames: list[dict] = []
    with connect(url.replace("http", "ws") + f"/ws?clientId={cid}") as ws:
        frames.append(json.loads(ws.recv(timeout=5)))
        r = httpx.post(url + "/prompt", json={"prompt": graph, "client_id": cid})
        assert r.status_code == 200, r.text
        pid = r.json()["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = ws.recv(timeout=timeout)
            if isinstance(msg, bytes):
                continue
            f = json.loads(msg)
            frames.append(f)
            if f["type"] == "executing" and f["data"]["node"] is None and f["data"].get("prompt_id") == pid:
                return pid, frames
    raise AssertionError(f"no end frame: {frames}")


def test_system_stats_reports_version_file_and_api_prefix(comfy: Standin) -> None:
    version_file = (comfy.comfy_dir / "comfyui_version.py").read_text()
    for path in ("/system_stats", "/api/system_stats"):
        stats = httpx.get(comfy.url + path).json()
        assert f'"{stats["system"]["comfyui_version"]}"' in version_file
        assert stats["devices"][0]["type"] == "cpu"
        assert "--base-directory" in stats["system"]["argv"]


def test_object_info_lists_present_models_and_both_combo_spellings(comfy: Standin) -> None:
    info = httpx.get(comfy.url + "/object_info").json()
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["model.safetensors"]
    assert info["UpscaleModelLoader"]["input"]["required"]["model_name"] == [
        "COMBO",
        {"multiselect": False, "options": ["4x.pth"]},
    ]
    ks = info["KSampler"]
    assert "dpmpp_2m" in ks["input"]["required"]["sampler_name"][0]
    assert "karras" in ks["input"]["required"]["scheduler"][0]
    assert ks["input_order"]["required"][:3] == ["model", "seed", "steps"]
    assert info["SaveImage"]["output_node"] is True and info["KSampler"]["output_node"] is False
    assert info["SaveImage"]["python_module"] == "nodes"
    assert httpx.get(comfy.url + "/object_info/KSampler").json().keys() == {"KSampler"}
    assert httpx.get(comfy.url + "/api/object_info/NoSuchNode").json() == {}


def test_custom_nodes_load_and_failed_pack_is_logged_and_absent(comfy: Standin) -> None:
    info = httpx.get(comfy.url + "/object_info").json()
    assert info["Shout"]["python_module"] == "custom_nodes.good-pack"
    assert "NeverLoaded" not in info
    log = comfy.log()
    assert "IMPORT FAILED" in log and "broken-pack" in log
    assert "ModuleNotFoundError" in log and "Traceback" in log


def test_custom_node_function_really_runs(comfy: Standin) -> None:
    pid, frames = run_to_end(comfy.url, {"1": {"class_type": "Shout", "inputs": {"text": "quiet"}}})
    assert (comfy.base_dir / "output" / "shout.txt").read_text() == "QUIET"
    executed = [f["data"] for f in frames if f["type"] == "executed"]
    assert executed[0]["output"] == {"text": ["QUIET"]}


def test_models_routes(comfy: Standin) -> None:
    assert "checkpoints" in httpx.get(comfy.url + "/models").json()
    assert httpx.get(comfy.url + "/models/checkpoints").json() == ["model.safetensors"]
    assert httpx.get(comfy.url + "/api/models/upscale_models").json() == ["4x.pth"]
    assert httpx.get(comfy.url + "/models/nope").status_code == 404


def test_prompt_error_shapes(comfy: Standin) -> None:
    r = httpx.post(
        comfy.url + "/prompt",
        json={"prompt": {"12": {"class_type": "FooNode", "inputs": {}, "_meta": {"title": "My Foo"}}}},
    )
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "type": "missing_node_type",
            "message": "Node 'My Foo' not found. The custom node may not be installed.",
            "details": "Node ID '#12'",
            "extra_info": {"node_id": "12", "class_type": "FooNode", "node_title": "My Foo"},
        },
        "node_errors": {},
    }
    r = httpx.post(comfy.url + "/prompt", json={"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "prompt_no_outputs"
    r = httpx.post(comfy.url + "/prompt", json={"prompt": sd_graph("x.safetensors")})
    body = r.json()
    assert r.status_code == 400
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert (
        body["error"]["details"]
        == "Value not in list: ckpt_name: 'x.safetensors' not in ['model.safetensors']"
    )
    err = body["node_errors"]["4"]
    assert err["class_type"] == "CheckpointLoaderSimple" and err["dependent_outputs"] == ["9"]
    extra = err["errors"][0]["extra_info"]
    assert (extra["input_name"], extra["received_value"]) == ("ckpt_name", "x.safetensors")
    assert extra["input_config"][0] == ["model.safetensors"]
    bad = sd_graph()
    bad["3"]["inputs"]["sampler_name"] = "warp"
    bad["3"]["inputs"]["steps"] = 0
    errs = httpx.post(comfy.url + "/prompt", json={"prompt": bad}).json()["node_errors"]["3"]["errors"]
    kinds = {e["type"]: e for e in errs}
    assert kinds["value_not_in_list"]["details"].startswith("sampler_name: 'warp' not in (list of length")
    assert kinds["value_not_in_list"]["extra_info"]["input_config"] is None
    assert kinds["value_smaller_than_min"]["details"] == "steps"
    missing = tiny_graph(1)
    del missing["1"]["inputs"]["width"]
    errs = httpx.post(comfy.url + "/prompt", json={"prompt": missing}).json()["node_errors"]["1"]["errors"]
    assert errs[0]["type"] == "required_input_missing" and errs[0]["details"] == "width"
    assert httpx.post(comfy.url + "/prompt", json={}).json()["error"]["type"] == "no_prompt"


def test_missing_node_older_build_style(tmp_path: Path) -> None:
    with Standin(tmp_path, env={"COMFYUI_STANDIN_MISSING_NODE": "invalid_prompt"}) as s:
        r = httpx.post(
            s.url + "/api/prompt", json={"prompt": {"12": {"class_type": "FooNode", "inputs": {}}}}
        )
    assert r.status_code == 400
    assert r.json()["error"] == {
        "type": "invalid_prompt",
        "message": "Cannot execute because node FooNode does not exist.",
        "details": "Node ID '#12'",
        "extra_info": {},
    }


def test_sd_graph_frames_png_history_view_and_cache(comfy: Standin) -> None:
    pid, frames = run_to_end(comfy.url, sd_graph(seed=5, steps=4))
    types = [f["type"] for f in frames]
    assert types[0] == "status" and "sid" in frames[0]["data"]
    assert types.index("execution_start") < types.index("execution_cached") < types.index("executing")
    progress = [f["data"] for f in frames if f["type"] == "progress"]
    assert [p["value"] for p in progress] == [1, 2, 3, 4] and {p["node"] for p in progress} == {"3"}
    executed = [f["data"] for f in frames if f["type"] == "executed"]
    assert executed[-1]["node"] == "9"
    image = executed[-1]["output"]["images"][0]
    assert (
        image["filename"].startswith("sd_")
        and image["filename"].endswith("_.png")
        and image["type"] == "output"
    )
    assert [t for t in types if t != "status"][-2:] == ["execution_success", "executing"]
    hist = httpx.get(comfy.url + f"/history/{pid}").json()[pid]
    assert hist["status"]["status_str"] == "success" and hist["status"]["completed"] is True
    assert hist["outputs"]["9"]["images"] == [image]
    view = httpx.get(
        comfy.url + "/view", params={"filename": image["filename"], "type": "output", "subfolder": ""}
    )
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    assert view.content == (comfy.base_dir / "output" / image["filename"]).read_bytes()
    w, h, _ = png_size_and_first_pixel(view.content)
    assert (w, h) == (64, 64)
    # An identical graph is answered from the cache: every node cached, no new file.
    files_before = sorted((comfy.base_dir / "output").iterdir())
    pid2, frames2 = run_to_end(comfy.url, sd_graph(seed=5, steps=4))
    cached = next(f["data"]["nodes"] for f in frames2 if f["type"] == "execution_cached")
    assert sorted(cached) == sorted(sd_graph())
    assert not any(f["type"] == "progress" for f in frames2)
    assert sorted((comfy.base_dir / "output").iterdir()) == files_before
    assert httpx.get(comfy.url + f"/history/{pid2}").json()[pid2]["outputs"]["9"]["images"] == [image]


def test_save_image_naming_counts_up_and_colour_is_real(comfy: Standin) -> None:
    names = []
    for color in (0xFF0000, 0x00FF00):
        pid, frames = run_to_end(comfy.url, tiny_graph(color, prefix="sub/count"))
        img = next(f["data"]["output"]["images"][0] for f in frames if f["type"] == "executed")
        names.append((img["subfolder"], img["filename"]))
        data = (comfy.base_dir / "output" / img["subfolder"] / img["filename"]).read_bytes()
        assert png_size_and_first_pixel(data) == (
            64,
            64,
            ((color >> 16) & 255, (color >> 8) & 255, color & 255),
        )
    assert names == [("sub", "count_00001_.png"), ("sub", "count_00002_.png")]


def test_execution_error_frame(comfy: Standin) -> None:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}},
        "2": {"class_type": "Boom", "inputs": {"images": ["1", 0]}},
    }
    pid, frames = run_to_end(comfy.url, graph)
    err = next(f["data"] for f in frames if f["type"] == "execution_error")
    assert err["node_id"] == "2" and err["node_type"] == "Boom" and err["exception_type"] == "ValueError"
    assert err["exception_message"] == "boom from a custom node" and err["traceback"]
    assert httpx.get(comfy.url + f"/history/{pid}").json()[pid]["status"]["status_str"] == "error"


def test_upload_then_load_image_and_view_refuses_escapes(comfy: Standin) -> None:
    pid, frames = run_to_end(comfy.url, tiny_graph(0x123456, prefix="src", size=16))
    img = next(f["data"]["output"]["images"][0] for f in frames if f["type"] == "executed")
    png = (comfy.base_dir / "output" / img["filename"]).read_bytes()
    up = httpx.post(comfy.url + "/upload/image", files={"image": ("in.png", png, "image/png")}).json()
    assert up == {"name": "in.png", "subfolder": "", "type": "input"}
    again = httpx.post(comfy.url + "/upload/image", files={"image": ("in.png", png, "image/png")}).json()
    assert again["name"] == "in (1).png"
    assert (
        httpx.post(
            comfy.url + "/upload/image", files={"image": ("x.png", png)}, data={"subfolder": "../../etc"}
        ).status_code
        == 400
    )
    assert (
        "in.png"
        in httpx.get(comfy.url + "/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][
            0
        ]
    )
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    pid, frames = run_to_end(comfy.url, graph)
    out = next(f["data"]["output"]["images"][0] for f in frames if f["type"] == "executed")
    data = (comfy.base_dir / "output" / out["filename"]).read_bytes()
    assert png_size_and_first_pixel(data) == (16, 16, (255 - 0x12, 255 - 0x34, 255 - 0x56))
    graph["1"]["inputs"]["image"] = "missing.png"
    r = httpx.post(comfy.url + "/prompt", json={"prompt": graph})
    assert r.json()["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
    assert httpx.get(comfy.url + "/view", params={"filename": "../x.png"}).status_code == 400
    assert (
        httpx.get(comfy.url + "/view", params={"filename": "x.png", "subfolder": "../.."}).status_code == 403
    )
    assert httpx.get(comfy.url + "/view", params={"filename": "nothere.png"}).status_code == 404


def test_queue_delete_and_interrupt_with_node_delay(tmp_path: Path) -> None:
    with Standin(tmp_path, env={"COMFYUI_STANDIN_NODE_DELAY": "1.0"}) as s:
        cid = uuid.uuid4().hex
        with connect(s.url.replace("http", "ws") + f"/ws?clientId={cid}") as ws:
            first = httpx.post(s.url + "/prompt", json={"prompt": tiny_graph(1), "client_id": cid}).json()[
                "prompt_id"
            ]
            second = httpx.post(s.url + "/prompt", json={"prompt": tiny_graph(2), "client_id": cid}).json()[
                "prompt_id"
            ]
            third = httpx.post(s.url + "/prompt", json={"prompt": tiny_graph(3), "client_id": cid}).json()[
                "prompt_id"
            ]
            time.sleep(0.3)
            q = httpx.get(s.url + "/queue").json()
            assert [x[1] for x in q["queue_running"]] == [first]
            assert [x[1] for x in q["queue_pending"]] == [second, third]
            assert httpx.get(s.url + "/prompt").json()["exec_info"]["queue_remaining"] == 3
            httpx.post(s.url + "/queue", json={"delete": [third]})
            assert [x[1] for x in httpx.get(s.url + "/queue").json()["queue_pending"]] == [second]
            httpx.post(s.url + "/interrupt", json={"prompt_id": first})
            seen = []
            while True:
                f = json.loads(ws.recv(timeout=10))
                seen.append(f["type"])
                if f["type"] == "execution_interrupted":
                    assert f["data"]["prompt_id"] == first
                if f["type"] == "execution_success":
                    assert f["data"]["prompt_id"] == second
                    break
            assert "execution_interrupted" in seen
        assert httpx.get(s.url + f"/history/{first}").json()[first]["status"]["status_str"] == "error"
        assert httpx.get(s.url + f"/history/{third}").json() == {}


def test_extra_model_paths_config(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "ckpts").mkdir(parents=True)
    (shared / "ckpts" / "far.safetensors").write_bytes(b"x")
    cfg = tmp_path / "extra.yaml"
    cfg.write_text(f"mine:\n    base_path: {shared}\n    checkpoints: |\n        ckpts\n")
    with Standin(tmp_path / "base", extra_args=["--extra-model-paths-config", str(cfg)]) as s:
        assert httpx.get(s.url + "/models/checkpoints").json() == ["far.safetensors"]


def test_unknown_flag_is_refused_like_comfyui(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="unrecognized arguments"):
        Standin(tmp_path, extra_args=["--no-such-flag"]).start(timeout=5)
