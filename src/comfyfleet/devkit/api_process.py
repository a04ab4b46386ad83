"""Start and stop comfyui-api as a real child process on a free loopback port (tests and benchmarks).

    api = ApiProcess(["--comfyui-url", comfy.url, "--workflows", str(wf), "--db", str(db)], tmp / "api.log")
    api.start(ready=lambda url: httpx.get(url + "/ready", timeout=1).json().get("ready"))
    ...
    api.stop()

``python -m comfyui_api`` by default, or a built .pyz (``pyz=``) under a given interpreter
(``python=``); ``wrap`` goes in front of the command (e.g. ``unshare -m ...``). The port is
chosen here and appended as ``--port``; the process's output goes to ``log_path``.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import comfyui_api
import httpx

from comfyfleet.devkit.standin import free_port, start_process, stop_process

API_SRC = Path(comfyui_api.__file__).resolve().parents[1]
"""The folder holding the ``comfyui_api`` package the children import (also without an install)."""


class ApiProcess:
    """One comfyui-api process; ``url`` is where it answers once :meth:`start` returned."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        python: str | None = None,
        pyz: Path | None = None,
        wrap: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        runner = [python or sys.executable, *([str(pyz)] if pyz else ["-m", "comfyui_api"])]
        self.cmd = [*wrap, *runner, *args, "--port", str(self.port)]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[str], object], timeout: float = 20.0) -> None:
        """Start it and wait until ``ready(url)`` is true (HTTP errors and non-JSON count as not yet)."""

        def probe() -> object:
            try:
                return ready(self.url)
            except httpx.HTTPError:
                return False

        env = {**os.environ, "PYTHONPATH": str(API_SRC)}
        self.proc = start_process(
            self.cmd, self.log_path, probe, timeout, f"comfyui-api on {self.url}", env=env
        )

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def png(color: tuple[int, int, int] = (10, 200, 30), size: int = 8) -> bytes:
    """A valid ``size`` x ``size`` RGB PNG of one colour (an image input for tests)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    raw = b"".join(b"\x00" + bytes(color) * size for _ in range(size))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
