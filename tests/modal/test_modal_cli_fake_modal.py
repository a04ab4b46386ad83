"""`comfyfleet modal deploy | stop | status` at the command level, with a fake `modal` on PATH.

Modal cannot be reached from here, so a fake `modal` executable (fake/modal_fake.py)
answers with modal 1.6.4's output shapes and records its argv; the deployed endpoint is a
small HTTP server on 127.0.0.1 that speaks the API's /health and /workflows/{name}. The
last test runs the real modal CLI, offline, without a token.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from modal_helpers import REPO, hand_inputs

from comfyfleet.manifest import ModelRef
from comfyfleet.modal_target.generate import generate_app, render_app
from comfyfleet.modal_target.options import ModalOptions

FAKE = Path(__file__).resolve().parent / "fake" / "modal_fake.py"
COMFYFLEET = Path(sys.executable).with_name("comfyfleet")
API_KEY = "k3y-for-tests-0123456789"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


class EndpointStandin:
    """The deployed API as the verifier sees it: /health, then POST /workflows/{name} with Bearer auth."""

    def __init__(
        self,
        cold_start_503s: int = 0,
        failing: tuple[str, ...] = (),
        missing_models: tuple[str, ...] = (),
        redirected: tuple[str, ...] = ("txt2img",),
    ) -> None:
        self.cold = cold_start_503s
        self.failing = failing
        self.missing_models = missing_models
        self.redirected = redirected
        self.calls: list[tuple[str, str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                outer.calls.append(("GET", self.path, self.headers.get("Authorization")))
                if self.path == "/health":
                    if outer.cold > 0:
                        outer.cold -= 1
                        return self._send(503, {"detail": "starting"})
                    return self._send(200, {"status": "ok"})
                if "__modal_function_call_id=" in self.path:
                    # Where Modal's redirect of a long request leads: the result of the original call.
                    name = self.path.split("?")[0].rsplit("/", 1)[-1]
                    return self._send(
                        200,
                        {
                            "status": "completed",
                            "outputs": [{"filename": f"{name}_00001_.png", "base64": PNG}],
                        },
                    )
                if self.path == "/ready":
                    if outer.missing_models:
                        return self._send(
                            503,
                            {
                                "ready": False,
                                "checks": {
                                    "models": {
                                        "ok": False,
                                        "missing": [{"file": f} for f in outer.missing_models],
                                    }
                                },
                            },
                        )
                    return self._send(200, {"ready": True, "checks": {}})
                self._send(404, {"detail": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.calls.append(("POST", self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                    return self._send(401, {"detail": "bad key"})
                name = self.path.rsplit("/", 1)[-1]
                if name in outer.failing:
                    return self._send(500, {"detail": f"execution_error in {name}"})
                if name in outer.redirected:
                    # Modal answers a web request running past 150 s with a 303 to its result.
                    self.send_response(303)
                    self.send_header("Location", f"{self.path}?__modal_function_call_id=fc-01TEST")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self._send(
                    200, {"status": "success", "outputs": [{"filename": f"{name}_00001_.png", "base64": PNG}]}
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def app_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("modal-app") / "modal_app.py"
    generate_app([REPO / "workflows"], ModalOptions(), out)
    return out


@pytest.fixture
def endpoint() -> Any:
    server = EndpointStandin()
    yield server
    server.close()


def deploy_output(url: str) -> str:
    """What `modal deploy` (1.6.4) prints for app comfyfleet serving at url."""
    return (
        (REPO / "tests" / "modal" / "fake" / "deploy_output.txt")
        .read_text()
        .format(url=url, app="comfyfleet")
    )


class FakeModal:
    def __init__(self, tmp: Path, scenario: dict[str, Any]) -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir(exist_ok=True)
        exe = self.bin / "modal"
        exe.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
        exe.chmod(0o755)
        self.log = tmp / "modal-calls.jsonl"
        self.scenario_file = tmp / "scenario.json"
        self.scenario_file.write_text(json.dumps({"log": str(self.log), **scenario}))

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if k
            not in (
                "COMFYFLEET_API_KEY",
                "CIVITAI_API_TOKEN",
                "HF_TOKEN",
                "COMFYFLEET_SECRETS_FILE",
                "COMFYFLEET_MODAL",
            )
        }
        full = {
            **base,
            "PATH": f"{self.bin}{os.pathsep}{base.get('PATH', '')}",
            "FAKE_MODAL_SCENARIO": str(self.scenario_file),
            **(env or {}),
        }
        return subprocess.run(
            [str(COMFYFLEET), "modal", *args], capture_output=True, text=True, env=full, timeout=120
        )


def test_fake_modal_deploy_runs_deploy_models_and_verifies(
    tmp_path: Path, app_file: Path, endpoint: Any
) -> None:
    fake = FakeModal(tmp_path, {"deploy_output": deploy_output(endpoint.url), "secrets": []})
    done = fake.run("deploy", str(app_file), env={"COMFYFLEET_API_KEY": API_KEY})
    assert done.returncode == 0, done.stdout + done.stderr
    assert endpoint.url in done.stdout
    for workflow in ("lora_txt2img", "swatch", "txt2img", "upscale"):
        assert f"generate {workflow}" in done.stdout
    assert "FAILED" not in done.stdout
    calls = [c["argv"] for c in fake.calls()]
    # Secrets first (from a private file, never in argv), then the model volume, then deploy.
    assert calls[0][:3] == ["secret", "create", "comfyfleet-api"] and "--force" in calls[0]
    assert calls[1] == ["run", f"{app_file}::download_models"]
    assert calls[2] == ["deploy", str(app_file)]
    secret_call = fake.calls()[0]
    assert secret_call["file_mode"] == "0o600"
    assert secret_call["file_content"] == {"COMFYUI_API_KEYS": API_KEY}
    assert not Path(calls[0][calls[0].index("--from-json") + 1]).exists(), "secret file removed after use"
    assert all(API_KEY not in " ".join(argv) for argv in calls)
    assert API_KEY not in done.stdout + done.stderr
    posts = [c for c in endpoint.calls if c[0] == "POST"]
    assert sorted(p[1] for p in posts) == [
        "/workflows/lora_txt2img",
        "/workflows/swatch",
        "/workflows/txt2img",
        "/workflows/upscale",
    ]
    assert all(p[2] == f"Bearer {API_KEY}" for p in posts)
    # txt2img took "longer than 150 s": the verifier followed Modal's redirect, with its key.
    assert (
        "GET",
        "/workflows/txt2img?__modal_function_call_id=fc-01TEST",
        f"Bearer {API_KEY}",
    ) in endpoint.calls


def test_fake_modal_deploy_waits_through_cold_start_and_reports_a_failed_generation(
    tmp_path: Path, app_file: Path
) -> None:
    endpoint = EndpointStandin(cold_start_503s=1, failing=("upscale",))
    try:
        fake = FakeModal(
            tmp_path, {"deploy_output": deploy_output(endpoint.url), "secrets": ["comfyfleet-api"]}
        )
        done = fake.run("deploy", str(app_file), "--no-models", env={"COMFYFLEET_API_KEY": API_KEY})
    finally:
        endpoint.close()
    assert done.returncode == 1
    assert "FAILED: 500" in done.stdout and "upscale" in done.stdout
    assert [c for c in fake.calls() if c["argv"][0] == "run"] == [], "--no-models skips the volume"
    assert [c[1] for c in endpoint.calls if c[0] == "GET"].count("/health") == 2


def test_fake_modal_deploy_reads_url_from_function_info_when_deploy_prints_none(
    tmp_path: Path, app_file: Path, endpoint: Any
) -> None:
    info = {"name": "ComfyUIService", "method_details": {"api": {"web_url": endpoint.url, "method": None}}}
    fake = FakeModal(
        tmp_path,
        {
            "deploy_output": "✓ App deployed in 9.0s! 🎉\n\nView Deployment: https://modal.com/apps/a/main/deployed/comfyfleet",
            "function_info": info,
            "secrets": ["comfyfleet-api"],
        },
    )
    done = fake.run("deploy", str(app_file), "--no-models", env={"COMFYFLEET_API_KEY": API_KEY})
    assert done.returncode == 0, done.stdout + done.stderr
    assert ["function", "info", "comfyfleet/ComfyUIService", "--json"] in [c["argv"] for c in fake.calls()]


def test_fake_modal_deploy_without_api_key_and_no_secret_is_bad_input(tmp_path: Path, app_file: Path) -> None:
    fake = FakeModal(tmp_path, {"secrets": []})
    done = fake.run("deploy", str(app_file))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "comfyfleet-api" in done.stderr and "COMFYFLEET_API_KEY" in done.stderr
    assert not any(c["argv"][0] == "deploy" for c in fake.calls()), "nothing deployed"


def test_fake_modal_deploy_failure_is_exit_1_with_modal_error(tmp_path: Path, app_file: Path) -> None:
    fake = FakeModal(
        tmp_path,
        {
            "deploy_output": "Error: Image build for im-123 failed. See build logs.",
            "deploy_rc": 1,
            "secrets": ["comfyfleet-api"],
        },
    )
    done = fake.run("deploy", str(app_file))
    assert done.returncode == 1
    assert "Image build for im-123 failed" in done.stderr


def test_fake_modal_not_logged_in_is_one_line_exit_2(tmp_path: Path, app_file: Path) -> None:
    fake = FakeModal(tmp_path, {"logged_out": True})
    for args in (["deploy", str(app_file)], ["status", str(app_file)], ["stop", "--app", "comfyfleet"]):
        done = fake.run(*args, env={"COMFYFLEET_API_KEY": API_KEY})
        assert done.returncode == 2, args
        assert (
            done.stderr.strip().startswith("error: modal is not logged in")
            and "modal token new" in done.stderr
        )
        assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr


def test_fake_modal_cli_missing_is_one_line_exit_2(tmp_path: Path, app_file: Path) -> None:
    fake = FakeModal(tmp_path, {})
    done = fake.run("status", str(app_file), env={"COMFYFLEET_MODAL": str(tmp_path / "no" / "modal")})
    assert done.returncode == 2
    assert "pip install modal==1.6.4" in done.stderr and done.stderr.strip().count("\n") == 0


def test_find_modal_without_modal_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from comfyfleet.errors import BadInput
    from comfyfleet.modal_target.modal_cli import find_modal

    monkeypatch.delenv("COMFYFLEET_MODAL", raising=False)
    with pytest.raises(BadInput, match="not installed"):
        find_modal(path=str(tmp_path))


def test_fake_modal_stop_runs_modal_app_stop(tmp_path: Path, app_file: Path) -> None:
    fake = FakeModal(tmp_path, {})
    done = fake.run("stop", str(app_file))
    assert done.returncode == 0 and "stopped comfyfleet" in done.stdout
    assert fake.calls()[0]["argv"] == ["app", "stop", "comfyfleet", "--yes"]
    again = FakeModal(
        tmp_path, {"stop_rc": 1, "stop_output": "App is already stopped. (Stopped at 2026-11-22 01:00).\n"}
    )
    done = again.run("stop", "--app", "comfyfleet")
    assert done.returncode == 0 and "already stopped" in done.stdout


def test_fake_modal_status_lists_the_apps_deployments(tmp_path: Path, app_file: Path) -> None:
    apps = [
        {
            "app_id": "ap-1",
            "description": "comfyfleet",
            "state": "deployed",
            "tasks": "1",
            "created_at": "2026-11-22 01:00:00+00:00",
            "stopped_at": None,
        },
        {
            "app_id": "ap-2",
            "description": "other-app",
            "state": "deployed",
            "tasks": "0",
            "created_at": "2026-11-21 01:00:00+00:00",
            "stopped_at": None,
        },
    ]
    fake = FakeModal(tmp_path, {"apps": apps})
    done = fake.run("status", str(app_file))
    assert done.returncode == 0, done.stderr
    assert "ap-1" in done.stdout and "deployed" in done.stdout and "ap-2" not in done.stdout
    assert fake.calls()[0]["argv"] == ["app", "list", "--json"]
    none = FakeModal(tmp_path, {"apps": apps[1:]}).run("status", "--app", "comfyfleet")
    assert none.returncode == 1 and "no Modal app named comfyfleet" in none.stdout


def test_status_real_modal_cli_without_token_exit_2(tmp_path: Path, app_file: Path) -> None:
    """The real modal 1.6.4 CLI with an empty HOME: its own 'Token missing' error, offline."""
    modal_exe = Path(sys.executable).with_name("modal")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(tmp_path), COMFYFLEET_MODAL=str(modal_exe))
    done = subprocess.run(
        [str(COMFYFLEET), "modal", "status", str(app_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        "error: modal is not logged in: run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET), then retry"
    )


def test_fake_modal_deploy_reports_what_ready_lacks(tmp_path: Path, app_file: Path) -> None:
    """A volume without the models: /ready says which file is missing, and no generation is attempted."""
    endpoint = EndpointStandin(missing_models=("v1-5-pruned-emaonly-fp16.safetensors",))
    try:
        fake = FakeModal(
            tmp_path, {"deploy_output": deploy_output(endpoint.url), "secrets": ["comfyfleet-api"]}
        )
        done = fake.run(
            "deploy",
            str(app_file),
            "--no-models",
            "--health-timeout",
            "3",
            env={"COMFYFLEET_API_KEY": API_KEY},
        )
    finally:
        endpoint.close()
    assert done.returncode == 1
    assert "v1-5-pruned-emaonly-fp16.safetensors" in done.stdout.replace("\n", "")
    assert not [c for c in endpoint.calls if c[0] == "POST"]


def test_fake_modal_failed_model_download_stops_before_deploy(tmp_path: Path, app_file: Path) -> None:
    fake = FakeModal(
        tmp_path,
        {
            "run_output": "model download failed: v1-5: server answered 404",
            "run_rc": 1,
            "secrets": ["comfyfleet-api"],
        },
    )
    done = fake.run("deploy", str(app_file), env={"COMFYFLEET_API_KEY": API_KEY})
    assert done.returncode == 1
    assert "server answered 404" in done.stderr
    assert not any(c["argv"][0] == "deploy" for c in fake.calls()), "the endpoint was not deployed"


def test_fake_modal_civitai_token_becomes_the_civitai_secret(tmp_path: Path) -> None:
    model = ModelRef(
        filename="style.safetensors", folder="loras", url="https://civitai.com/api/download/models/99"
    )
    out = tmp_path / "civitai_app.py"
    out.write_text(render_app(hand_inputs(tmp_path, models=[model]), ModalOptions(), out))
    fake = FakeModal(tmp_path, {"secrets": ["comfyfleet-api"]})
    done = fake.run("deploy", str(out), "--no-verify")
    assert done.returncode == 2 and "CIVITAI_API_TOKEN" in done.stderr and "comfyfleet-civitai" in done.stderr
    token = "civitai-token-abcdef"
    fake = FakeModal(
        tmp_path,
        {"secrets": ["comfyfleet-api"], "deploy_output": deploy_output("https://acme--comfyfleet.modal.run")},
    )
    done = fake.run("deploy", str(out), "--no-verify", env={"CIVITAI_API_TOKEN": token})
    assert done.returncode == 0, done.stderr
    created = [c for c in fake.calls() if c["argv"][:2] == ["secret", "create"]]
    assert [c["argv"][2] for c in created] == ["comfyfleet-civitai"]
    assert created[0]["file_content"] == {"CIVITAI_API_TOKEN": token}
    assert token not in done.stdout + done.stderr
    assert "https://acme--comfyfleet.modal.run" in done.stdout
