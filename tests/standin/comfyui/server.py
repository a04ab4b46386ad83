"""The stand-in's HTTP and websocket server: ComfyUI's routes and answers, each also under /api/."""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import os
import platform
import struct
import sys
import uuid
from typing import Any

import execution
import folder_paths
import nodes
from aiohttp import web
from comfyui_version import __version__
from standin_image import encode_png


def node_info(node_class: str) -> dict:
    """One class as /object_info describes it."""
    obj_class = nodes.NODE_CLASS_MAPPINGS[node_class]
    input_types = obj_class.INPUT_TYPES()
    info: dict[str, Any] = {
        "input": input_types,
        "input_order": {key: list(value.keys()) for key, value in input_types.items()},
        "output": list(obj_class.RETURN_TYPES),
        "output_is_list": list(getattr(obj_class, "OUTPUT_IS_LIST", [False] * len(obj_class.RETURN_TYPES))),
        "output_name": list(getattr(obj_class, "RETURN_NAMES", obj_class.RETURN_TYPES)),
        "name": node_class,
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_class, node_class),
        "description": getattr(obj_class, "DESCRIPTION", ""),
        "python_module": getattr(obj_class, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(obj_class, "CATEGORY", "sd"),
        "output_node": getattr(obj_class, "OUTPUT_NODE", False) is True,
    }
    if getattr(obj_class, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(obj_class, "EXPERIMENTAL", False):
        info["experimental"] = True
    return info


def _safe_subpath(base: str, *parts: str) -> str | None:
    """The joined path, or None when it would leave base."""
    base = os.path.abspath(base)
    full = os.path.abspath(os.path.join(base, *parts))
    if os.path.commonpath((base, full)) != base:
        return None
    return full


BINARY = object()  # marks a queued binary frame (bytes already framed) among the JSON events
# ComfyUI 0.8.0's comfy_api/feature_flags.py SERVER_FEATURE_FLAGS (max_upload_size at its 100 MB default).
SERVER_FEATURES = {
    "supports_preview_metadata": True,
    "max_upload_size": 100 * 1024 * 1024,
    "extension": {"manager": {"supports_v4": True}},
}


class PromptServer:
    """Routes, websocket clients and the hand-off of frames from the execution thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.messages: asyncio.Queue = asyncio.Queue()
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.feature_flags: dict[str, dict[str, Any]] = {}  # what each client said it supports
        self.client_id: str | None = None
        self.number = 0
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.free_memory_requested = False
        self.prompt_queue: execution.PromptQueue | None = None
        self.executor: execution.PromptExecutor | None = None
        self.app = web.Application(client_max_size=100 * 1024 * 1024)
        routes = web.RouteTableDef()
        self._add_routes(routes)
        api_routes = web.RouteTableDef()
        for route in routes:
            if isinstance(route, web.RouteDef):
                api_routes.route(route.method, "/api" + route.path)(route.handler)
        self.app.add_routes(api_routes)
        self.app.add_routes(routes)

    # Frames from the execution thread are queued onto the event loop and sent in order.
    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.loop.call_soon_threadsafe(self.messages.put_nowait, (event, data, sid))

    def send_preview(self, preview: Any, prompt_id: str, node_id: str) -> None:
        """An image handed to a progress bar, as ComfyUI 0.8.0 sends it: a binary frame to the prompt's client.

        Clients that announced ``supports_preview_metadata`` get type 4 (big-endian metadata
        length, JSON with prompt_id and node_id, then the PNG); others type 1 (format 2 = PNG,
        then the PNG). The PNG is written with compress_level 1, as ComfyUI's send_image does.
        """
        sid = self.client_id
        _kind, image, _max_size = preview
        png = encode_png(image, compress_level=1)
        if self.feature_flags.get(sid or "", {}).get("supports_preview_metadata"):
            meta = json.dumps(
                {
                    "node_id": node_id,
                    "prompt_id": prompt_id,
                    "display_node_id": node_id,
                    "parent_node_id": None,
                    "real_node_id": node_id,
                    "image_type": "image/png",
                }
            ).encode()
            frame = struct.pack(">II", 4, len(meta)) + meta + png
        else:
            frame = struct.pack(">II", 1, 2) + png
        self.send_sync(BINARY, frame, sid)

    def queue_updated(self) -> None:
        assert self.prompt_queue is not None
        self.send_sync(
            "status", {"status": {"exec_info": {"queue_remaining": self.prompt_queue.get_tasks_remaining()}}}
        )

    async def publish_loop(self) -> None:
        while True:
            event, data, sid = await self.messages.get()
            message = data if event is BINARY else json.dumps({"type": event, "data": data})
            targets = (
                [self.sockets[sid]]
                if sid is not None and sid in self.sockets
                else (list(self.sockets.values()) if sid is None else [])
            )
            for ws in targets:
                try:
                    await (ws.send_bytes(message) if event is BINARY else ws.send_str(message))
                except (ConnectionError, RuntimeError) as e:
                    logging.warning(f"send error: {e}")

    def _add_routes(self, routes: web.RouteTableDef) -> None:
        @routes.get("/ws")
        async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
            old = self.sockets.pop(sid, None)
            if old is not None:
                await old.close()
            self.sockets[sid] = ws
            try:
                assert self.prompt_queue is not None
                status = {
                    "status": {"exec_info": {"queue_remaining": self.prompt_queue.get_tasks_remaining()}},
                    "sid": sid,
                }
                await ws.send_str(json.dumps({"type": "status", "data": status}))
                if self.client_id == sid and self.last_node_id is not None:
                    await ws.send_str(json.dumps({"type": "executing", "data": {"node": self.last_node_id}}))
                first = True
                async for msg in ws:
                    # A first text frame {"type": "feature_flags", "data": {...}} is the client's
                    # feature list; ComfyUI answers with its own.
                    if first and msg.type == web.WSMsgType.TEXT:
                        try:
                            frame = json.loads(msg.data)
                        except ValueError:
                            frame = None
                        if isinstance(frame, dict) and frame.get("type") == "feature_flags":
                            self.feature_flags[sid] = dict(frame.get("data") or {})
                            await ws.send_str(json.dumps({"type": "feature_flags", "data": SERVER_FEATURES}))
                    first = False
            finally:
                if self.sockets.get(sid) is ws:
                    self.sockets.pop(sid, None)
                    self.feature_flags.pop(sid, None)
            return ws

        @routes.get("/")
        async def index(request: web.Request) -> web.Response:
            return web.Response(text="<html><body>ComfyUI stand-in</body></html>", content_type="text/html")

        @routes.get("/embeddings")
        async def get_embeddings(request: web.Request) -> web.Response:
            return web.json_response(
                [os.path.splitext(f)[0] for f in folder_paths.get_filename_list("embeddings")]
            )

        @routes.get("/models")
        async def list_model_types(request: web.Request) -> web.Response:
            return web.json_response(list(folder_paths.folder_names_and_paths.keys()))

        @routes.get("/models/{folder}")
        async def get_models(request: web.Request) -> web.Response:
            folder = request.match_info.get("folder", None)
            if folder not in folder_paths.folder_names_and_paths:
                return web.Response(status=404)
            return web.json_response(folder_paths.get_filename_list(folder))

        @routes.get("/extensions")
        async def get_extensions(request: web.Request) -> web.Response:
            return web.json_response([])

        @routes.post("/upload/image")
        async def upload_image(request: web.Request) -> web.Response:
            post = await request.post()
            image = post.get("image")
            overwrite = post.get("overwrite")
            image_upload_type = post.get("type") or "input"
            upload_dir = folder_paths.get_directory_by_type(str(image_upload_type))
            if upload_dir is None or not image or not getattr(image, "file", None):
                return web.Response(status=400)
            filename = image.filename
            if not filename:
                return web.Response(status=400)
            subfolder = str(post.get("subfolder", "") or "")
            full_output_folder = _safe_subpath(upload_dir, os.path.normpath(subfolder))
            if full_output_folder is None:
                return web.Response(status=400)
            filename = os.path.basename(filename)
            filepath = _safe_subpath(full_output_folder, filename)
            if filepath is None or not filename or filename in (".", ".."):
                return web.Response(status=400)
            os.makedirs(full_output_folder, exist_ok=True)
            split = os.path.splitext(filename)
            if overwrite is None or str(overwrite).lower() not in ("true", "1"):
                i = 1
                while os.path.exists(filepath):
                    filename = f"{split[0]} ({i}){split[1]}"
                    filepath = os.path.join(full_output_folder, filename)
                    i += 1
            with open(filepath, "wb") as f:
                f.write(image.file.read())
            return web.json_response({"name": filename, "subfolder": subfolder, "type": image_upload_type})

        @routes.get("/view")
        async def view_image(request: web.Request) -> web.StreamResponse:
            q = request.rel_url.query
            if "filename" not in q:
                return web.Response(status=404)
            filename = q["filename"]
            filename, output_dir = folder_paths.annotated_filepath(filename)
            if not filename:
                return web.Response(status=400)
            if filename[0] == "/" or ".." in filename:
                return web.Response(status=400)
            if output_dir is None:
                output_dir = folder_paths.get_directory_by_type(q.get("type", "output"))
            if output_dir is None:
                return web.Response(status=400)
            if "subfolder" in q:
                full_output_dir = _safe_subpath(output_dir, q["subfolder"])
                if full_output_dir is None:
                    return web.Response(status=403)
                output_dir = full_output_dir
            file = os.path.join(output_dir, os.path.basename(filename))
            if not os.path.isfile(file):
                return web.Response(status=404)
            content_type = mimetypes.guess_type(file)[0] or "application/octet-stream"
            with open(file, "rb") as f:
                body = f.read()
            return web.Response(
                body=body,
                content_type=content_type,
                headers={"Content-Disposition": f'filename="{os.path.basename(file)}"'},
            )

        @routes.get("/system_stats")
        async def system_stats(request: web.Request) -> web.Response:
            total, free = _ram()
            return web.json_response(
                {
                    "system": {
                        "os": sys.platform,
                        "ram_total": total,
                        "ram_free": free,
                        "comfyui_version": __version__,
                        "required_frontend_version": "1.34.9",
                        "installed_templates_version": None,
                        "python_version": sys.version,
                        "pytorch_version": "none (stand-in)",
                        "embedded_python": os.path.split(os.path.split(sys.executable)[0])[1]
                        == "python_embeded",
                        "argv": sys.argv,
                    },
                    "devices": [
                        {
                            "name": "cpu",
                            "type": "cpu",
                            "index": None,
                            "vram_total": total,
                            "vram_free": free,
                            "torch_vram_total": total,
                            "torch_vram_free": free,
                        }
                    ],
                }
            )

        @routes.get("/features")
        async def features(request: web.Request) -> web.Response:
            return web.json_response(
                {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}
            )

        @routes.get("/prompt")
        async def get_prompt(request: web.Request) -> web.Response:
            assert self.prompt_queue is not None
            return web.json_response(
                {"exec_info": {"queue_remaining": self.prompt_queue.get_tasks_remaining()}}
            )

        @routes.get("/object_info")
        async def get_object_info(request: web.Request) -> web.Response:
            out = {}
            for x in nodes.NODE_CLASS_MAPPINGS:
                try:
                    out[x] = node_info(x)
                except Exception:
                    logging.exception(
                        f"[ERROR] An error occurred while retrieving information for the '{x}' node."
                    )
            return web.json_response(out)

        @routes.get("/object_info/{node_class}")
        async def get_object_info_node(request: web.Request) -> web.Response:
            node_class = request.match_info.get("node_class", "")
            out = {}
            if node_class in nodes.NODE_CLASS_MAPPINGS:
                out[node_class] = node_info(node_class)
            return web.json_response(out)

        @routes.get("/history")
        async def get_history(request: web.Request) -> web.Response:
            assert self.prompt_queue is not None
            max_items = request.rel_url.query.get("max_items")
            offset = int(request.rel_url.query.get("offset", -1))
            return web.json_response(
                self.prompt_queue.get_history(
                    max_items=int(max_items) if max_items is not None else None, offset=offset
                )
            )

        @routes.get("/history/{prompt_id}")
        async def get_history_prompt_id(request: web.Request) -> web.Response:
            assert self.prompt_queue is not None
            return web.json_response(self.prompt_queue.get_history(prompt_id=request.match_info["prompt_id"]))

        @routes.get("/queue")
        async def get_queue(request: web.Request) -> web.Response:
            assert self.prompt_queue is not None
            running, pending = self.prompt_queue.get_current_queue()
            return web.json_response({"queue_running": running, "queue_pending": pending})

        @routes.post("/prompt")
        async def post_prompt(request: web.Request) -> web.Response:
            assert self.prompt_queue is not None
            try:
                json_data = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return web.json_response(
                    {
                        "error": {
                            "type": "invalid_prompt",
                            "message": "Invalid JSON body",
                            "details": "",
                            "extra_info": {},
                        },
                        "node_errors": {},
                    },
                    status=400,
                )
            if not isinstance(json_data, dict):
                json_data = {}
            number = self.number
            if "number" in json_data:
                number = float(json_data["number"])
            elif json_data.get("front"):
                number = -number
            self.number += 1
            if "prompt" not in json_data:
                error = {
                    "type": "no_prompt",
                    "message": "No prompt provided",
                    "details": "No prompt provided",
                    "extra_info": {},
                }
                return web.json_response({"error": error, "node_errors": {}}, status=400)
            prompt = json_data["prompt"]
            prompt_id = str(json_data.get("prompt_id") or uuid.uuid4())
            valid, error, outputs, node_errors = await asyncio.get_running_loop().run_in_executor(
                None, execution.validate_prompt, prompt
            )
            if not valid:
                logging.warning(f"invalid prompt: {error and error.get('message')}")
                return web.json_response({"error": error, "node_errors": node_errors}, status=400)
            extra_data = dict(json_data.get("extra_data") or {})
            if "client_id" in json_data:
                extra_data["client_id"] = json_data["client_id"]
            self.prompt_queue.put((number, prompt_id, prompt, extra_data, outputs))
            return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

        @routes.post("/queue")
        async def post_queue(request: web.Request) -> web.Response:
            assert self.prompt_queue is not None
            json_data = await request.json()
            if json_data.get("clear"):
                self.prompt_queue.wipe_queue()
            for prompt_id in json_data.get("delete", []):
                self.prompt_queue.delete_queue_item(prompt_id)
            return web.Response(status=200)

        @routes.post("/interrupt")
        async def post_interrupt(request: web.Request) -> web.Response:
            from comfy import model_management

            assert self.prompt_queue is not None
            try:
                json_data = await request.json()
            except json.JSONDecodeError:
                json_data = {}
            prompt_id = json_data.get("prompt_id") if isinstance(json_data, dict) else None
            if prompt_id:
                if prompt_id in self.prompt_queue.running_prompt_ids():
                    model_management.interrupt_current_processing()
                else:
                    logging.info(f"Prompt {prompt_id} is not currently running, skipping interrupt")
            else:
                model_management.interrupt_current_processing()
            return web.Response(status=200)

        @routes.post("/free")
        async def post_free(request: web.Request) -> web.Response:
            json_data = await request.json()
            if json_data.get("free_memory", False):
                self.free_memory_requested = True
            return web.Response(status=200)

        @routes.post("/history")
        async def post_history(request: web.Request) -> web.Response:
            assert self.prompt_queue is not None
            json_data = await request.json()
            if json_data.get("clear"):
                self.prompt_queue.wipe_history()
            for prompt_id in json_data.get("delete", []):
                self.prompt_queue.delete_history_item(prompt_id)
            return web.Response(status=200)


def _ram() -> tuple[int, int]:
    total = free = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                if key == "MemTotal":
                    total = int(value.split()[0]) * 1024
                elif key == "MemAvailable":
                    free = int(value.split()[0]) * 1024
    except OSError:
        pass
    return total, free


def system_summary() -> str:
    return f"Python version: {sys.version}\nPlatform: {platform.platform()}"
