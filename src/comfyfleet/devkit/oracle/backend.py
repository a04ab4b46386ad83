"""A minimal stand-in backend for ComfyUI's real frontend: its static files, a recorded /object_info.

This is a stand-in for ComfyUI's server (named as one): it answers the few endpoints the frontend
asks for at start with what a fresh ComfyUI 0.8.0 (single user, no models, empty queue) answers, and
serves a recorded /object_info of a real ComfyUI. Requests it does not know are logged in
`unknown` (method, path) and answered 404, as ComfyUI does for unknown paths.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

# A fresh install's settings, plus the two a headless run needs: no first-run template browser,
# no missing-models lookup (it only opens a dialog; it never changes the prompt).
DEFAULT_SETTINGS: dict[str, Any] = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
}

_EMPTY_QUEUE = {"queue_running": [], "queue_pending": []}


class FrontendBackend:
    """Serve `static_dir` (comfyui_frontend_package/static) and `object_info` on 127.0.0.1.

    `extensions` maps an extension name to a folder of JS files, served like a custom node pack's
    WEB_DIRECTORY at /extensions/<name>/... and listed by /api/extensions.
    """

    def __init__(
        self,
        static_dir: Path,
        object_info: Mapping[str, Any],
        extensions: Mapping[str, Path] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.static_dir = Path(static_dir)
        self._object_info = json.dumps(object_info).encode()
        self.extensions = {name: Path(d) for name, d in (extensions or {}).items()}
        self.settings = dict(DEFAULT_SETTINGS if settings is None else settings)
        self.unknown: list[tuple[str, str]] = []
        self.queued: list[dict[str, Any]] = []  # bodies POSTed to /prompt, oldest first
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle (the server runs on its own event loop in a thread) ---
    def start(self) -> str:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the caller below
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name="frontend-backend", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._log_unknown], client_max_size=64 * 1024**2)
        self._routes(app.router)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @web.middleware
    async def _log_unknown(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            self.unknown.append((request.method, request.path))
            raise
        if response.status == 404:
            self.unknown.append((request.method, request.path))
        return response

    # --- routes ---
    def _routes(self, r: web.UrlDispatcher) -> None:
        def both(method: str, path: str, handler: Any) -> None:
            # ComfyUI serves every API route both at /path and at /api/path.
            r.add_route(method, path, handler)
            r.add_route(method, "/api" + path, handler)

        def const(value: Any) -> Any:
            async def handler(_request: web.Request) -> web.Response:
                return web.json_response(value)

            return handler

        r.add_get("/", self._index)
        # Not ComfyUI's: how the process that started this server reads what the page sent.
        r.add_get("/__oracle/queued", self._get_queued)
        r.add_get("/__oracle/unknown", self._get_unknown)
        r.add_get("/ws", self._ws)
        both("GET", "/object_info", self._get_object_info)
        both("GET", "/users", const({"storage": "server", "migrated": True}))
        both("GET", "/settings", self._get_settings)
        both("GET", "/settings/{id}", self._get_setting)
        both("POST", "/settings", self._post_settings)
        both("POST", "/settings/{id}", self._post_setting)
        both("GET", "/userdata", const([]))
        both("GET", "/v2/userdata", const([]))
        both("POST", "/userdata/{file}", self._post_userdata)
        both("GET", "/extensions", self._get_extensions)
        both("GET", "/system_stats", const(_system_stats()))
        both("GET", "/features", const({"supports_preview_metadata": True, "max_upload_size": 104857600}))
        both("GET", "/prompt", const({"exec_info": {"queue_remaining": 0}}))
        both("POST", "/prompt", self._post_prompt)
        both("GET", "/queue", const(_EMPTY_QUEUE))
        both("GET", "/history", const({}))
        both("GET", "/jobs", const({"jobs": [], "pagination": {"offset": 0, "limit": 0, "total": 0}}))
        both("GET", "/embeddings", const([]))
        both("GET", "/models", const([]))
        both("GET", "/models/{folder}", const([]))
        both("GET", "/experiment/models", const([]))
        both("GET", "/i18n", const({}))
        both("GET", "/workflow_templates", const({}))
        both("GET", "/global_subgraphs", const({}))
        r.add_get("/extensions/{name}/{path:.+}", self._get_extension_file)
        r.add_static("/", self.static_dir, follow_symlinks=False)

    async def _get_queued(self, _request: web.Request) -> web.Response:
        return web.json_response(self.queued)

    async def _get_unknown(self, _request: web.Request) -> web.Response:
        return web.json_response(self.unknown)

    async def _index(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(self.static_dir / "index.html", headers={"Cache-Control": "no-cache"})

    async def _get_object_info(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._object_info, content_type="application/json")

    async def _post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.queued.append(body)
        n = len(self.queued)
        return web.json_response({"prompt_id": f"oracle-{n}", "number": n, "node_errors": {}})

    async def _get_settings(self, _request: web.Request) -> web.Response:
        return web.json_response(self.settings)

    async def _get_setting(self, request: web.Request) -> web.Response:
        return web.json_response(self.settings.get(request.match_info["id"]))

    async def _post_settings(self, request: web.Request) -> web.Response:
        self.settings.update(await request.json())
        return web.Response(status=200)

    async def _post_setting(self, request: web.Request) -> web.Response:
        self.settings[request.match_info["id"]] = await request.json()
        return web.Response(status=200)

    async def _post_userdata(self, request: web.Request) -> web.Response:
        await request.read()  # accepted and dropped: the oracle keeps no user files
        return web.json_response({"path": request.match_info["file"]})

    async def _get_extensions(self, _request: web.Request) -> web.Response:
        files = [
            "/" + p.relative_to(self.static_dir).as_posix()
            for p in sorted((self.static_dir / "extensions").rglob("*.js"))
        ]
        for name, folder in self.extensions.items():
            files += [
                f"/extensions/{name}/{p.relative_to(folder).as_posix()}" for p in sorted(folder.rglob("*.js"))
            ]
        return web.json_response(files)

    async def _get_extension_file(self, request: web.Request) -> web.StreamResponse:
        name, rel = request.match_info["name"], request.match_info["path"]
        folder = self.extensions.get(name)
        if folder is None:
            static = (self.static_dir / "extensions" / name / rel).resolve()
            if static.is_file() and static.is_relative_to(self.static_dir.resolve()):
                return web.FileResponse(static)
            raise web.HTTPNotFound()
        target = (folder / rel).resolve()
        if not target.is_relative_to(folder.resolve()) or not target.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(target)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId") or "oracle"
        status = {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}
        await ws.send_json({"type": "status", "data": status})
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and '"feature_flags"' in msg.data:
                await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        return ws


def _system_stats() -> dict[str, Any]:
    return {
        "system": {
            "os": "linux",
            "ram_total": 0,
            "ram_free": 0,
            "comfyui_version": "0.8.0",
            "required_frontend_version": "1.35.9",
            "installed_templates_version": "0.7.67",
            "required_templates_version": "0.7.67",
            "python_version": "3.11",
            "pytorch_version": "",
            "embedded_python": False,
            "argv": ["main.py", "--cpu"],
        },
        "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0}],
    }


class BackendProcess:
    """A :class:`FrontendBackend` in a child process, with the same ``start``/``stop``/``queued``/``unknown``.

    A child process, not a thread: once pyinfra's CLI module has monkey-patched the interpreter with
    gevent (other tests in the same pytest run do), a thread is a greenlet of the main thread and its
    running event loop makes Playwright's sync API refuse to start there.
    """

    def __init__(
        self,
        static_dir: Path,
        object_info: Mapping[str, Any],
        extensions: Mapping[str, Path] | None = None,
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="oracle-backend-"))
        (self._dir / "object_info.json").write_text(json.dumps(object_info))
        self._args = [
            sys.executable,
            "-m",
            "comfyfleet.devkit.oracle.backend",
            "--static",
            str(static_dir),
            "--object-info",
            str(self._dir / "object_info.json"),
            "--port-file",
            str(self._dir / "port"),
        ]
        for name, folder in (extensions or {}).items():
            self._args += ["--extension", f"{name}={folder}"]
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        port_file = self._dir / "port"
        self._proc = subprocess.Popen(self._args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the oracle's frontend backend did not start (exit {self._proc.poll()})")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        return self.url

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:  # noqa: S310 - our own loopback server
            return json.load(resp)

    @property
    def queued(self) -> list[dict[str, Any]]:
        return list(self._get("/__oracle/queued"))

    @property
    def unknown(self) -> list[tuple[str, str]]:
        return [tuple(x) for x in self._get("/__oracle/unknown")]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve ComfyUI's frontend with a recorded /object_info.")
    parser.add_argument("--static", required=True, type=Path)
    parser.add_argument("--object-info", required=True, type=Path)
    parser.add_argument("--port-file", required=True, type=Path)
    parser.add_argument("--extension", action="append", default=[], help="NAME=DIR of JS files")
    args = parser.parse_args(argv)
    extensions = {name: Path(d) for name, _, d in (e.partition("=") for e in args.extension)}
    backend = FrontendBackend(args.static, json.loads(args.object_info.read_text()), extensions)
    url = backend.start()
    args.port_file.write_text(url.rsplit(":", 1)[1])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    backend.stop()


if __name__ == "__main__":
    main()
