"""Helpers for the ship tests: a real HTTP API on loopback and real manifests.

``api_server`` is a small threaded HTTP server speaking the API service's contract
(/health, /ready, POST /workflows/{name} returning output files, file downloads), whose
behaviour a test sets per route: answer N times with 503 before 200, fail with 500,
return no outputs, stall. The full path against the real comfyui-api and the ComfyUI
stand-in runs in the fleet tests.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from comfyfleet.manifest import Manifest, ModelRef

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@dataclass
class ApiBehaviour:
    """What the fake API answers; counters say what it was asked."""

    ready_503_times: int = 0
    health_status: int = 200
    generate_status: int = 200
    generate_outputs: list[dict] | None = None
    generate_delay: float = 0.0
    disabled: set[str] = field(default_factory=set)
    required_key: str | None = None
    auth: list[str | None] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    bodies: list[dict] = field(default_factory=list)


class ApiServer:
    """A threaded HTTP server on 127.0.0.1 that can also start listening late."""

    def __init__(self, port: int = 0) -> None:
        self.behaviour = ApiBehaviour()
        behaviour = self.behaviour

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: object, ctype: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if status == 503:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(data)

            def _count(self, key: str) -> int:
                behaviour.calls[key] = behaviour.calls.get(key, 0) + 1
                return behaviour.calls[key]

            def _refused(self) -> bool:
                header = self.headers.get("Authorization")
                behaviour.auth.append(header)
                if behaviour.required_key and header != f"Bearer {behaviour.required_key}":
                    self._send(401, {"detail": "missing or unknown API key"})
                    return True
                return False

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self._refused():
                    return
                if self.path == "/health":
                    self._count("health")
                    self._send(behaviour.health_status, {"status": "ok", "version": "test"})
                elif self.path == "/ready":
                    n = self._count("ready")
                    if n <= behaviour.ready_503_times:
                        self._send(503, {"ready": False, "reason": "ComfyUI is starting"})
                    else:
                        self._send(200, {"ready": True})
                elif self.path.startswith("/files/"):
                    self._count("files")
                    self._send(200, PNG, "image/png")
                else:
                    self._send(404, {"detail": "not found"})

            def do_PUT(self) -> None:  # noqa: N802
                if not self.path.startswith("/admin/workflows/"):
                    self._send(404, {"detail": "not found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                workflow = self.path.rsplit("/", 1)[1]
                self._count("switch:" + workflow)
                if body.get("enabled"):
                    behaviour.disabled.discard(workflow)
                else:
                    behaviour.disabled.add(workflow)
                self._send(200, {"workflow": workflow, "enabled": bool(body.get("enabled"))})

            def do_POST(self) -> None:  # noqa: N802
                if self._refused():
                    return
                if (
                    not self.path.startswith("/workflows/")
                    or self.path.rsplit("/", 1)[1] in behaviour.disabled
                ):
                    self._send(404, {"detail": "not found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                behaviour.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self._count("generate:" + self.path.rsplit("/", 1)[1])
                if behaviour.generate_delay:
                    time.sleep(behaviour.generate_delay)
                if behaviour.generate_status != 200:
                    self._send(behaviour.generate_status, {"detail": "ComfyUI execution_error in node 3"})
                    return
                outputs = behaviour.generate_outputs
                if outputs is None:
                    outputs = [{"filename": "ComfyUI_00001_.png", "url": "/files/ComfyUI_00001_.png"}]
                self._send(200, {"status": "success", "outputs": outputs})

        self._handler = Handler
        self.port = port or free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, delay: float = 0.0) -> None:
        def serve() -> None:
            if delay:
                time.sleep(delay)
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
            self._server.daemon_threads = True
            self._server.serve_forever(poll_interval=0.05)

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        if not delay:
            wait_port(self.port)

    def stop(self) -> None:
        deadline = time.monotonic() + 5
        while (
            self._server is None and self._thread and self._thread.is_alive() and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def manifest_for(workflow: str = "txt2img", unresolved_model: str | None = None) -> Manifest:
    """A real Manifest object as analysis produces it."""
    data: dict = {
        "workflow": workflow,
        "source": f"workflows/{workflow}.json",
        "format": "api",
        "core_classes": ["KSampler", "SaveImage"],
        "models": [
            ModelRef(filename="v1-5.safetensors", folder="checkpoints", url="https://h/x").model_dump()
        ],
    }
    if unresolved_model:
        data["unresolved"] = {
            "models": [{"filename": unresolved_model, "node_ids": ["4"], "reason": "no download URL known"}]
        }
    return Manifest.model_validate(data)
