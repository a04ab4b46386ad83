"""A comfyui-api that requires a key, in front of the ComfyUI stand-in, both processes on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from standin.standin_launch import Standin, free_port, stop_process

KEY = "call-test-key-0123456789abcdef"
TINY = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x336699},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tiny"}},
}
INVERT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}},
}

# Twenty nodes of 0.2 s each: a job that runs for seconds, long enough to interrupt.
SLOW: dict[str, object] = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    **{str(n): {"class_type": "ImageInvert", "inputs": {"image": [str(n - 1), 0]}} for n in range(2, 21)},
    "21": {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": "slow"}},
}


@dataclass
class KeyedApi:
    url: str
    key_file: Path
    comfy_url: str


def start_api(
    root: Path, comfy_url: str, workflows: dict[str, object], key_file: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """comfyui-api serving these workflows on a free loopback port, answering /health; and the port."""
    wf = root / "workflows"
    wf.mkdir(parents=True)
    for name, graph in workflows.items():
        (wf / f"{name}.json").write_text(json.dumps(graph))
    port = free_port()
    log = (root / "api.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfyui_api",
            "--comfyui-url",
            comfy_url,
            "--workflows",
            str(wf),
            "--port",
            str(port),
            "--db",
            str(root / "api.sqlite3"),
            "--api-key-file",
            str(key_file),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    auth = {"authorization": f"Bearer {key_file.read_text().split()[-1]}"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", headers=auth, timeout=1).json()["workflows"]:
                return proc, port
        except (httpx.TransportError, ValueError, KeyError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError(f"comfyui-api did not start: {(root / 'api.log').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def keyed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedApi]:
    root = tmp_path_factory.mktemp("call")
    key_file = root / "api-keys"
    key_file.write_text(f"# the operator's key for this host\n{KEY}\n")
    key_file.chmod(0o600)
    # Every node takes 0.2 s, so an async job is polled at least once while it runs.
    comfy = Standin(root / "comfyui", env={"COMFYUI_STANDIN_NODE_DELAY": "0.2"})
    with comfy:
        proc, port = start_api(
            root / "api", comfy.url, {"tiny": TINY, "invert": INVERT, "slow": SLOW}, key_file
        )
        try:
            yield KeyedApi(f"http://127.0.0.1:{port}", key_file, comfy.url)
        finally:
            stop_process(proc)
