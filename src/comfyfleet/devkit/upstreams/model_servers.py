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
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LFS_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".sft")


@dataclass
class StoredFile:
    path: Path
    sha256: str
    size: int
    git_oid: str


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
            server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, kind))
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


def _make_handler(up: Upstreams, kind: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = f"comfyfleet-test-{kind}/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        # -- routing -----------------------------------------------------------

        def _route(self, head: bool) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(parsed.path)
            query = urllib.parse.parse_qs(parsed.query)
            up.stats.seen(self.command, self.path, dict(self.headers.items()))
            try:
                if kind == "hf":
                    self._hf(path, head)
                elif kind == "civitai":
                    self._civitai(path, query, head)
                else:
                    self._plain(path, head)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                return auth[7:]
            return None

        def _hf(self, path: str, head: bool) -> None:
            m = re.match(r"^/cdn/([0-9a-f]{64})/(.+)$", path)
            if m:
                stored = next((f for f in up.hf_files.values() if f.sha256 == m.group(1)), None)
                if stored is None:
                    return self._error(404, "not found")
                return self._send_file(stored, head, key=f"hf:{m.group(2)}")
            m = re.match(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if not m:
                return self._error(404, "not found", {"X-Error-Code": "RepoNotFound"})
            repo, rev, filename = m.group(2), m.group(3), m.group(4)
            known_repo = any(r == repo for r, _, _ in up.hf_files)
            if not known_repo:
                return self._error(401, "Repository not found", {"X-Error-Code": "RepoNotFound"})
            headers = {"X-Repo-Commit": up.repo_commit(repo)}
            if repo in up.hf_gated:
                token = self._token()
                if token is None:
                    return self._error(
                        401,
                        f"Access to model {repo} is restricted. You must be authenticated to access it.",
                        {**headers, "X-Error-Code": "GatedRepo"},
                    )
                if token != up.hf_token:
                    return self._error(
                        403,
                        f"Access to model {repo} is restricted and you are not in the authorized list.",
                        {**headers, "X-Error-Code": "GatedRepo"},
                    )
            stored = up.hf_files.get((repo, rev, filename))
            if stored is None:
                return self._error(404, "Entry not found", {**headers, "X-Error-Code": "EntryNotFound"})
            if filename.endswith(LFS_SUFFIXES):
                location = f"{up.cdn_base('hf')}/cdn/{stored.sha256}/{urllib.parse.quote(filename)}?X-Amz-Signature=abc"
                return self._redirect(
                    302,
                    location,
                    {
                        **headers,
                        "X-Linked-Etag": f'"{stored.sha256}"',
                        "X-Linked-Size": str(stored.size),
                        "ETag": f'"{stored.git_oid}"',
                    },
                )
            self._send_file(
                stored, head, key=f"hf:{filename}", extra={**headers, "ETag": f'"{stored.git_oid}"'}
            )

        def _civitai(self, path: str, query: dict[str, list[str]], head: bool) -> None:
            m = re.match(r"^/api/v1/model-versions/(\d+)$", path)
            if m:
                entry = up.civitai.get(m.group(1))
                if entry is None:
                    return self._json(404, {"error": "Model version not found"})
                name, stored, model_id = entry
                return self._json(
                    200,
                    {
                        "id": int(m.group(1)),
                        "modelId": model_id,
                        "name": "v1",
                        "downloadUrl": f"{up.civitai_url}/api/download/models/{m.group(1)}",
                        "files": [
                            {
                                "name": name,
                                "type": "Model",
                                "primary": True,
                                "sizeKB": stored.size / 1024,
                                "hashes": {"SHA256": stored.sha256.upper()},
                                "downloadUrl": f"{up.civitai_url}/api/download/models/{m.group(1)}",
                            }
                        ],
                    },
                )
            m = re.match(r"^/api/v1/models/(\d+)$", path)
            if m:
                versions = [
                    {"id": int(v), "name": "v1"}
                    for v, (_, _, mid) in up.civitai.items()
                    if str(mid) == m.group(1)
                ]
                if not versions:
                    return self._json(404, {"error": "Model not found"})
                return self._json(200, {"id": int(m.group(1)), "modelVersions": versions})
            m = re.match(r"^/api/download/models/(\d+)$", path)
            if m:
                entry = up.civitai.get(m.group(1))
                if entry is None:
                    return self._json(404, {"error": "Model version not found"})
                token = self._token() or query.get("token", [None])[0]
                if token is None:
                    return self._json(
                        401,
                        {
                            "error": "Unauthorized",
                            "message": "The creator of this asset requires you to be logged in to download it",
                        },
                    )
                if token != up.civitai_token:
                    return self._json(403, {"error": "Forbidden"})
                name, stored, _ = entry
                location = (
                    f"{up.cdn_base('civitai')}/files/{m.group(1)}/{urllib.parse.quote(name)}"
                    f"?X-Amz-Expires=86400&X-Amz-Signature=deadbeef"
                )
                return self._redirect(307, location, {})
            m = re.match(r"^/files/(\d+)/(.+)$", path)
            if m and m.group(1) in up.civitai:
                name, stored, _ = up.civitai[m.group(1)]
                if self.headers.get("Authorization"):
                    # A real presigned S3 URL rejects a second credential.
                    return self._error(400, "Only one auth mechanism allowed")
                return self._send_file(
                    stored,
                    head,
                    key=f"civitai:{name}",
                    extra={"Content-Disposition": f'attachment; filename="{name}"'},
                )
            self._json(404, {"error": "not found"})

        def _plain(self, path: str, head: bool) -> None:
            rel = path.removeprefix("/files/")
            if rel in up.redirects:
                return self._redirect(302, up.redirects[rel], {})
            stored = up.plain.get(rel)
            if stored is None or not path.startswith("/files/"):
                return self._error(404, "not found")
            self._send_file(stored, head, key=f"files:{rel}", extra={"ETag": f'"{stored.sha256[:16]}"'})

        # -- answers -----------------------------------------------------------

        def _error(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, data: Any) -> None:
            body = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _redirect(self, code: int, location: str, headers: dict[str, str]) -> None:
            self.send_response(code)
            self.send_header("Location", location)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send_file(
            self, stored: StoredFile, head: bool, key: str, extra: dict[str, str] | None = None
        ) -> None:
            size = stored.size
            start, end = 0, size - 1
            rng = None if key in up.no_ranges else self.headers.get("Range")
            status = 200
            if not rng and key in up.cut and not head:
                return self._send_cut(stored, key, *up.cut[key])
            if rng:
                m = re.match(r"^bytes=(\d+)-(\d*)$", rng.strip())
                if not m or int(m.group(1)) >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                status = 206
            length = end - start + 1
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if head:
                return
            up.stats.sending(1)
            try:
                with open(stored.path, "rb") as f:
                    rate = up.throttle.get(key) or up.connection_rate
                    if key in up.corrupt:
                        self._send_corrupt(f, start, length, key)
                    elif rate:
                        self._send_throttled(f, start, length, rate, key)
                    else:
                        sent = self.connection.sendfile(f, start, length)
                        up.stats.add(key, sent)
            finally:
                up.stats.sending(-1)

        def _send_cut(self, stored: StoredFile, key: str, n: int, mode: str) -> None:
            """The first n bytes, then the connection closes: no length (close) or inside a chunk."""
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            if mode == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()  # no Content-Length: without chunks, the close ends the body
            with open(stored.path, "rb") as f:
                data = f.read(n)
            if mode == "chunked":
                self.wfile.write(f"{stored.size:x}\r\n".encode())  # promises the whole file in one chunk
            self.wfile.write(data)
            self.wfile.flush()
            up.stats.add(key, len(data))

        def _send_throttled(self, f: Any, start: int, length: int, rate: float, key: str) -> None:
            f.seek(start)
            step = max(1, int(rate / 20))
            left = length
            while left:
                block = f.read(min(step, left))
                self.wfile.write(block)
                self.wfile.flush()
                up.stats.add(key, len(block))
                left -= len(block)
                time.sleep(len(block) / rate)

        def _send_corrupt(self, f: Any, start: int, length: int, key: str) -> None:
            f.seek(start)
            data = bytearray(f.read(length))
            if data:
                data[len(data) // 2] ^= 0xFF
            self.wfile.write(bytes(data))
            up.stats.add(key, len(data))

    return Handler


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
