"""The Python client (comfyui_api.client) against a running comfyui-api over real HTTP.

ComfyUI behind the service is the test stand-in (or a real one via COMFYUI_TEST_COMFYUI_URL, see conftest).
"""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from comfyui_api.client import ApiClient, ApiError, ApiUnavailable, Output, Result, secure_url, verify_webhook
from conftest import TINY, Api, Comfy, free_port, needs_standin, write_workflows

SECRET = "whsec_" + base64.b64encode(b"client-test-secret-0123456789abc").decode()
PNG = b"\x89PNG"
NEEDS_MODEL = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "absent.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "m"}},
}


def test_health_ready_run_download_and_save(api: Api, tmp_path: Path) -> None:
    with ApiClient(api.url) as client:
        assert client.health()["service"] == "comfyui-api"
        assert client.ready()["ready"] is True
        assert client.ready("tiny")["ready"] is True
        assert "tiny" in client.workflows()
        result = client.run("tiny", {"color": 0x112233})
        assert isinstance(result, Result) and result.status == "completed" and result.done
        [out] = result.outputs
        assert out.url and out.data is None and out.filename.endswith(".png")
        assert client.download(out)[:4] == PNG
        saved = client.save(out, tmp_path / "out")
        assert saved.parent == tmp_path / "out" and saved.read_bytes()[:4] == PNG
        inline = client.run("tiny", {"color": 0x112234}, outputs="base64")
        assert inline.outputs[0].data is not None and inline.outputs[0].data[:4] == PNG
        assert client.download(inline.outputs[0]) == inline.outputs[0].data


def test_errors_carry_status_and_the_services_detail(api: Api) -> None:
    with ApiClient(api.url) as client:
        with pytest.raises(ApiError) as missing:
            client.run("no_such_flow")
        assert missing.value.status == 404 and "no workflow named" in missing.value.detail
        assert not isinstance(missing.value, ApiUnavailable)
        with pytest.raises(ApiError) as bad:
            client.run("tiny", {"colour": 1})
        assert bad.value.status == 422 and bad.value.detail[0]["loc"] == ["body", "input", "colour"]
        with pytest.raises(ApiError) as nojob:
            client.job("nope")
        assert nojob.value.status == 404
        with pytest.raises(ApiError) as hook:  # webhooks need a signing secret on the service
            client.submit("tiny", {}, webhook="http://127.0.0.1:9/x")
        assert hook.value.status == 422
    # Nothing listens on this port: unavailable, status 0, no HTTP answer.
    with (
        ApiClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client,
        pytest.raises(ApiUnavailable) as down,
    ):
        client.health()
    assert down.value.status == 0


def test_output_without_a_source_and_unsafe_names_are_refused(api: Api, tmp_path: Path) -> None:
    with ApiClient(api.url) as client:
        with pytest.raises(ApiError, match="neither data nor a download URL"):
            client.download(Output("x.png"))
        # A name with folders is saved under its base name only, inside the directory given.
        saved = client.save(Output("../../escape.png", data=b"bytes"), tmp_path / "d")
        assert saved == tmp_path / "d" / "escape.png"
        with pytest.raises(ApiError, match="not a file name"):
            client.save(Output("..", data=b"bytes"), tmp_path / "d")


def test_ready_judges_one_workflow(comfy: Comfy, tmp_path: Path) -> None:
    """A workflow whose model is absent is broken (ApiError), the other one on the same service is ready."""
    wf = write_workflows(tmp_path / "wf", {"tiny.json": TINY, "needs_model.json": NEEDS_MODEL})
    with Api(comfy.url, wf, tmp_path / "db.sqlite3") as api, ApiClient(api.url) as client:
        assert client.ready("tiny")["ready"] is False  # the service as a whole is not ready...
        with pytest.raises(ApiError) as broken:
            client.ready("needs_model")
        assert broken.value.status == 503 and not isinstance(broken.value, ApiUnavailable)
        assert "absent.safetensors (node 4)" in broken.value.detail
        with pytest.raises(ApiUnavailable, match="not ready"):  # ...which is all ready() can say without one
            client.ready()
        with pytest.raises(ApiUnavailable, match="not loaded yet"):
            client.ready("still_uploading")


@needs_standin
def test_submit_wait_progress_and_cancel(slow_comfy: Comfy, tmp_path: Path) -> None:
    wf = write_workflows(tmp_path / "wf", {"tiny.json": TINY})
    with Api(slow_comfy.url, wf, tmp_path / "db.sqlite3") as api, ApiClient(api.url) as client:
        seen: list[Result] = []
        job_id = client.submit("tiny", {"color": 5})
        done = client.wait(job_id, timeout=30, on_progress=seen.append, poll=0.1)
        assert done.status == "completed" and done.outputs[0].filename.endswith(".png")
        assert any(r.status == "running" and r.raw.get("node") in ("1", "2") for r in seen)
        first = client.submit("tiny", {"color": 6})
        second = client.submit("tiny", {"color": 7})
        assert client.cancel(second).status == "cancelled"
        assert client.job(second).status == "cancelled"  # a cancelled job is returned, not raised
        with pytest.raises(TimeoutError):
            client.wait(first, timeout=0.1, poll=0.05)
        client.cancel(first)
        with pytest.raises(ApiError) as again:
            client.cancel(first)
        assert again.value.status == 409


class Receiver:
    """A local HTTP server recording webhook deliveries."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.got = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()
                outer.got.set()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_keys_webhooks_and_verify_webhook(comfy: Comfy, tmp_path: Path) -> None:
    keys, secret_file = tmp_path / "keys", tmp_path / "whsec"
    keys.write_text("k" * 32 + "\n")
    secret_file.write_text(SECRET + "\n")
    wf = write_workflows(tmp_path / "wf", {"tiny.json": TINY})
    receiver = Receiver()
    extra = ["--api-key-file", str(keys), "--webhook-secret-file", str(secret_file)]
    try:
        with Api(comfy.url, wf, tmp_path / "db.sqlite3", extra) as api:
            with ApiClient(api.url, "wrong" * 8) as client, pytest.raises(ApiError) as denied:
                client.run("tiny")
            assert denied.value.status == 401
            with ApiClient(api.url, "k" * 32) as client:
                job_id = client.submit("tiny", {"color": 42}, webhook=receiver.url)
                assert client.wait(job_id, timeout=30, poll=0.1).status == "completed"
            assert receiver.got.wait(10)
        headers, body = receiver.requests[0]
        assert verify_webhook(SECRET, headers, body)
        assert not verify_webhook(SECRET, headers, body + b" ")
    finally:
        receiver.close()


def test_a_key_never_goes_over_plain_http_to_another_host() -> None:
    assert secure_url("https://gpu.example:3000") and secure_url("http://127.0.0.1:3000")
    assert secure_url("http://localhost:1") and secure_url("http://[::1]:3000")
    assert not secure_url("http://10.0.0.5:3000") and not secure_url("http://gpu.example:3000")
    with pytest.raises(ValueError, match="SSH tunnel"):
        ApiClient("http://10.0.0.5:3000", "secret-key")
    ApiClient("http://10.0.0.5:3000").close()  # no key: nothing to protect
    ApiClient("http://10.0.0.5:3000", "secret-key", allow_plain_http=True).close()
