"""The HTTP handler of the local model servers (Hugging Face-, CivitAI-compatible and plain downloads).

Split from :mod:`comfyfleet.devkit.upstreams.model_servers`, which holds the files and the knobs
(throttle, cuts, no Range) this handler reads from its :class:`Upstreams`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

LFS_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".sft")


@dataclass
class StoredFile:
    path: Path
    sha256: str
    size: int
    git_oid: str


def make_handler(up: Any, kind: str) -> type[BaseHTTPRequestHandler]:
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
                time.sleep(len(block) / rate)  # the block's time on the link, then it arrives whole
                self.wfile.write(block)
                self.wfile.flush()
                up.stats.add(key, len(block))
                left -= len(block)

        def _send_corrupt(self, f: Any, start: int, length: int, key: str) -> None:
            f.seek(start)
            data = bytearray(f.read(length))
            if data:
                data[len(data) // 2] ^= 0xFF
            self.wfile.write(bytes(data))
            up.stats.add(key, len(data))

    return Handler
