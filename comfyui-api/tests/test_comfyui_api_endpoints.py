"""Endpoints derived from workflows, validation, outputs, inputs, docs — over real HTTP."""

from __future__ import annotations

import base64
import json
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import EXAMPLES, INVERT, REAL_COMFYUI, ROOT, TINY, Api, Comfy, write_workflows

from comfyfleet.devkit.api_process import png as make_png


def png_info(data: bytes) -> tuple[int, int, tuple[int, int, int]]:
    """Width, height and first pixel of an 8-bit RGB PNG (filter byte 0 on row 0, as ComfyUI writes)."""
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


def same_png(data: bytes, size: tuple[int, int], rgb: tuple[int, int, int]) -> bool:
    """Size exact, first pixel within 1 per channel (real ComfyUI goes through float32 and truncates)."""
    w, h, px = png_info(data)
    return (w, h) == size and all(abs(a - b) <= 1 for a, b in zip(px, rgb, strict=True))


def run(api: Api, workflow: str, body: dict, **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{api.url}/workflows/{workflow}", json=body, timeout=30, **kw)


def test_schema_is_derived_from_the_graph_and_object_info(api: Api, comfy: Comfy) -> None:
    wfs = httpx.get(api.url + "/workflows").json()
    assert {"tiny", "invert"} <= set(wfs)
    tiny = wfs["tiny"]["schema"]["properties"]
    assert set(tiny) == {"width", "height", "batch_size", "color"}
    assert tiny["color"]["default"] == 0x336699 and tiny["width"]["minimum"] == 1
    assert wfs["invert"]["schema"]["properties"]["image"]["default"] == "example.png"
    if "txt2img" in wfs:
        props = wfs["txt2img"]["schema"]["properties"]
        assert props["prompt"]["default"].startswith("a lighthouse")
        assert props["negative_prompt"]["default"].startswith("blurry")
        sampler_enum = httpx.get(comfy.url + "/object_info/KSampler").json()["KSampler"]["input"]["required"][
            "sampler_name"
        ][0]
        assert props["sampler"]["enum"] == sampler_enum
        assert props["seed"]["default"] == 156680208700286 and props["steps"]["default"] == 20
        assert {"cfg", "scheduler", "width", "height", "batch_size", "denoise"} <= set(props)
    if "lora_txt2img" in wfs:  # UI format, converted with /object_info
        props = wfs["lora_txt2img"]["schema"]["properties"]
        assert props["seed"]["default"] == 42 and props["steps"]["default"] == 8
        assert props["scheduler"]["default"] == "sgm_uniform" and props["lora_strength"]["default"] == 1.0


def test_openapi_and_docs_describe_every_endpoint(api: Api) -> None:
    spec = httpx.get(api.url + "/openapi.json").json()
    names = set(httpx.get(api.url + "/workflows").json())
    for name in names:
        op = spec["paths"][f"/workflows/{name}"]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        schema = spec["components"]["schemas"][ref]
        assert schema["properties"]["input"]["properties"], name
        assert {"200", "202", "422", "429", "503"} <= set(op["responses"])
    assert "/prompt" in spec["paths"] and "/jobs/{job_id}" in spec["paths"]
    page = httpx.get(api.url + "/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_sync_run_returns_the_png_with_the_requested_values(api: Api) -> None:
    r = run(api, "tiny", {"input": {"color": 0xFF8000, "width": 40, "height": 24}})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "completed" and job["workflow"] == "tiny"
    out = job["outputs"][0]
    assert out["kind"] == "images" and out["content_type"] == "image/png" and out["node"] == "2"
    data = base64.b64decode(out["base64"])
    assert same_png(data, (40, 24), (0xFF, 0x80, 0x00))
    assert out["size"] == len(data)


def test_invalid_requests_get_422_naming_the_field(api: Api) -> None:
    cases = [
        ({"input": {"width": "wide"}}, ["body", "input", "width"]),
        ({"input": {"width": 0}}, ["body", "input", "width"]),
        ({"input": {"colour": 3}}, ["body", "input", "colour"]),
        ({"input": {"batch_size": 1.5}}, ["body", "input", "batch_size"]),
        ({"input": {}, "outputs": "zip"}, ["body", "outputs"]),
        ({"input": {}, "speed": "fast"}, ["body", "speed"]),
        ({"input": {}, "webhook": "ftp://x"}, ["body", "webhook"]),
    ]
    for body, loc in cases:
        r = run(api, "tiny", body)
        assert r.status_code == 422, (body, r.text)
        assert loc in [d["loc"] for d in r.json()["detail"]], (body, r.json())
    r = httpx.post(
        api.url + "/workflows/tiny",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"]
    assert run(api, "nope", {}).status_code == 404


def test_outputs_as_urls_served_by_the_api(api: Api) -> None:
    job = run(api, "tiny", {"input": {"color": 0x010203}, "outputs": "url"}).json()
    url = job["outputs"][0]["url"]
    assert "base64" not in job["outputs"][0] and url == f"/jobs/{job['id']}/outputs/0"
    r = httpx.get(api.url + url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert same_png(r.content, png_info(r.content)[:2], (1, 2, 3))
    assert httpx.get(api.url + f"/jobs/{job['id']}/outputs/1").status_code == 404
    assert httpx.get(api.url + f"/jobs/{job['id']}/outputs/..%2F..%2Fetc").status_code == 404


@pytest.fixture(scope="module")
def image_server() -> object:
    """A loopback HTTP server handing out a PNG and a non-image."""
    png = make_png()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body, ctype = (png, "image/png") if self.path == "/img.png" else (b"hello", "text/plain")
            self.send_response(200)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_load_image_inputs_url_base64_and_filename(api: Api, image_server: str) -> None:
    png = make_png()
    expect = (255 - 10, 255 - 200, 255 - 30)
    for value in (
        base64.b64encode(png).decode(),
        "data:image/png;base64," + base64.b64encode(png).decode(),
        f"{image_server}/img.png",
    ):
        r = run(api, "invert", {"input": {"image": value}})
        assert r.status_code == 200, r.text
        assert same_png(base64.b64decode(r.json()["outputs"][0]["base64"]), (8, 8), expect)
    assert run(api, "invert", {"input": {}}).status_code == 200  # the workflow's own example.png
    for bad in ("../../etc/passwd", "/etc/passwd", "a/../../b.png", "x\\..\\y.png"):
        r = run(api, "invert", {"input": {"image": bad}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", "image"], bad
    r = run(api, "invert", {"input": {"image": f"{image_server}/text"}})
    assert r.status_code == 422 and "not a PNG" in r.json()["detail"][0]["msg"]
    r = run(api, "invert", {"input": {"image": "no-such-file.png"}})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "input", "image"]


def test_upload_image_then_use_it_by_name(api: Api) -> None:
    png = make_png((0, 0, 0), 4)
    r = httpx.post(
        api.url + "/upload/image", files={"image": ("up.png", png, "image/png")}, data={"overwrite": "true"}
    )
    assert r.status_code == 200 and r.json()["name"] == "up.png"
    r = run(api, "invert", {"input": {"image": "up.png"}})
    assert same_png(base64.b64decode(r.json()["outputs"][0]["base64"]), (4, 4), (255, 255, 255))
    r = httpx.post(
        api.url + "/upload/image", files={"image": ("x.png", png, "image/png")}, data={"subfolder": "../.."}
    )
    assert r.status_code == 422
    r = httpx.post(api.url + "/upload/image", files={"image": ("x.txt", b"plain text", "text/plain")})
    assert r.status_code == 422


def test_raw_prompt_runs_a_graph_and_passes_comfyui_errors(api: Api) -> None:
    graph = json.loads(json.dumps(TINY))
    graph["1"]["inputs"]["color"] = 0x0000FF
    r = httpx.post(api.url + "/prompt", json={"prompt": graph}, timeout=30)
    assert r.status_code == 200, r.text
    data = base64.b64decode(r.json()["outputs"][0]["base64"])
    assert same_png(data, png_info(data)[:2], (0, 0, 255))
    r = httpx.post(api.url + "/prompt", json={"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
    assert r.status_code == 400
    assert r.json()["error"]["type"] in ("missing_node_type", "invalid_prompt")
    assert httpx.post(api.url + "/prompt", json={"graph": {}}).status_code == 422


def test_api_yaml_renames_hides_exposes_and_constrains(comfy: Comfy, tmp_path: Path) -> None:
    wf = write_workflows(
        tmp_path / "wf",
        {
            "tiny.json": TINY,
            "tiny.api.yaml": (
                "summary: A flat colour\n"
                "inputs:\n"
                "  color: {rename: rgb, description: Fill colour}\n"
                "  batch_size: {hidden: true}\n"
                "  width: {maximum: 128}\n"
                "  prefix: {node: '2', input: filename_prefix}\n"
            ),
            "broken.json": INVERT,
            "broken.api.yaml": "inputs:\n  nothing_like_this: {maximum: 3}\n",
            "no_output.json": {"1": TINY["1"]},
            "not_installed.json": {**TINY, "3": {"class_type": "NotInstalledNode", "inputs": {}}},
            "not_json.json": "{oops",
        },
    )
    with Api(comfy.url, wf, tmp_path / "db.sqlite3") as a:
        wfs = httpx.get(a.url + "/workflows").json()
        props = wfs["tiny"]["schema"]["properties"]
        assert (
            set(props) == {"rgb", "width", "height", "prefix"} and wfs["tiny"]["summary"] == "A flat colour"
        )
        assert props["width"]["maximum"] == 128 and props["prefix"]["default"] == "tiny"
        r = run(a, "tiny", {"input": {"width": 129}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", "width"]
        assert run(a, "tiny", {"input": {"batch_size": 2}}).status_code == 422
        r = run(a, "tiny", {"input": {"rgb": 0x00FF00, "prefix": "renamed"}})
        assert r.status_code == 200 and r.json()["outputs"][0]["filename"].startswith("renamed_")
        for escape in ("../../outside", "/tmp/abs", "a/../../b", "..\\win"):
            r = run(a, "tiny", {"input": {"prefix": escape}})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", "prefix"], (
                escape
            )
        ready = httpx.get(a.url + "/ready")
        assert ready.status_code == 503
        errors = ready.json()["checks"]["workflows"]["errors"]
        assert any("broken.api.yaml" in e and "nothing_like_this" in e for e in errors)
        assert any("no_output.json" in e and "no output node" in e for e in errors)
        assert any("not_installed.json: node 3 (NotInstalledNode) is not installed" in e for e in errors)
        assert any("not_json.json: invalid JSON at line 1" in e for e in errors)
        assert set(wfs) == {"tiny"}


def test_ui_format_workflow_is_converted_with_bypass_reroute_and_primitive(
    comfy: Comfy, tmp_path: Path
) -> None:
    ui = {
        "nodes": [
            {
                "id": 1,
                "type": "EmptyImage",
                "mode": 0,
                "widgets_values": [16, 8, 1, 255],
                "inputs": [{"name": "width", "type": "INT", "link": 4, "widget": {"name": "width"}}],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
            },
            {
                "id": 2,
                "type": "ImageInvert",
                "mode": 4,
                "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
                "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}],
            },
            {
                "id": 3,
                "type": "Reroute",
                "mode": 0,
                "inputs": [{"name": "", "type": "*", "link": 2}],
                "outputs": [{"name": "", "type": "IMAGE", "links": [3]}],
            },
            {
                "id": 4,
                "type": "SaveImage",
                "mode": 0,
                "widgets_values": ["ui"],
                "inputs": [{"name": "images", "type": "IMAGE", "link": 3}],
            },
            {
                "id": 5,
                "type": "PrimitiveNode",
                "mode": 0,
                "widgets_values": [24, "fixed"],
                "outputs": [{"name": "INT", "type": "INT", "links": [4]}],
            },
            {"id": 6, "type": "Note", "mode": 0, "widgets_values": ["hello"]},
        ],
        "links": [
            [1, 1, 0, 2, 0, "IMAGE"],
            [2, 2, 0, 3, 0, "*"],
            [3, 3, 0, 4, 0, "IMAGE"],
            [4, 5, 0, 1, 0, "INT"],
        ],
    }
    wf = write_workflows(tmp_path / "wf", {"ui.json": ui})
    with Api(comfy.url, wf, tmp_path / "db.sqlite3") as a:
        props = httpx.get(a.url + "/workflows").json()["ui"]["schema"]["properties"]
        # The primitive's value becomes the literal width, as in ComfyUI's own API export.
        assert set(props) == {"width", "height", "batch_size", "color"} and props["width"]["default"] == 24
        r = run(a, "ui", {"input": {}})
        assert r.status_code == 200, r.text
        # Bypassed invert: colour passes through unchanged; the primitive set the width.
        assert same_png(base64.b64decode(r.json()["outputs"][0]["base64"]), (24, 8), (0, 0, 255))


def test_executions_are_logged_and_filterable(api: Api) -> None:
    run(api, "tiny", {"input": {"color": 0xABCDEF}})
    run(api, "tiny", {"input": {"width": "bad"}})  # 422: never reaches ComfyUI, not an execution
    r = httpx.get(api.url + "/executions", params={"workflow": "tiny", "status": "completed", "limit": 500})
    rows = r.json()["executions"]
    assert rows and all(row["workflow"] == "tiny" and row["status"] == "completed" for row in rows)
    mine = [row for row in rows if row["params"]["color"] == 0xABCDEF]
    assert mine and mine[0]["duration_ms"] > 0 and mine[0]["outputs"][0]["filename"].startswith("tiny_")
    assert mine[0]["finished_at"] >= mine[0]["created_at"]
    newest = rows[0]["created_at"]
    assert httpx.get(api.url + "/executions", params={"since": newest + 1}).json()["executions"] == []
    assert httpx.get(api.url + "/executions", params={"since": "yesterday"}).status_code == 422
    assert httpx.get(api.url + "/executions", params={"workflow": "invert", "limit": 1}).json()["limit"] == 1


def test_health_reports_version_and_build(api: Api) -> None:
    h = httpx.get(api.url + "/health").json()
    assert h["status"] == "ok" and h["version"] and h["build"]["version"] == h["version"]
    assert h["comfyui"]["reachable"] is True


def test_non_image_outputs_are_returned_too(comfy: Comfy, tmp_path: Path) -> None:
    latent = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "latents/api"}},
    }
    wf = write_workflows(tmp_path / "wf", {"latent.json": latent})
    with Api(comfy.url, wf, tmp_path / "db.sqlite3") as a:
        assert set(httpx.get(a.url + "/workflows").json()["latent"]["schema"]["properties"]) == {
            "width",
            "height",
            "batch_size",
        }
        r = run(a, "latent", {"input": {"width": 128}})
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert (
            out["kind"] == "latents"
            and out["filename"].endswith(".latent")
            and out["subfolder"].startswith("api/")
            and out["subfolder"].endswith("/latents")
        )
        data = base64.b64decode(out["base64"])
        (header_len,) = struct.unpack("<Q", data[:8])
        assert json.loads(data[8 : 8 + header_len])  # a safetensors header
        url = run(a, "latent", {"input": {"width": 136}, "outputs": "url"}).json()["outputs"][0]["url"]
        got = httpx.get(a.url + url)
        assert got.status_code == 200
        (n,) = struct.unpack("<Q", got.content[:8])
        assert json.loads(got.content[8 : 8 + n])


@pytest.mark.skipif(bool(REAL_COMFYUI), reason="the examples need their models and node packs installed")
def test_every_example_workflow_is_served_and_generates_with_its_defaults(api: Api) -> None:
    names = [n[:-5] for n in EXAMPLES if (ROOT / "workflows" / n).exists()]
    assert names, "no example workflows in workflows/"
    served = httpx.get(api.url + "/workflows").json()
    for name in names:
        assert name in served, (name, httpx.get(api.url + "/ready").json())
        r = run(api, name, {"input": {}})
        assert r.status_code == 200, (name, r.text)
        data = base64.b64decode(r.json()["outputs"][0]["base64"])
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    if "upscale" in names:  # example.png (64x64) upscaled 2x by the model, then halved
        r = run(api, "upscale", {"input": {"scale_by": 1.0}})
        assert png_info(base64.b64decode(r.json()["outputs"][0]["base64"]))[:2] == (128, 128)
    ready = httpx.get(api.url + "/ready").json()
    assert ready["checks"]["models"]["ok"] is True, ready
