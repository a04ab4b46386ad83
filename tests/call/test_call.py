"""`comfyfleet call` as a user runs it: a real CLI process, a real registry, a real comfyui-api over HTTP.

The API requires a key and runs in front of the ComfyUI stand-in (tests/standin), whose images
are real PNG files; the outputs saved by the command are decoded and their pixels checked.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from comfyui_api.client import Output
from standin.comfyui.standin_image import Image, decode_png, encode_png

from comfyfleet.cli.call import save_output
from comfyfleet.cli.main import main
from comfyfleet.devkit.standin import Standin, free_port, stop_process
from comfyfleet.registry import Endpoint, Registry

from .conftest import KEY, TINY, KeyedApi, start_api


def cli(state: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "COMFYFLEET_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "comfyfleet.cli.main", "call", *args],
        env={**base, "COMFYFLEET_STATE_DIR": str(state), "COLUMNS": "200", **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def deploy(
    state: Path, api: KeyedApi, workflow: str, env: str = "prod", key_file: Path | None = None
) -> None:
    """The registry record `comfyfleet ship` leaves: endpoint URL and the host's key file."""
    Registry(state / "deployments.sqlite3").upsert_deployment(
        name=workflow,
        environment=env,
        workflow=workflow,
        workflow_path=f"workflows/{workflow}.json",
        manifest_hash="d" * 64,
        target="inventory/test.py",
        endpoints=[Endpoint("gpu-1", f"{api.url}/workflows/{workflow}", str(key_file or api.key_file))],
    )


def saved(out: Path) -> list[Path]:
    return sorted(out.iterdir())


def test_call_a_deployment_saves_the_generated_image(keyed_api: KeyedApi, tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "renders"
    deploy(state, keyed_api, "tiny")
    r = cli(
        state,
        "tiny",
        "--input",
        "color=0xFF8000",
        "--input",
        "width=40",
        "-i",
        "height=24",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    [png] = saved(out)
    assert re.fullmatch(r"tiny-[0-9a-f]{32}-0\.png", png.name), png.name
    assert png.name.removesuffix("-0.png").removeprefix("tiny-") in r.stdout
    img = decode_png(png.read_bytes())
    assert (img.width, img.height, img.rgb[:3]) == (40, 24, bytes([0xFF, 0x80, 0x00]))
    assert KEY not in r.stdout + r.stderr

    # --async: submitted, polled to the end, saved beside the first without touching it.
    r = cli(state, "tiny.json", "--async", "--input", "color=0x0000FF", "--out", str(out))
    assert r.returncode == 0, r.stderr
    first, second = sorted(saved(out), key=lambda p: p.stat().st_mtime_ns)
    assert first == png and decode_png(second.read_bytes()).rgb[:3] == bytes([0, 0, 0xFF])


def test_call_a_target_with_an_image_file(keyed_api: KeyedApi, tmp_path: Path) -> None:
    """--target resolves the host and its key file from the inventory, as ship does."""
    inventory = tmp_path / "inventory.py"
    port = keyed_api.url.rsplit(":", 1)[1]
    inventory.write_text(
        # api_url on loopback: called directly (a host is otherwise reached through its SSH).
        f"hosts = [('127.0.0.1', {{'api_port': {port}, 'api_url': {keyed_api.url!r},"
        f" 'api_keys_file': {str(keyed_api.key_file)!r}}})]\n"
    )
    red = tmp_path / "red.png"
    red.write_bytes(encode_png(Image.solid(8, 6, 0xFF0000)))
    out = tmp_path / "out"
    r = cli(
        tmp_path / "state",
        "invert",
        "--target",
        str(inventory),
        "--input-file",
        f"image=@{red}",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    [png] = saved(out)
    img = decode_png(png.read_bytes())
    assert (img.width, img.height, img.rgb[:3]) == (8, 6, bytes([0, 0xFF, 0xFF]))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nope"], "no active deployment serves workflow 'nope'"),
        (["tiny", "--input", "colour=1"], "has no input 'colour' (its inputs: "),
        (["tiny", "--input", "width=wide"], "width=wide: width takes a integer"),
        (["tiny", "--input", "width"], "write it as key=value"),
        (["tiny", "--input", "width=999999"], "width"),
        (["invert", "--input-file", "image=@/nonexistent.png"], "No such file or directory"),
        # A key never travels over plain HTTP to another host; refused before any connection.
        (["tiny", "--host", "http://10.0.0.1:3000"], "only sent over https:// or to a loopback address"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    keyed_api: KeyedApi,
    tmp_path: Path,
    args: list[str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In this process (the CLI's own entry point, argv and all): a new interpreter per case costs seconds.
    state = tmp_path / "state"
    deploy(state, keyed_api, "tiny")
    deploy(state, keyed_api, "invert")
    monkeypatch.setenv("COMFYFLEET_STATE_DIR", str(state))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("COMFYFLEET_API_KEY", KEY)
    monkeypatch.setattr(sys, "argv", ["comfyfleet", "call", *args, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        main()
    stderr = capsys.readouterr().err
    assert exit_.value.code == 2, stderr
    assert says in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "out").exists()


def test_unreachable_target_and_wrong_key_exit_2(keyed_api: KeyedApi, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    r = cli(tmp_path / "state", "tiny", "--host", closed)
    assert r.returncode == 2 and "not reachable" in r.stderr and closed in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    wrong = tmp_path / "wrong-key"
    wrong.write_text("not-the-key\n")
    deploy(tmp_path / "state", keyed_api, "tiny", key_file=wrong)
    r = cli(tmp_path / "state", "tiny")
    assert r.returncode == 2 and "401" in r.stderr and "not-the-key" not in r.stderr, r.stderr


def test_failure_on_the_host_exits_1(tmp_path: Path) -> None:
    """ComfyUI down behind a running API: the host fails the call (503), not the caller's input."""
    key_file = tmp_path / "keys"
    key_file.write_text(KEY + "\n")
    comfy = Standin(tmp_path / "comfyui")
    with comfy:
        proc, port = start_api(tmp_path / "api", comfy.url, {"tiny": TINY}, key_file)
        try:
            comfy.stop()
            r = cli(
                tmp_path / "state",
                "tiny",
                "--host",
                f"http://127.0.0.1:{port}",
                env={"COMFYFLEET_API_KEY": KEY},
            )
        finally:
            stop_process(proc)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "call failed" in r.stderr and "503" in r.stderr, r.stderr


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(
    state: Path, url_args: list[str], out: Path, signal_when: Callable[[], bool], *call_args: str
) -> str:
    """Run `comfyfleet call` as on a terminal, press Ctrl-C once signal_when() holds; its stderr."""
    env = {k: v for k, v in os.environ.items() if k != "COMFYFLEET_API_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "comfyfleet.cli.main", "call", *call_args, *url_args, "--out", str(out)],
        env={**env, "COMFYFLEET_STATE_DIR": str(state), "COMFYFLEET_API_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As on a terminal: a suite started in the background (`cmd &`, nohup) ignores SIGINT,
        # and a child would inherit that and never see the Ctrl-C.
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 60
        while not signal_when():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert not out.exists()
    return stderr


def _job_cancelled(api: KeyedApi, stderr: str) -> None:
    job_id = re.search(r"cancelled job ([0-9a-f]{32})", stderr)
    assert job_id, stderr
    job = httpx.get(f"{api.url}/jobs/{job_id[1]}", headers={"authorization": f"Bearer {KEY}"}).json()
    assert job["status"] in ("cancelling", "cancelled"), job


def _running(api: KeyedApi) -> Callable[[], bool]:
    return lambda: bool(httpx.get(api.comfy_url + "/queue", timeout=5).json()["queue_running"])


def test_ctrl_c_cancels_the_async_job_on_the_host(keyed_api: KeyedApi, tmp_path: Path) -> None:
    state = tmp_path / "state"
    deploy(state, keyed_api, "slow")
    stderr = _interrupt(state, [], tmp_path / "out", _running(keyed_api), "slow", "--async")
    _job_cancelled(keyed_api, stderr)


class _HeldAnswers:
    """A real HTTP proxy in front of the API that holds each POST's answer until released:
    the moment a job is queued on the host but its submitter does not know its id yet."""

    def __init__(self, upstream: str) -> None:
        self.answered = threading.Event()  # the API has answered a POST (the job exists)
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                r = httpx.request(
                    self.command, upstream + self.path, content=body, headers=headers, timeout=30
                )
                if self.command == "POST":
                    proxy.answered.set()
                    proxy.release.wait(30)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_ctrl_c_while_the_submit_is_answered_still_cancels_the_job(
    keyed_api: KeyedApi, tmp_path: Path
) -> None:
    # The job is queued on the host, the answer naming it is on its way: Ctrl-C now must not
    # leave it running there unnamed.
    proxy = _HeldAnswers(keyed_api.url)
    try:

        def answered_then_release() -> bool:
            if not proxy.answered.is_set():
                return False
            threading.Timer(0.5, proxy.release.set).start()  # the answer lands after the Ctrl-C
            return True

        stderr = _interrupt(
            tmp_path / "state",
            ["--host", proxy.url],
            tmp_path / "out",
            answered_then_release,
            "slow",
            "--async",
        )
    finally:
        proxy.close()
    assert "cancelling slow once" in stderr, stderr
    _job_cancelled(keyed_api, stderr)


def _slow_executions(api: KeyedApi) -> dict[str, str]:
    """The API's execution log of the slow workflow: job id -> status (the API serves every test here)."""
    auth = {"authorization": f"Bearer {KEY}"}
    rows = httpx.get(f"{api.url}/executions", params={"workflow": "slow", "limit": 500}, headers=auth).json()
    return {str(r["id"]): str(r["status"]) for r in rows["executions"]}


def _one_new_execution(api: KeyedApi, earlier: dict[str, str]) -> str:
    """The final status of the one job logged since ``earlier`` (logged "queued" when submitted)."""
    deadline = time.monotonic() + 30
    while True:
        new = {k: v for k, v in _slow_executions(api).items() if k not in earlier}
        if new and all(v in ("completed", "failed", "cancelled") for v in new.values()):
            break
        assert time.monotonic() < deadline, f"the job never finished on the host: {new}"
        time.sleep(0.1)
    assert len(new) == 1, new
    return next(iter(new.values()))


def test_ctrl_c_during_a_sync_call_cancels_the_job_on_the_host(keyed_api: KeyedApi, tmp_path: Path) -> None:
    # Without --async the caller never learns the job's id: the service cancels a job whose
    # synchronous caller hung up, rather than let it hold the GPU for nobody.
    earlier = _slow_executions(keyed_api)
    stderr = _interrupt(
        tmp_path / "state", ["--host", keyed_api.url], tmp_path / "out", _running(keyed_api), "slow"
    )
    assert "interrupted" in stderr, stderr
    assert _one_new_execution(keyed_api, earlier) == "cancelled"
    assert not httpx.get(keyed_api.comfy_url + "/queue", timeout=5).json()["queue_running"]


def test_a_sync_call_past_its_timeout_fails_and_the_job_is_cancelled(
    keyed_api: KeyedApi, tmp_path: Path
) -> None:
    earlier = _slow_executions(keyed_api)
    r = cli(
        tmp_path / "state", "slow", "--host", keyed_api.url, "--timeout", "1", env={"COMFYFLEET_API_KEY": KEY}
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no answer within --timeout 1s, so the service cancelled the job" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _one_new_execution(keyed_api, earlier) == "cancelled"


def test_outputs_never_overwrite(tmp_path: Path) -> None:
    output = Output("ComfyUI_00001_.png", content_type="image/png")
    first = save_output(tmp_path, "tiny", "abc", 0, output, b"one")
    second = save_output(tmp_path, "tiny", "abc", 0, output, b"two")
    assert (first.name, second.name) == ("tiny-abc-0.png", "tiny-abc-0.1.png")
    assert (first.read_bytes(), second.read_bytes()) == (b"one", b"two")
    unnamed = save_output(tmp_path, "tiny", "abc", 1, Output("", content_type="audio/flac"), b"x")
    assert unnamed.name == "tiny-abc-1.flac"
