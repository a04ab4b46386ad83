"""Jobs: one request's graph in ComfyUI, from submission to outputs, webhook and log row."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from comfyui_api import outbound, outputs, webhooks
from comfyui_api.comfy import ComfyClient, ComfyUnavailable, Tracker
from comfyui_api.settings import Settings, parse_networks
from comfyui_api.store import ExecutionLog

log = logging.getLogger("comfyui_api.jobs")
FINAL = {"completed", "failed", "cancelled"}


class QueueFull(Exception):
    """More jobs in flight than the configured limit (answer 429)."""


class KeyBusy(QueueFull):
    """This key has its own limit of jobs in flight (answer 429); other keys go on."""


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

    def public(self) -> dict[str, Any]:
        """The job as callers see it, without outputs (JobManager.view adds them)."""
        status = self.status
        if status == "queued" and self.tracker is not None and self.tracker.status == "running":
            status = "running"
        d: dict[str, Any] = {
            "id": self.id,
            "workflow": self.workflow,
            "status": status,
            "created_at": self.created_at,
            "started_at": self.started_at or (self.tracker.started_at if self.tracker else None),
            "finished_at": self.finished_at,
        }
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
        self.active_by_key: dict[str | None, int] = {}
        # Caller-given URLs (webhooks, image inputs) only reach public addresses.
        self.outbound = outbound.client(parse_networks(settings.allow_outbound))
        self.files = outputs.Outputs(comfy, settings.comfyui_output_dir, settings.output_retention_hours)
        self._tasks: set[asyncio.Task] = set()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await self.outbound.aclose()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    async def submit(
        self,
        workflow: str,
        params: dict[str, Any],
        graph: dict[str, Any],
        key_id: str | None,
        output_mode: str,
        webhook: str | None = None,
    ) -> Job:
        """Queue a graph in ComfyUI; QueueFull / ComfyUnavailable / ComfyRejected say why not."""
        if self.queue_depth() >= self.settings.queue_limit:
            raise QueueFull()
        if key_id is not None and self.active_by_key.get(key_id, 0) >= self.settings.max_jobs_per_key:
            raise KeyBusy()
        if not self.comfy.up:
            raise ComfyUnavailable(self.comfy.last_error)
        job = Job(
            id=self.settings.job_id_prefix + uuid.uuid4().hex,
            workflow=workflow,
            params=params,
            graph=graph,
            key_id=key_id,
            output_mode=output_mode,
            webhook=webhook,
        )
        outputs.place(graph, job.id, job.created_at)
        job.tracker = self.comfy.track(graph)
        self._count(key_id, 1)
        try:
            await self.comfy.submit(job.tracker)
        except Exception:
            self._count(key_id, -1)
            self.comfy.forget(job.tracker)
            raise
        self.jobs[job.id] = job
        while len(self.jobs) > self.settings.job_retention:
            old_id, old = next(iter(self.jobs.items()))
            if old.status not in FINAL:
                break
            self.jobs.pop(old_id)
        self.store.insert(
            {
                "id": job.id,
                "workflow": workflow,
                "key_id": key_id,
                "params": {k: _short(v) for k, v in params.items()},
                "status": "queued",
                "prompt_id": job.tracker.prompt_id,
                "created_at": job.created_at,
            }
        )
        self.spawn(self._follow(job))
        return job

    def _count(self, key_id: str | None, delta: int) -> None:
        self.active += delta
        n = self.active_by_key.get(key_id, 0) + delta
        if n > 0:
            self.active_by_key[key_id] = n
        else:
            self.active_by_key.pop(key_id, None)

    async def view(self, job: Job) -> dict[str, Any]:
        """The job as a caller sees it, outputs (base64 read from disk, or URLs) included when done."""
        d = job.public()
        if job.status == "completed":
            bucket = self.settings.object_store is not None
            d["outputs"] = await self.files.render(
                job.outputs,
                "url" if bucket else job.output_mode,
                lambda i: (
                    job.files[i]["url"] if bucket else f"{self.settings.public_url}/jobs/{job.id}/outputs/{i}"
                ),
            )
        return d

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
                job.error = _without_traceback(job, t.error or {"type": status})
        except Exception as exc:  # output fetch failed: the job failed, the service goes on
            log.exception("job %s failed while collecting outputs", job.id)
            job.status = "failed"
            job.error = {"type": "output_unavailable", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            self.comfy.forget(t)
            self._count(job.key_id, -1)
            job.finished_at = time.time()
            job.done.set()
        self.store.update(
            job.id,
            status=job.status,
            error=job.error,
            started_at=job.started_at,
            finished_at=job.finished_at,
            duration_ms=(job.finished_at - job.created_at) * 1000,
            outputs=job.files,
        )
        if job.webhook:
            event = {"completed": "job.completed", "cancelled": "job.cancelled"}.get(job.status, "job.failed")
            job.webhook_result = await webhooks.deliver(
                self.outbound,
                job.webhook,
                self.settings.webhook_secret,
                event,
                await self.view(job),
                self.settings.webhook_max_attempts,
                self.settings.webhook_backoff_s,
                self.settings.webhook_timeout_s,
            )

    async def _collect(self, job: Job) -> None:
        """Record ComfyUI's outputs as file references (read when a response needs them)."""
        t = job.tracker
        assert t is not None
        job.outputs = outputs.file_refs(t.outputs)
        job.files = [ref for ref in job.outputs if "filename" in ref]
        if self.settings.object_store is not None:  # the deployment's bucket: upload now, hand out its URLs
            for i, ref in enumerate(job.files):
                data, ctype = await self.files.read(ref)
                ref["url"] = await self.settings.object_store.upload(
                    f"{job.id}/{i}-{ref['filename']}", data, ctype
                )

    async def read_output(self, ref: dict[str, Any]) -> tuple[bytes, str]:
        """Bytes of one output file (FileNotFoundError when retention deleted it)."""
        return await self.files.read(ref)

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


def _without_traceback(job: Job, error: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's error as callers see it: the traceback goes to the log under an id, not to them."""
    trace = error.get("traceback")
    if not trace:
        return error
    log_id = "err_" + uuid.uuid4().hex[:12]
    log.error(
        "job %s (%s) failed [%s]: %s",
        job.id,
        job.workflow,
        log_id,
        "".join(trace) if isinstance(trace, list) else trace,
    )
    return {**{k: v for k, v in error.items() if k != "traceback"}, "log_id": log_id}


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
