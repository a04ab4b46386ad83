"""The one connection to ComfyUI: an httpx client for calls and a persistent websocket for frames.

Each submitted prompt gets a Tracker; websocket frames (executing, progress, executed,
execution_success/error/interrupted) update it by prompt id. When the websocket comes back
after ComfyUI restarted, pending trackers are reconciled with /history and /queue: finished
ones complete from history, lost ones are resubmitted (or fail when out of attempts).

Binary frames: ComfyUI sends images handed to a progress bar to the prompt's client, type 4
(``supports_preview_metadata``, announced by this client: metadata JSON with prompt_id and
node_id, then the image) or type 1 (format code, then the image; attributed to the prompt and
node ComfyUI last said it executes). Images from an output node (SaveImageWebsocket, which
ComfyUI ships in custom_nodes/) are that node's outputs: held in memory (``ws_files``,
oldest dropped past WS_FILES_BYTES) instead of a file to fetch over /view. Images from other
nodes (sampler previews) are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import websockets

from comfyui_api.fastpost import FastPoster, FastPostError

log = logging.getLogger("comfyui_api.comfy")
# Output images that came over the websocket, kept until served (oldest dropped beyond this).
WS_FILES_BYTES = 256 * 1024 * 1024
FEATURE_FLAGS = json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})


class ComfyUnavailable(Exception):
    """ComfyUI cannot be reached right now (answer 503 with Retry-After)."""


class ComfyRejected(Exception):
    """ComfyUI answered POST /prompt with 400; .body is its {error, node_errors}."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__((body.get("error") or {}).get("message", "prompt rejected"))
        self.body = body


@dataclass
class Tracker:
    """What is known about one prompt in ComfyUI, filled in from websocket frames."""

    prompt_id: str
    graph: dict[str, Any]
    future: asyncio.Future
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: str = "queued"  # queued | running | success | error | interrupted | lost
    node: str | None = None
    progress: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    attempts: int = 1
    on_event: Callable[[Tracker, str], None] | None = None
    success_seen: bool = False

    def finish(self, status: str, error: dict[str, Any] | None = None) -> None:
        if self.future.done():
            return
        self.status = status
        self.error = error
        self.future.set_result(status)


class ComfyClient:
    """HTTP calls to ComfyUI plus the websocket listener that drives Trackers."""

    def __init__(self, base_url: str, resubmit_after_restart: int = 1) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = "comfyui-api-" + uuid.uuid4().hex
        ws_base = "ws" + self.base_url[4:] if self.base_url.startswith("http") else self.base_url
        self.ws_url = f"{ws_base}/ws?clientId={self.client_id}"
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(30.0, connect=3.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        # POST /prompt is the hot path: a lean keep-alive client when ComfyUI speaks plain http.
        self.fast = FastPoster(self.base_url) if self.base_url.startswith("http://") else None
        self.trackers: dict[str, Tracker] = {}
        # Frames for prompt ids not (yet) tracked: POST /prompt may answer after execution began.
        self._orphans: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.resubmit_after_restart = resubmit_after_restart
        self.up = False
        self.last_error = "not connected yet"
        self.object_info: dict[str, Any] = {}
        self.system_stats: dict[str, Any] = {}
        self.connects = 0
        self.queue_remaining = 0
        self.on_connect: list[Callable[[], Awaitable[None]]] = []
        self._task: asyncio.Task | None = None
        self._ws: Any = None
        self.ws_files: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._ws_bytes = 0
        self._executing: tuple[str | None, str | None] = (None, None)
        # Called with (node id, output) for every 'executed' frame of a tracked prompt.
        self.on_output: Callable[[str, dict[str, Any]], None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._ws_loop(), name="comfyui-websocket")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.http.aclose()
        if self.fast is not None:
            await self.fast.close()

    async def _ws_loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with websockets.connect(
                    self.ws_url,
                    max_size=None,
                    open_timeout=3,
                    ping_interval=10,
                    ping_timeout=10,
                    compression=None,
                ) as ws:
                    self._ws = ws
                    backoff = 0.1
                    await ws.send(FEATURE_FLAGS)  # must be the first frame ComfyUI reads
                    await self._connected()
                    async for message in ws:
                        if isinstance(message, bytes):
                            self._binary(message)
                        else:
                            self._dispatch(json.loads(message))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: down, retry
                self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if self.up:
                log.warning("lost ComfyUI websocket at %s: %s", self.base_url, self.last_error)
            self.up = False
            self._ws = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _connected(self) -> None:
        try:
            r = await self.http.get("/system_stats")
            r.raise_for_status()
            self.system_stats = r.json()
            r = await self.http.get("/object_info")
            r.raise_for_status()
            self.object_info = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ConnectionError(f"ComfyUI answered the websocket but not /object_info: {exc}") from exc
        self.up = True
        self.connects += 1
        log.info(
            "connected to ComfyUI %s at %s (%d node classes)",
            (self.system_stats.get("system") or {}).get("comfyui_version", "?"),
            self.base_url,
            len(self.object_info),
        )
        for cb in self.on_connect:
            await cb()
        if self.connects > 1 and self.trackers:
            asyncio.create_task(self._reconcile())

    def _binary(self, message: bytes) -> None:
        """An image frame (type 4 with metadata, or type 1), routed like a JSON frame as 'image'."""
        if len(message) < 8:
            return
        kind = int.from_bytes(message[:4], "big")
        if kind == 4:
            size = int.from_bytes(message[4:8], "big")
            try:
                meta = json.loads(message[8 : 8 + size])
            except ValueError:
                return
            if not isinstance(meta, dict):
                return
            pid, node = meta.get("prompt_id"), meta.get("node_id")
            ctype, body = str(meta.get("image_type") or "image/png"), message[8 + size :]
        elif kind == 1:
            pid, node = self._executing
            ctype = "image/png" if int.from_bytes(message[4:8], "big") == 2 else "image/jpeg"
            body = message[8:]
        else:
            return
        if pid is not None and node is not None:
            self._dispatch(
                {"type": "image", "data": {"prompt_id": pid, "node": str(node), "type": ctype, "bytes": body}}
            )

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        data = frame.get("data") or {}
        if kind == "executing":
            self._executing = (data.get("prompt_id"), data.get("node"))
        if kind == "status":
            # Broadcast on every queue change: ComfyUI's depth, other clients' prompts included.
            info = (data.get("status") or {}).get("exec_info") or {}
            self.queue_remaining = int(info.get("queue_remaining") or 0)
            return
        pid = data.get("prompt_id")
        if pid is None:
            return
        t = self.trackers.get(pid)
        if t is None:
            buf = self._orphans.setdefault(pid, [])
            buf.append(frame)
            while len(self._orphans) > 64:
                self._orphans.popitem(last=False)
            return
        self._apply(t, kind, data)

    def _apply(self, t: Tracker, kind: str | None, data: dict[str, Any]) -> None:
        if kind == "image":
            self._image_output(t, data)
            return
        if kind == "executed":
            if data.get("output") is not None:
                t.outputs[str(data.get("node"))] = data["output"]
                if self.on_output is not None:
                    self.on_output(str(data.get("node")), data["output"])
        elif kind == "progress":
            t.progress = {"value": data.get("value"), "max": data.get("max"), "node": data.get("node")}
        elif kind == "executing":
            node = data.get("node")
            if node is None:
                if not t.future.done():
                    asyncio.create_task(self._complete_from_history(t))
                return
            t.node = str(node)
        elif kind == "execution_start":
            t.status = "running"
            t.started_at = time.time()
        elif kind == "execution_success":
            t.success_seen = True
            # Outputs came as 'executed' frames; builds that skip them for cached nodes need /history.
            if t.outputs or not self._expects_outputs(t):
                t.finish("success")
        elif kind == "execution_error":
            t.finish(
                "error",
                {
                    "type": "execution_error",
                    **{
                        k: data.get(k)
                        for k in ("node_id", "node_type", "exception_type", "exception_message", "traceback")
                    },
                },
            )
        elif kind == "execution_interrupted":
            t.finish("interrupted", {"type": "execution_interrupted", "node_id": data.get("node_id")})
        if t.on_event is not None and kind is not None:
            t.on_event(t, kind)

    def _image_output(self, t: Tracker, data: dict[str, Any]) -> None:
        """Keep an image from an output node as that node's output; drop sampler previews."""
        node = data["node"]
        class_type = (t.graph.get(node) or {}).get("class_type", "")
        if not (self.object_info.get(class_type) or {}).get("output_node"):
            return
        images = t.outputs.setdefault(node, {}).setdefault("images", [])
        ext = "png" if data["type"] == "image/png" else "jpg"
        name = f"{t.prompt_id}-{node}-{len(images) + 1:05d}.{ext}"
        body: bytes = data["bytes"]
        self.ws_files[name] = (body, data["type"])
        self._ws_bytes += len(body)
        while self._ws_bytes > WS_FILES_BYTES and len(self.ws_files) > 1:
            _old, (dropped, _ctype) = self.ws_files.popitem(last=False)
            self._ws_bytes -= len(dropped)
        images.append({"filename": name, "subfolder": "", "type": "websocket"})

    def ws_file(self, name: str) -> tuple[bytes, str] | None:
        """An output image that came over the websocket, while it is still held."""
        return self.ws_files.get(name)

    def _expects_outputs(self, t: Tracker) -> bool:
        return any(
            (self.object_info.get(n.get("class_type", "")) or {}).get("output_node") for n in t.graph.values()
        )

    async def _complete_from_history(self, t: Tracker) -> None:
        try:
            entry = (await self.history(t.prompt_id)).get(t.prompt_id)
        except (httpx.HTTPError, ComfyUnavailable) as exc:
            t.finish("error", {"type": "comfyui_unreachable", "message": str(exc)})
            return
        if entry is None:
            return
        self._from_history(t, entry)

    def _from_history(self, t: Tracker, entry: dict[str, Any]) -> None:
        for nid, out in (entry.get("outputs") or {}).items():
            t.outputs.setdefault(str(nid), out)
        status = entry.get("status") or {}
        if status.get("status_str") == "success" or (not status and entry.get("outputs") is not None):
            t.finish("success")
            return
        error: dict[str, Any] = {"type": "execution_error"}
        for name, data in status.get("messages") or []:
            if name == "execution_interrupted":
                t.finish("interrupted", {"type": "execution_interrupted", "node_id": data.get("node_id")})
                return
            if name == "execution_error":
                error.update(
                    {k: data.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message")}
                )
        t.finish("error", error)

    async def _reconcile(self) -> None:
        """After a reconnect: complete trackers from history; resubmit the ones ComfyUI lost."""
        try:
            q = await self.queue()
        except (httpx.HTTPError, ComfyUnavailable):
            return
        known = {item[1] for item in q.get("queue_running", []) + q.get("queue_pending", [])}
        for t in list(self.trackers.values()):
            if t.future.done() or t.prompt_id in known:
                continue
            try:
                entry = (await self.history(t.prompt_id)).get(t.prompt_id)
            except (httpx.HTTPError, ComfyUnavailable):
                return
            if entry is not None:
                self._from_history(t, entry)
            elif t.attempts <= self.resubmit_after_restart:
                t.attempts += 1
                log.warning(
                    "ComfyUI lost prompt %s (restart?); submitting it again (attempt %d)",
                    t.prompt_id,
                    t.attempts,
                )
                try:
                    await self._post_prompt(t)
                except ComfyRejected as exc:
                    t.finish("error", {"type": "rejected_after_restart", **exc.body})
                except ComfyUnavailable:
                    t.attempts -= 1
            else:
                t.finish(
                    "lost",
                    {
                        "type": "comfyui_restarted",
                        "message": "ComfyUI restarted and lost this job; submit it again",
                    },
                )

    def track(self, graph: dict[str, Any]) -> Tracker:
        pid = str(uuid.uuid4())
        t = Tracker(prompt_id=pid, graph=graph, future=asyncio.get_running_loop().create_future())
        self.trackers[pid] = t
        return t

    def forget(self, t: Tracker) -> None:
        self.trackers.pop(t.prompt_id, None)

    async def submit(self, t: Tracker) -> None:
        """POST the tracker's graph; ComfyRejected on 400, ComfyUnavailable when ComfyUI is down."""
        if not self.up:
            raise ComfyUnavailable(self.last_error)
        await self._post_prompt(t)

    async def _post_prompt(self, t: Tracker) -> None:
        body = json.dumps({"prompt": t.graph, "client_id": self.client_id, "prompt_id": t.prompt_id}).encode()
        t.submitted_at = time.time()
        status, raw = await self._post("/prompt", body)
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {}
        if status == 400:
            raise ComfyRejected(answer if isinstance(answer, dict) else {"error": {"message": str(answer)}})
        if status != 200 or not isinstance(answer, dict):
            raise ComfyUnavailable(f"POST /prompt answered {status}")
        pid = answer.get("prompt_id", t.prompt_id)
        if pid != t.prompt_id:
            # Older builds choose their own id: re-key, then replay frames that already arrived.
            self.trackers.pop(t.prompt_id, None)
            t.prompt_id = pid
            self.trackers[pid] = t
        for frame in self._orphans.pop(pid, []):
            self._apply(t, frame.get("type"), frame.get("data") or {})

    async def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.fast is not None:
            try:
                return await self.fast.post_json(path, body)
            except FastPostError as exc:
                raise ComfyUnavailable(str(exc)) from exc
        try:
            r = await self.http.post(path, content=body, headers={"content-type": "application/json"})
        except httpx.TransportError as exc:
            raise ComfyUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return r.status_code, r.content

    async def _get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        try:
            r = await self.http.get(path, params=params)
        except httpx.TransportError as exc:
            raise ComfyUnavailable(f"{type(exc).__name__}: {exc}") from exc
        r.raise_for_status()
        return r.json()

    async def history(self, prompt_id: str) -> dict[str, Any]:
        return await self._get_json(f"/history/{prompt_id}")

    async def queue(self) -> dict[str, Any]:
        return await self._get_json("/queue")

    async def cancel(self, prompt_id: str) -> str:
        """Remove a pending prompt from ComfyUI's queue ('deleted'), or interrupt it ('interrupted')."""
        try:
            q = await self.queue()
            if any(item[1] == prompt_id for item in q.get("queue_pending", [])):
                await self.http.post("/queue", json={"delete": [prompt_id]})
                q = await self.queue()
                if not any(
                    item[1] == prompt_id for item in q.get("queue_running", []) + q.get("queue_pending", [])
                ):
                    return "deleted"
            await self.http.post("/interrupt", json={"prompt_id": prompt_id})
            return "interrupted"
        except httpx.TransportError as exc:
            raise ComfyUnavailable(str(exc)) from exc

    async def view(self, filename: str, subfolder: str, kind: str) -> tuple[bytes, str]:
        """An output file's bytes from ComfyUI's /view (HTTPStatusError when it answers an error)."""
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        if self.fast is not None:
            # The API without ComfyUI's output folder on its disk: one lean round trip per file.
            try:
                status, body = await self.fast.get("/view?" + urlencode(params))
            except FastPostError as exc:
                raise ComfyUnavailable(str(exc)) from exc
            if status != 200:
                req = httpx.Request("GET", f"{self.base_url}/view", params=params)
                raise httpx.HTTPStatusError(
                    f"/view answered {status}", request=req, response=httpx.Response(status)
                )
            return body, mimetypes.guess_type(filename)[0] or "application/octet-stream"
        try:
            r = await self.http.get(
                "/view", params={"filename": filename, "subfolder": subfolder, "type": kind}
            )
        except httpx.TransportError as exc:
            raise ComfyUnavailable(str(exc)) from exc
        r.raise_for_status()
        return r.content, r.headers.get("content-type", "application/octet-stream")

    async def upload_image(
        self, name: str, data: bytes, content_type: str, subfolder: str = "", overwrite: bool = True
    ) -> dict[str, Any]:
        try:
            r = await self.http.post(
                "/upload/image",
                files={"image": (name, data, content_type)},
                data={"overwrite": "true" if overwrite else "false", "type": "input", "subfolder": subfolder},
            )
        except httpx.TransportError as exc:
            raise ComfyUnavailable(str(exc)) from exc
        r.raise_for_status()
        return r.json()
