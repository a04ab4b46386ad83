"""Start and stop the ComfyUI stand-in (its source tree: tests/standin/comfyui) as a real process on loopback.

Tests of any area can use it:

    from comfyfleet.devkit.standin import Standin
    with Standin(tmp_path) as comfy:        # tmp_path becomes --base-directory
        httpx.get(comfy.url + "/system_stats")
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from comfyfleet.devkit import STANDIN_DIR


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_process(
    cmd: list[str],
    log_path: Path,
    ready: Callable[[], object],
    timeout: float,
    what: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server child process (output appended to ``log_path``) and wait until ``ready()`` is true.

    ``ready`` raising OSError or ValueError (refused, not JSON yet) counts as not yet; a child that
    exits, or is not ready after ``timeout`` s, raises RuntimeError with the end of its log.
    """
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if ready():
                return proc
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"{what} did not get ready within {timeout:g}s:\n{_tail(log_path)}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float = 10) -> None:
    """Terminate a server child process, killing it when it ignores SIGTERM for grace_s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ComfyUI ships custom_nodes/websocket_image_save.py in its checkout (full images as binary websocket
# frames, no file); the stand-in's version of it, for add_custom_node("websocket_image_save", ...).
WEBSOCKET_IMAGE_SAVE = """
import time
from comfy.utils import ProgressBar

class SaveImageWebsocket:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"images": ("IMAGE",)}}
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "api/image"
    def save_images(self, images):
        pbar = ProgressBar(len(images))
        for step, image in enumerate(images):
            pbar.update_absolute(step, len(images), ("PNG", image, None))
        return {}
    @classmethod
    def IS_CHANGED(s, images):
        return time.time()

NODE_CLASS_MAPPINGS = {"SaveImageWebsocket": SaveImageWebsocket}
"""


class Standin:
    """One stand-in ComfyUI process with its own base directory; restartable on the same port."""

    def __init__(
        self,
        base_dir: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        python: str | None = None,
        comfy_dir: Path = STANDIN_DIR,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.port = port or free_port()
        self.env = env or {}
        self.extra_args = extra_args or []
        self.python = python or sys.executable
        self.comfy_dir = comfy_dir
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "standin.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def models(self, folder: str) -> Path:
        """The models/<folder> directory of this instance (created)."""
        p = self.base_dir / "models" / folder
        p.mkdir(parents=True, exist_ok=True)
        return p

    def add_custom_node(self, name: str, init_py: str) -> Path:
        """Write custom_nodes/<name>/__init__.py; it loads at the next (re)start."""
        d = self.base_dir / "custom_nodes" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "__init__.py").write_text(init_py)
        return d

    def start(self, timeout: float = 20.0) -> Standin:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for folder in ("checkpoints", "loras", "vae", "upscale_models"):
            self.models(folder)
        # Real ComfyUI ships input/example.png; a fresh base directory gets a copy of ours.
        example = self.base_dir / "input" / "example.png"
        if not example.exists():
            example.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.comfy_dir / "input" / "example.png", example)
        cmd = [
            self.python,
            "main.py",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--cpu",
            "--base-directory",
            str(self.base_dir),
            *self.extra_args,
        ]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}

        def answers() -> bool:
            with urllib.request.urlopen(self.url + "/system_stats", timeout=1) as r:
                return r.status == 200

        what = f"stand-in on {self.url}"
        self.proc = start_process(cmd, self.log_path, answers, timeout, what, cwd=self.comfy_dir, env=env)
        return self

    def stop(self) -> None:
        stop_process(self.proc, grace_s=5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Standin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def copy_checkout(dest: Path) -> Path:
    """A copy of the stand-in laid out like a ComfyUI checkout (for tests that git-init or modify it)."""
    shutil.copytree(STANDIN_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest
