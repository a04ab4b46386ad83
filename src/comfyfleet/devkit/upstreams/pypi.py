"""A tiny PEP 503 package index on 127.0.0.1 serving pure-Python wheels built here.

Test hosts (and their runtime containers, on the host network) install node packs'
requirements from it with ``pip install --index-url http://127.0.0.1:PORT/simple/``;
no registry is reached. Wheels are written with :mod:`zipfile` (the wheel format is a
zip with a dist-info folder), so building one takes milliseconds and needs no tools.

Standalone: ``python src/comfyfleet/devkit/upstreams/pypi.py DIR`` serves the wheels already in DIR.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(
    directory: Path, name: str, version: str, requires: list[str] | None = None, code: str = ""
) -> Path:
    """Write ``name-version-py3-none-any.whl`` importing as ``name`` (dashes → underscores)."""
    directory.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    dist = f"{module}-{version}"
    files = {
        f"{module}/__init__.py": (code or f"__version__ = {version!r}\n").encode(),
        f"{dist}.dist-info/METADATA": (
            "Metadata-Version: 2.1\n"
            f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires or [])
        ).encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: comfyfleet-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "\n".join(_record_line(p, d) for p, d in files.items()) + f"\n{dist}.dist-info/RECORD,,\n"
    path = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p, d in files.items():
            zf.writestr(p, d)
        zf.writestr(f"{dist}.dist-info/RECORD", record)
    return path


def write_index(directory: Path) -> None:
    """(Re)write simple/<project>/index.html for every wheel in directory."""
    projects: dict[str, list[Path]] = {}
    for whl in sorted(directory.glob("*.whl")):
        projects.setdefault(_norm(whl.name.split("-")[0]), []).append(whl)
    simple = directory / "simple"
    simple.mkdir(exist_ok=True)
    links = "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(projects))
    (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    for project, wheels in projects.items():
        (simple / project).mkdir(exist_ok=True)
        rows = "".join(
            f'<a href="../../{html.escape(w.name)}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">'
            f"{html.escape(w.name)}</a>\n"
            for w in wheels
        )
        (simple / project / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{rows}</body></html>\n")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base
        pass


class PackageIndex:
    """Serves a directory of wheels as a simple index on 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._server: ThreadingHTTPServer | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def add(self, name: str, version: str, requires: list[str] | None = None, code: str = "") -> Path:
        path = build_wheel(self.directory, name, version, requires, code)
        write_index(self.directory)
        return path

    def start(self) -> PackageIndex:
        write_index(self.directory)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(self.directory)))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/simple/"
        return self

    def start_process(self, timeout: float = 30) -> PackageIndex:
        """Serve from a child process (``python -m http.server``), safe under gevent monkey-patching."""
        import socket

        write_index(self.directory)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
                str(self.directory),
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise RuntimeError("package index did not start") from None
                time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}/simple/"
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait(10)
            self._process = None
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> PackageIndex:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    index = PackageIndex(Path(sys.argv[1] if len(sys.argv) > 1 else ".")).start()
    print(f"pip install --index-url {index.url} NAME")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        index.stop()
