"""Local stand-ins for Hugging Face, CivitAI and a plain file server, on 127.0.0.1.

They speak the parts of the real protocols that downloaders rely on:

- Hugging Face: ``/{org}/{repo}/resolve/{rev}/{path}`` (also ``datasets/``), HEAD and GET.
  Small files answer directly with ``ETag`` (git blob id); large ("LFS") files answer 302 to a
  CDN URL on another host name (``localhost`` instead of ``127.0.0.1``, so clients must not
  carry the token along), with ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``. Every
  answer carries ``X-Repo-Commit``. Gated repos answer 401 without a token and 403 with a
  wrong one, with ``X-Error-Code: GatedRepo`` as the Hub does.
- CivitAI: ``/api/v1/model-versions/{id}`` and ``/api/v1/models/{id}`` (JSON), and
  ``/api/download/models/{id}`` which needs ``Authorization: Bearer`` (or ``?token=``) and
  redirects to a presigned-looking file URL.
- Plain files: ``/files/{path}``.

All file answers support ``Range`` and HEAD. Counters record what was sent and how many
file bodies were being sent at once (``stats.peak``), and ``throttle`` / ``corrupt`` /
``cut`` / ``no_ranges`` inject slow transfers, wrong bytes, bodies that stop early (a close
without Content-Length, or a chunked body broken mid-chunk) and servers that ignore Range.
``connection_rate`` (bytes/s) paces every file answer, per connection, as a WAN link from a
CDN does (``--throttle-mbps`` when run standalone).

Standalone: ``python src/comfyfleet/devkit/upstreams/model_servers.py DIR`` serves every file below DIR
as plain files, HF repos (``DIR/hf/<org>/<repo>/...``) and CivitAI versions
(``DIR/civitai/<id>/<name>``), and prints the base URLs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

from comfyfleet.devkit.upstreams.model_handler import StoredFile, make_handler


@dataclass
class Stats:
    """What the servers sent, for assertions and benchmarks."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    active: int = 0
    peak: int = 0

    def sending(self, delta: int) -> None:
        with self.lock:
            self.active += delta
            self.peak = max(self.peak, self.active)

    def add(self, key: str, n: int) -> None:
        with self.lock:
            self.bytes_sent[key] = self.bytes_sent.get(key, 0) + n

    def seen(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests.append((method, path, headers))


def _store(path: Path) -> StoredFile:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    blob = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            blob.update(block)
    return StoredFile(path, h.hexdigest(), size, blob.hexdigest())


class Upstreams:
    """The three servers on one loopback port each, sharing a data directory and counters."""

    def __init__(
        self, root: Path, hf_token: str = "hf_test_token", civitai_token: str = "civitai_test_token"
    ):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hf_token = hf_token
        self.civitai_token = civitai_token
        self.hf_files: dict[tuple[str, str, str], StoredFile] = {}
        self.hf_gated: set[str] = set()
        self.civitai: dict[str, tuple[str, StoredFile, int]] = {}
        self.plain: dict[str, StoredFile] = {}
        self.stats = Stats()
        # key (as in stats) -> bytes per second, or -> replacement bytes
        self.throttle: dict[str, float] = {}
        self.corrupt: set[str] = set()
        self.connection_rate = 0.0  # bytes/s per connection for every file answer, 0 = as fast as it goes
        # key -> (bytes, "close" | "chunked"): answers without a Range header stop after that many bytes
        self.cut: dict[str, tuple[int, str]] = {}
        self.no_ranges: set[str] = set()  # keys whose answers ignore Range (200, whole file)
        self.redirects: dict[str, str] = {}  # plain file path -> Location to answer with
        self._servers: list[ThreadingHTTPServer] = []
        self._process: subprocess.Popen[bytes] | None = None
        self.hf_url = self.civitai_url = self.files_url = ""

    # -- content -----------------------------------------------------------

    def _write(self, rel: str, data: bytes | int) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, int):
            _write_random(path, data)
        else:
            path.write_bytes(data)
        return path

    def add_hf(
        self, repo: str, filename: str, data: bytes | int, rev: str = "main", gated: bool = False
    ) -> StoredFile:
        stored = _store(self._write(f"hf/{repo}/{rev}/{filename}", data))
        self.hf_files[(repo, rev, filename)] = stored
        if gated:
            self.hf_gated.add(repo)
        return stored

    def add_civitai(
        self, version_id: int, name: str, data: bytes | int, model_id: int | None = None
    ) -> StoredFile:
        stored = _store(self._write(f"civitai/{version_id}/{name}", data))
        self.civitai[str(version_id)] = (name, stored, model_id or version_id + 100000)
        return stored

    def add_file(self, rel: str, data: bytes | int) -> StoredFile:
        stored = _store(self._write(f"files/{rel}", data))
        self.plain[rel] = stored
        return stored

    def hf_resolve_url(self, repo: str, filename: str, rev: str = "main") -> str:
        """The URL as a manifest writes it (huggingface.co): clients map it with HF_ENDPOINT."""
        return f"https://huggingface.co/{repo}/resolve/{rev}/{filename}"

    def repo_commit(self, repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Upstreams:
        for kind in ("hf", "civitai", "files"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self, kind))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
            setattr(self, f"{kind}_url", f"http://127.0.0.1:{server.server_address[1]}")
        return self

    def start_process(self, timeout: float = 30) -> Upstreams:
        """Serve from a child process instead of threads (for test processes where gevent
        monkey-patches threading, as pyinfra's CLI module does). Content added so far is
        served; counters and fault injection stay with threaded servers."""
        config = {
            "hf_token": self.hf_token,
            "civitai_token": self.civitai_token,
            "gated": sorted(self.hf_gated),
            "connection_rate": self.connection_rate,
        }
        (self.root / "upstreams.json").write_text(json.dumps(config))
        ports = self.root / "ports.json"
        ports.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(self.root), "--ports-file", str(ports)],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not ports.exists():
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.stop()
                raise RuntimeError("model upstreams did not start")
            time.sleep(0.05)
        urls = json.loads(ports.read_text())
        self.hf_url, self.civitai_url, self.files_url = urls["hf"], urls["civitai"], urls["files"]
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> Upstreams:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cdn_base(self, kind: str) -> str:
        """Same port, another host name: what a redirect to a CDN looks like to a client."""
        return getattr(self, f"{kind}_url").replace("127.0.0.1", "localhost")


def _write_random(path: Path, size: int) -> None:
    # Deterministic per file name, cheap for large sizes: one random MiB repeated with a counter.
    seed = hashlib.sha256(path.name.encode()).digest()
    block = (seed * ((1 << 20) // 32 + 1))[: 1 << 20]
    with open(path, "wb") as f:
        written = 0
        i = 0
        while written < size:
            chunk = i.to_bytes(8, "big") + block[8:]
            chunk = chunk[: size - written]
            f.write(chunk)
            written += len(chunk)
            i += 1


def serve_directory(root: Path) -> Upstreams:
    """Serve an existing tree: hf/<org>/<repo>/<rev>/<file>, civitai/<id>/<name>, files/<path>.

    ``upstreams.json`` beside them may name tokens and gated repos:
    ``{"hf_token": "...", "civitai_token": "...", "gated": ["org/repo"]}``.
    """
    config = json.loads((root / "upstreams.json").read_text()) if (root / "upstreams.json").exists() else {}
    up = Upstreams(root, **{k: config[k] for k in ("hf_token", "civitai_token") if k in config})
    up.hf_gated = set(config.get("gated", []))
    up.connection_rate = float(config.get("connection_rate") or 0)
    for path in sorted((root / "hf").rglob("*")) if (root / "hf").exists() else []:
        if path.is_file():
            org, repo, rev, *rest = path.relative_to(root / "hf").parts
            up.hf_files[(f"{org}/{repo}", rev, "/".join(rest))] = _store(path)
    for path in sorted((root / "civitai").rglob("*")) if (root / "civitai").exists() else []:
        if path.is_file():
            vid = path.parent.name
            up.civitai[vid] = (path.name, _store(path), int(vid) + 100000)
    for path in sorted((root / "files").rglob("*")) if (root / "files").exists() else []:
        if path.is_file():
            up.plain[path.relative_to(root / "files").as_posix()] = _store(path)
    return up


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve local Hugging Face / CivitAI / file upstreams.")
    parser.add_argument("directory", nargs="?", default=".")
    parser.add_argument("--ports-file", help="write the base URLs here (JSON) once listening")
    parser.add_argument(
        "--throttle-mbps", type=float, default=None, help="pace every file answer, per connection"
    )
    args = parser.parse_args(argv)
    upstreams = serve_directory(Path(args.directory))
    if args.throttle_mbps:
        upstreams.connection_rate = args.throttle_mbps * 1e6
    upstreams.start()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    urls = {"hf": upstreams.hf_url, "civitai": upstreams.civitai_url, "files": upstreams.files_url}
    if args.ports_file:
        tmp = Path(args.ports_file + ".tmp")
        tmp.write_text(json.dumps(urls))
        tmp.rename(args.ports_file)
    print(f"HF_ENDPOINT={upstreams.hf_url}")
    print(f"CIVITAI_ENDPOINT={upstreams.civitai_url}  (token: {upstreams.civitai_token})")
    print(f"files: {upstreams.files_url}/files/<path>")
    print(f"gated HF token: {upstreams.hf_token}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        upstreams.stop()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
