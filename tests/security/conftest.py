"""Attack catalogue fixtures: comfyui-api as a process in front of the ComfyUI stand-in, real sockets.

Addresses model the world: 127.0.0.1 is "inside" (ComfyUI, an internal service), 127.0.0.2 is
"the public internet" (the API is started with --allow-outbound 127.0.0.2/32, so it counts as
public), and callers connect from 127.0.0.1 or other loopback addresses when a test needs a
second client address. The API runs in its own mount namespace with an /etc/hosts the tests
rewrite, so DNS answers can change between a check and a connect (DNS rebinding).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyfleet.devkit.api_process import ApiProcess, png
from comfyfleet.devkit.standin import Standin

ALICE, BOB, ADMIN = "alice-" + "a" * 26, "bob-" + "b" * 28, "admin-" + "c" * 26
SECRET = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LWZvci10ZXN0cw=="
PUBLIC = "127.0.0.2"  # allowed by the API's --allow-outbound: stands for a public address

NODES = '''
import time
import comfy.model_management as mm

class SlowImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 1.0, "min": 0, "max": 60})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"
    def run(self, image, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            mm.throw_exception_if_processing_interrupted()
            time.sleep(0.02)
        return (image,)

class Boom:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"
    def run(self, image):
        raise RuntimeError("boom")

class TestSampler:
    """Shaped like KSampler's widgets (seed, steps 1..10000) without needing a model."""
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}),
                             "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                             "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0})}}
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"
    def run(self, image, seed, steps, cfg):
        return (image,)

NODE_CLASS_MAPPINGS = {"SlowImage": SlowImage, "Boom": Boom, "TestSampler": TestSampler}
'''
CANVAS = {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x336699}}
WORKFLOWS: dict[str, Any] = {
    "tiny": {
        "1": CANVAS,
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tiny"}},
    },
    "invert": {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    },
    "slow": {
        "1": CANVAS,
        "2": {"class_type": "SlowImage", "inputs": {"image": ["1", 0], "seconds": 1.5}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "slow"}},
    },
    "sampler": {
        "1": CANVAS,
        "2": {"class_type": "TestSampler", "inputs": {"image": ["1", 0], "seed": 1, "steps": 20, "cfg": 7.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "s"}},
    },
    "boom": {
        "1": CANVAS,
        "2": {"class_type": "Boom", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "boom"}},
    },
}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class Site:
    """A real HTTP server on one loopback address recording every request it gets.

    Paths: /img.png (an image), /drip (a PNG one byte per 0.5 s), /500 (an error whose body
    holds a secret), /redirect?to=URL (302), anything else POSTed (a webhook receiver).
    """

    def __init__(self, host: str, port: int = 0) -> None:
        self.hits: list[tuple[str, str, bytes]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in {"content-length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                site.hits.append(("GET", self.path, b""))
                if self.path == "/img.png":
                    self._answer(200, png((1, 2, 3)), {"content-type": "image/png"})
                elif self.path == "/drip":
                    self.send_response(200)
                    self.send_header("content-length", "100000")
                    self.end_headers()
                    try:
                        for b in png() * 100:
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                            time.sleep(0.5)
                    except OSError:
                        pass
                elif self.path == "/500":
                    self._answer(500, b"SECRET-UPSTREAM-BODY db-password=hunter2")
                elif self.path.startswith("/redirect?to="):
                    self._answer(302, b"", {"location": self.path.split("=", 1)[1]})
                else:
                    self._answer(404, b"no")

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                site.hits.append(("POST", self.path, body))
                self._answer(200, b"ok")

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Api(ApiProcess):
    """comfyui-api started as the hosts run it (python -m comfyui_api), in its own mount namespace."""

    def __init__(
        self,
        comfy: Standin,
        tmp: Path,
        extra: list[str],
        keys: bool = True,
        hosts: str = "127.0.0.1 localhost\n",
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp, self.comfy = tmp, comfy
        self.hosts = tmp / "hosts"
        self.hosts.write_text(hosts)
        self.db = tmp / "api.sqlite3"
        wf = tmp / "workflows"
        wf.mkdir(exist_ok=True)
        for name, graph in WORKFLOWS.items():
            (wf / f"{name}.json").write_text(json.dumps(graph))
        (tmp / "secret").write_text(SECRET)
        args = ["--comfyui-url", comfy.url, "--workflows", str(wf), "--db", str(self.db)]
        args += ["--webhook-secret-file", str(tmp / "secret"), "--webhook-attempts", "1"]
        args += ["--comfyui-output-dir", str(comfy.base_dir / "output"), *extra]
        if keys:
            (tmp / "keys").write_text(f"# callers\n{ALICE}\n{BOB}\n{ADMIN} admin\n")
            args += ["--api-key-file", str(tmp / "keys")]
        # Its own /etc/hosts: the tests decide what names resolve to, and may change it mid-request.
        wrap = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(self.hosts)]
        super().__init__(args, tmp / "api.log", wrap=wrap)
        self.start(lambda url: httpx.get(url + "/ready", timeout=1).json().get("ready"), timeout=30)

    def run(self, key: str | None, workflow: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
        return httpx.post(
            f"{self.url}/workflows/{workflow}",
            json=body,
            headers=auth(key) if key else {},
            timeout=kw.pop("timeout", 30),
            **kw,
        )


@pytest.fixture(scope="session")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    s = Standin(tmp_path_factory.mktemp("security-comfy"))
    s.add_custom_node("security-test-nodes", NODES)
    with s:
        yield s


@pytest.fixture(scope="session")
def internal() -> Iterator[Site]:
    """A service inside the host (loopback), which no caller-given URL may reach."""
    site = Site("127.0.0.1")
    yield site
    site.close()


@pytest.fixture(scope="session")
def public(internal: Site) -> Iterator[Site]:
    """A public web server (image host, webhook receiver) on the same port number as `internal`."""
    site = Site(PUBLIC, internal.port)
    yield site
    site.close()


@pytest.fixture(scope="session")
def api(comfy: Standin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The keyed service every category attacks: alice and bob are callers, admin is admin."""
    a = Api(
        comfy,
        tmp_path_factory.mktemp("security-api"),
        [
            "--allow-outbound",
            f"{PUBLIC}/32",
            "--fetch-deadline",
            "3",
            "--max-fetches-per-key",
            "2",
            "--rate-limit",
            "100000",
            "--rate-burst",
            "10000",
            "--auth-failures-per-minute",
            "10",
        ],
        hosts=f"127.0.0.1 localhost\n{PUBLIC} public.test\n127.0.0.1 multi.test\n{PUBLIC} multi.test\n"
        f"{PUBLIC} rebind.test\n",
    )
    yield a
    a.stop()


@pytest.fixture(scope="session")
def local_api(comfy: Standin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The keyless loopback mode an operator runs on the GPU host itself."""
    a = Api(comfy, tmp_path_factory.mktemp("security-local"), [], keys=False)
    yield a
    a.stop()


@pytest.fixture()
def fresh_api(comfy: Standin, tmp_path: Path) -> Callable[..., Api]:
    """An API of its own with extra flags, stopped after the test."""
    started: list[Api] = []

    def start(*extra: str) -> Api:
        a = Api(comfy, tmp_path / f"api{len(started)}", list(extra))
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def client_from(address: str) -> httpx.Client:
    """An HTTP client whose connections come from another loopback address (a second caller)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


__all__ = ["ADMIN", "ALICE", "BOB", "PUBLIC", "Api", "Site", "auth", "client_from", "png", "wait_for"]
