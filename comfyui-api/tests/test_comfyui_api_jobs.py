"""Async jobs, cancel, webhooks, ComfyUI outages and restarts, limits and keys — over real HTTP."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from comfyui_api import webhooks
from conftest import ROOT, TINY, Api, Comfy, needs_standin, wait_for, write_workflows

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.fixture()
def tiny_dir(tmp_path: Path) -> Path:
    return write_workflows(tmp_path / "wf", {"tiny.json": TINY})


def test_standard_webhooks_signature_matches_the_spec_vector() -> None:
    # Test vector published with the Standard Webhooks reference libraries.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    sig = webhooks.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_async_job_reports_progress_then_outputs(slow_comfy: Comfy, tiny_dir: Path, tmp_path: Path) -> None:
    with Api(slow_comfy.url, tiny_dir, tmp_path / "db.sqlite3") as api:
        r = httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 7}, "async": True})
        assert r.status_code == 202 and r.headers["location"] == f"/jobs/{r.json()['id']}"
        job_id = r.json()["id"]
        running = wait_for(
            lambda: (j := httpx.get(f"{api.url}/jobs/{job_id}").json())["status"] == "running" and j
        )
        assert running["node"] in ("1", "2") and "outputs" not in running
        done = wait_for(
            lambda: (j := httpx.get(f"{api.url}/jobs/{job_id}").json())["status"] == "completed" and j
        )
        assert base64.b64decode(done["outputs"][0]["base64"])[:4] == b"\x89PNG"
        assert done["duration_ms"] >= 700  # two nodes at 0.4 s each
        assert httpx.get(f"{api.url}/jobs/nope").status_code == 404


def test_cancel_pending_and_running_jobs(slow_comfy: Comfy, tiny_dir: Path, tmp_path: Path) -> None:
    with Api(slow_comfy.url, tiny_dir, tmp_path / "db.sqlite3") as api:
        first = httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 1}, "async": True}).json()
        second = httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 2}, "async": True}).json()
        wait_for(lambda: httpx.get(f"{api.url}/jobs/{first['id']}").json()["status"] == "running")
        # The second waits in ComfyUI's queue: cancelling deletes it there.
        r = httpx.delete(f"{api.url}/jobs/{second['id']}", timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        pending = httpx.get(slow_comfy.url + "/queue").json()["queue_pending"]
        assert second["prompt_id"] not in [p[1] for p in pending]
        # The first is running: cancelling interrupts it.
        r = httpx.delete(f"{api.url}/jobs/{first['id']}", timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        hist = httpx.get(f"{slow_comfy.url}/history/{first['prompt_id']}").json()[first["prompt_id"]]
        assert any(m[0] == "execution_interrupted" for m in hist["status"]["messages"])
        assert httpx.delete(f"{api.url}/jobs/{first['id']}").status_code == 409
        rows = httpx.get(api.url + "/executions", params={"status": "cancelled"}).json()["executions"]
        assert {row["id"] for row in rows} == {first["id"], second["id"]}


class FlakyReceiver:
    """A webhook receiver answering 500 to the first `failures` deliveries, then 204."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes, float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.requests.append(
                    ({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
                )
                self.send_response(500 if len(outer.requests) <= outer.failures else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_webhook_retried_with_backoff_after_two_failures(
    comfy: Comfy, tiny_dir: Path, tmp_path: Path
) -> None:
    secret_file = tmp_path / "whsec"
    secret_file.write_text(SECRET + "\n")
    receiver = FlakyReceiver(failures=2)
    try:
        with Api(
            comfy.url, tiny_dir, tmp_path / "db.sqlite3", ["--webhook-secret-file", str(secret_file)]
        ) as api:
            r = httpx.post(
                api.url + "/workflows/tiny",
                json={"input": {"color": 99}, "async": True, "webhook": receiver.url},
            )
            job_id = r.json()["id"]
            job = wait_for(lambda: (j := httpx.get(f"{api.url}/jobs/{job_id}").json()).get("webhook") and j)
        assert job["webhook"]["delivered"] is True and job["webhook"]["attempts"] == 3
        assert len(receiver.requests) == 3
        ids = {h["webhook-id"] for h, _, _ in receiver.requests}
        assert len(ids) == 1  # one message, retried
        for headers, body, _ in receiver.requests:
            assert webhooks.verify(SECRET, headers, body)
            assert not webhooks.verify(SECRET, headers, body + b" ")
        gaps = [b[2] - a[2] for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
        assert gaps[0] >= 0.09 and gaps[1] >= 0.19  # backoff 0.1 s, then 0.2 s (lower bounds: load only adds)
        payload = json.loads(receiver.requests[-1][1])
        assert payload["type"] == "job.completed" and payload["data"]["id"] == job_id
        assert payload["data"]["outputs"][0]["kind"] == "images"
    finally:
        receiver.close()


def test_webhook_needs_a_configured_secret(api: Api) -> None:
    r = httpx.post(api.url + "/workflows/tiny", json={"input": {}, "webhook": "http://127.0.0.1:9/x"})
    assert r.status_code == 422 and "--webhook-secret-file" in r.json()["detail"][0]["msg"]


@needs_standin
def test_comfyui_restart_while_a_job_waits(tmp_path: Path, tiny_dir: Path) -> None:
    from comfyfleet.devkit.standin import Standin

    comfy = Standin(tmp_path / "comfy", env={"COMFYUI_STANDIN_NODE_DELAY": "0.5"})
    with comfy, Api(comfy.url, tiny_dir, tmp_path / "db.sqlite3", ["--retry-after", "3"]) as api:
        out: dict[str, httpx.Response] = {}
        waiter = threading.Thread(
            target=lambda: out.setdefault(
                "r", httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 0x445566}}, timeout=60)
            )
        )
        waiter.start()
        wait_for(lambda: httpx.get(comfy.url + "/queue").json()["queue_running"])
        comfy.stop()  # ComfyUI dies mid-job and loses its in-memory queue
        wait_for(lambda: httpx.get(api.url + "/health").json()["comfyui"]["reachable"] is False)
        r = httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 1}})
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert httpx.get(api.url + "/ready").status_code == 503
        comfy.start()
        waiter.join(30)
        r = out["r"]
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "completed"
        data = base64.b64decode(r.json()["outputs"][0]["base64"])
        assert data[:4] == b"\x89PNG"
        assert "submitting it again" in api.log()


def test_queue_limit_answers_429(slow_comfy: Comfy, tiny_dir: Path, tmp_path: Path) -> None:
    with Api(slow_comfy.url, tiny_dir, tmp_path / "db.sqlite3", ["--queue-limit", "1"]) as api:
        first = httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 5}, "async": True})
        assert first.status_code == 202
        r = httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 6}})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    # Another client's prompts in ComfyUI's queue count too.
    with Api(slow_comfy.url, tiny_dir, tmp_path / "db2.sqlite3", ["--queue-limit", "2"]) as api:
        wait_for(lambda: not httpx.get(slow_comfy.url + "/queue").json()["queue_running"])
        for color in (10, 11):
            graph = json.loads(json.dumps(TINY))
            graph["1"]["inputs"]["color"] = color
            assert httpx.post(slow_comfy.url + "/prompt", json={"prompt": graph}).status_code == 200
        wait_for(lambda: httpx.get(api.url + "/health").json()["jobs_in_flight"] >= 2)
        assert httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 12}}).status_code == 429


def test_sync_timeout_answers_504_and_cancels_the_job(
    slow_comfy: Comfy, tiny_dir: Path, tmp_path: Path
) -> None:
    with Api(slow_comfy.url, tiny_dir, tmp_path / "db.sqlite3", ["--sync-timeout", "0.2"]) as api:
        r = httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 8}})
        assert r.status_code == 504
        job_id = r.json()["id"]
        # Nobody waits for it any more, so it must not keep the GPU busy.
        assert httpx.get(f"{api.url}/jobs/{job_id}").json()["status"] == "cancelled"


def test_a_sync_caller_that_hangs_up_has_its_job_cancelled(
    slow_comfy: Comfy, tiny_dir: Path, tmp_path: Path
) -> None:
    with Api(slow_comfy.url, tiny_dir, tmp_path / "db.sqlite3") as api:
        with pytest.raises(httpx.ReadTimeout):  # the caller gives up while the job runs
            httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 9}}, timeout=0.3)
        # Logged "queued" when submitted, its final status once ComfyUI confirmed the interrupt.
        rows = wait_for(
            lambda: (
                (r := httpx.get(api.url + "/executions").json()["executions"])
                and r[0]["status"] in ("completed", "failed", "cancelled")
                and r
            )
        )
        assert [r["status"] for r in rows] == ["cancelled"], rows
        assert not httpx.get(slow_comfy.url + "/queue").json()["queue_running"]
        assert "its synchronous caller disconnected" in api.log()


def test_keys_required_beyond_loopback(comfy: Comfy, tiny_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "comfyui-api" / "src")}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "comfyui_api",
            "--comfyui-url",
            comfy.url,
            "--workflows",
            str(tiny_dir),
            "--host",
            "0.0.0.0",
            "--port",
            "1",
            "--db",
            str(tmp_path / "x.db"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert r.returncode == 2
    assert "--api-key-file" in r.stderr and "Traceback" not in r.stderr


def test_bearer_keys_rate_limit_and_body_limit(comfy: Comfy, tiny_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    good, other = "k" * 32, "o" * 32
    keys.write_text(f"# operators\n{good}\n{other}\n")
    extra = ["--api-key-file", str(keys), "--rate-limit", "6", "--rate-burst", "3", "--max-body-mb", "0.01"]
    # Keys configured are enforced even on loopback, unless explicitly switched off.
    with Api(comfy.url, tiny_dir, tmp_path / "db.sqlite3", [*extra, "--allow-unauthenticated"]) as api:
        assert httpx.post(api.url + "/workflows/tiny", json={}).status_code == 200
    with Api(comfy.url, tiny_dir, tmp_path / "db2.sqlite3", extra) as api:
        assert httpx.post(api.url + "/workflows/tiny", json={}).status_code == 401
    api = Api(comfy.url, tiny_dir, tmp_path / "db3.sqlite3", extra, host="0.0.0.0")
    with api:
        url = api.url
        r = httpx.post(url + "/workflows/tiny", json={})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (
            httpx.post(
                url + "/workflows/tiny", json={}, headers={"authorization": "Bearer wrong-key-xxxxxxxx"}
            ).status_code
            == 401
        )
        assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/docs").status_code == 200
        auth = {"authorization": f"Bearer {good}"}
        codes = [
            httpx.post(url + "/workflows/tiny", json={"input": {"color": i}}, headers=auth).status_code
            for i in range(4)
        ]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429
        # Another key has its own bucket.
        assert (
            httpx.post(
                url + "/workflows/tiny", json={}, headers={"authorization": f"Bearer {other}"}
            ).status_code
            == 200
        )
        big = httpx.post(
            url + "/prompt",
            content=b"{" + b" " * 20000 + b"}",
            headers={"authorization": f"Bearer {other}", "content-type": "application/json"},
        )
        assert big.status_code == 413
        # A key sees only its own executions; the key itself is never logged.
        rows = httpx.get(url + "/executions", headers={"authorization": f"Bearer {other}"}).json()[
            "executions"
        ]
        assert len(rows) == 1 and rows[0]["key_id"].startswith("key_")
        assert good not in api.log() and other not in api.log()
        assert good.encode() not in (tmp_path / "db3.sqlite3").read_bytes()


@needs_standin
def test_ready_needs_models_present(comfy: Comfy, tmp_path: Path) -> None:
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "later.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "m"}},
    }
    wf = write_workflows(tmp_path / "wf", {"needs_model.json": graph})
    assert comfy.standin is not None
    model = comfy.standin.models("checkpoints") / "later.safetensors"
    with Api(comfy.url, wf, tmp_path / "db.sqlite3") as api:
        r = httpx.get(api.url + "/ready")
        assert r.status_code == 503 and "retry-after" in r.headers
        assert r.json()["checks"]["models"]["missing"] == [
            {"workflow": "needs_model", "node": "4", "input": "ckpt_name", "file": "later.safetensors"}
        ]
        model.write_bytes(b"w")
        try:
            time.sleep(1.1)  # readiness is cached for a second
            r = httpx.get(api.url + "/ready")
            assert r.status_code == 200 and r.json()["ready"] is True, r.text
        finally:
            model.unlink()


def test_warmup_runs_each_workflow_before_ready(comfy: Comfy, tiny_dir: Path, tmp_path: Path) -> None:
    with Api(comfy.url, tiny_dir, tmp_path / "db.sqlite3", ["--warmup"]) as api:
        ready = wait_for(lambda: (r := httpx.get(api.url + "/ready")).status_code == 200 and r.json())
        assert ready["checks"]["warmup"]["state"] == "done"
        rows = httpx.get(api.url + "/executions").json()["executions"]
        assert [(r["workflow"], r["key_id"], r["status"]) for r in rows] == [("tiny", "warmup", "completed")]
