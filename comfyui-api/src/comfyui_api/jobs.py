"""Jobs: one request's graph in ComfyUI, from submission to outputs, webhook and log row."""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from comfyui_api import webhooks
from comfyui_api.comfy import ComfyClient, ComfyUnavailable, Tracker
from comfyui_api.settings import Settings
from comfyui_api.store import ExecutionLog

log = logging.getLogger("comfyui_api.jobs")
FINAL = {"completed", "failed", "cancelled"}


class QueueFull(Exception):
    """More jobs in flight than the configured limit (answer 429)."""


@dataclass
class Job:
    """One execution requested through the API."""

    id: str
    workflow: str
    params: dict[str, Any]
    graph: dict[str, Any]
    key_id: str | None
    output_mode: str
    webhook: str | None = None
    status: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    tracker: Tracker | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    webhook_result: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def public(self, include_outputs: bool = True) -> dict[str, Any]:
        status = self.status
        if status == "queued" and self.tracker is not None and self.tracker.status == "running":
            status = "running"
        d: dict[str, Any] = {"id": self.id, "workflow": self.workflow, "status": status,
                             "created_at": self.created_at,
                             "started_at": self.started_at or (self.tracker.started_at if self.tracker else None),
                             "finished_at": self.finished_at}
        t = self.tracker
        if t is not None:
            d["prompt_id"] = t.prompt_id
            if self.status not in FINAL:
                d["progress"] = t.progress
                d["node"] = t.node
        if self.finished_at is not None:
            d["duration_ms"] = round((self.finished_at - self.created_at) * 1000, 3)
        if self.error is not None:
            d["error"] = self.error
        if include_outputs and self.status == "completed":
            d["outputs"] = self.outputs
        if self.webhook_result is not None:
            d["webhook"] = self.webhook_result
        return d


def _short(value: Any) -> Any:
    """Parameters as logged: long strings (base64 images) replaced by their size."""
    if isinstance(value, str) and len(value) > 512:
        return f"<{len(value)} characters>"
    return value


class JobManager:
    """Submits jobs, collects their outputs, cancels, delivers webhooks, records the log."""

    def __init__(self, settings: Settings, comfy: ComfyClient, store: ExecutionLog) -> None:
        self.settings = settings
        self.comfy = comfy
        self.store = store
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.active = 0
        self.webhook_client = httpx.AsyncClient(follow_redirects=False)
        self._tasks: set[asyncio.Task] = set()
        out = settings.comfyui_output_dir
        self._output_root = os.path.realpath(out) if out is not None else None

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await self.webhook_client.aclose()

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    async def submit(self, workflow: str, params: dict[str, Any], graph: dict[str, Any], key_id: str | None,
                     output_mode: str, webhook: str | None = None) -> Job:
        """Queue a graph in ComfyUI; QueueFull / ComfyUnavailable / ComfyRejected say why not."""
        if self.queue_depth() >= self.settings.queue_limit:
            raise QueueFull()
        if not self.comfy.up:
            raise ComfyUnavailable(self.comfy.last_error)
        job = Job(id=self.settings.job_id_prefix + uuid.uuid4().hex, workflow=workflow, params=params, graph=graph, key_id=key_id,
                  output_mode=output_mode, webhook=webhook)
        job.tracker = self.comfy.track(graph)
        self.active += 1
        try:
            await self.comfy.submit(job.tracker)
        except Exception:
            self.active -= 1
            self.comfy.forget(job.tracker)
            raise
        self.jobs[job.id] = job
        while len(self.jobs) > self.settings.job_retention:
            old_id, old = next(iter(self.jobs.items()))
            if old.status not in FINAL:
                break
            self.jobs.pop(old_id)
        self.store.insert({"id": job.id, "workflow": workflow, "key_id": key_id,
                           "params": {k: _short(v) for k, v in params.items()}, "status": "queued",
                           "prompt_id": job.tracker.prompt_id, "created_at": job.created_at})
        task = asyncio.create_task(self._follow(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _follow(self, job: Job) -> None:
        t = job.tracker
        assert t is not None
        try:
            status = await t.future
            job.started_at = t.started_at
            if status == "success":
                await self._collect(job)
                job.status = "completed"
            elif status == "interrupted" and job.status == "cancelling":
                job.status = "cancelled"
            else:
                job.status = "failed"
                job.error = t.error or {"type": status}
        except Exception as exc:  # output fetch failed: the job failed, the service goes on
            log.exception("job %s failed while collecting outputs", job.id)
            job.status = "failed"
            job.error = {"type": "output_unavailable", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            self.comfy.forget(t)
            self.active -= 1
            job.finished_at = time.time()
            job.done.set()
        self.store.update(job.id, status=job.status, error=job.error, started_at=job.started_at,
                          finished_at=job.finished_at, duration_ms=(job.finished_at - job.created_at) * 1000,
                          outputs=job.files)
        if job.webhook:
            event = {"completed": "job.completed", "cancelled": "job.cancelled"}.get(job.status, "job.failed")
            job.webhook_result = await webhooks.deliver(
                self.webhook_client, job.webhook, self.settings.webhook_secret, event, job.public(),
                self.settings.webhook_max_attempts, self.settings.webhook_backoff_s, self.settings.webhook_timeout_s)

    async def _collect(self, job: Job) -> None:
        """Turn ComfyUI's output records into files (base64 or URL) and plain values."""
        t = job.tracker
        assert t is not None
        for node_id in sorted(t.outputs, key=lambda n: (len(n), n)):
            for kind, items in t.outputs[node_id].items():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item and item.get("type") in ("output", "temp", "input"):
                        ref = {"node": node_id, "kind": kind, "filename": str(item["filename"]),
                               "subfolder": str(item.get("subfolder") or ""), "type": item["type"]}
                        index = len(job.files)
                        job.files.append(ref)
                        out = {**ref, "content_type": mimetypes.guess_type(ref["filename"])[0] or "application/octet-stream"}
                        if self.settings.object_store is not None:  # the deployment's bucket wins
                            data, _ = await self.read_output(ref)
                            out["url"] = await self.settings.object_store.upload(
                                f"{job.id}/{index}-{ref['filename']}", data, out["content_type"])
                        elif job.output_mode == "base64":
                            data, _ = await self.read_output(ref)
                            out["size"] = len(data)
                            out["base64"] = base64.b64encode(data).decode()
                        else:
                            out["url"] = f"{self.settings.public_url}/jobs/{job.id}/outputs/{index}"
                        job.outputs.append(out)
                    else:
                        job.outputs.append({"node": node_id, "kind": kind, "value": item})

    async def read_output(self, ref: dict[str, Any]) -> tuple[bytes, str]:
        """Bytes of one output file: from ComfyUI's output folder when local, else through /view."""
        ctype = mimetypes.guess_type(ref["filename"])[0] or "application/octet-stream"
        root = self._output_root
        if root is not None and ref["type"] == "output":
            # Names come from ComfyUI's own 'executed' frames; still, never leave the folder.
            path = os.path.normpath(os.path.join(root, ref["subfolder"], ref["filename"]))
            if path.startswith(root + os.sep):
                try:
                    size = os.path.getsize(path)
                    if size < 1 << 20:
                        with open(path, "rb") as fh:
                            return fh.read(), ctype
                    return await asyncio.to_thread(Path(path).read_bytes), ctype
                except OSError:
                    pass  # not on this disk after all: ask ComfyUI
        return await self.comfy.view(ref["filename"], ref["subfolder"], ref["type"])

    async def cancel(self, job: Job) -> None:
        """Stop a job: delete it from ComfyUI's queue when pending, interrupt it when running."""
        if job.status in FINAL or job.tracker is None:
            return
        job.status = "cancelling"
        t = job.tracker
        if await self.comfy.cancel(t.prompt_id) == "deleted":
            # A prompt deleted from the pending queue sends no frame; settle it here.
            t.finish("interrupted", {"type": "cancelled"})
        try:
            await asyncio.wait_for(job.done.wait(), timeout=10.0)
        except asyncio.TimeoutError:
            t.finish("interrupted", {"type": "cancelled", "message": "ComfyUI did not confirm the interrupt"})
            await job.done.wait()

    def queue_depth(self) -> int:
        """Jobs ahead of a new one: ours in flight, or ComfyUI's whole queue when deeper."""
        return max(self.active, self.comfy.queue_remaining)


def guess_image_extension(data: bytes) -> str | None:
    """File extension for image bytes by magic number, or None when not an image ComfyUI loads."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    return None


def safe_input_name(name: str) -> bool:
    """A LoadImage filename that stays inside ComfyUI's input folder."""
    if not name or len(name) > 255 or "\\" in name or "\x00" in name:
        return False
    if name.startswith("/") or os.path.isabs(name):
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts)
