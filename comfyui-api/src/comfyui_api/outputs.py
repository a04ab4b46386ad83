"""Output files: where ComfyUI writes them, how callers get them, and when they are deleted.

Layout: the API rewrites every `filename_prefix` of a job's graph to
`api/<YYYY-MM-DD>/<HH>/<job id>/<prefix>` (UTC), so ComfyUI's SaveImage (which lists its
target folder on every save to pick a counter) lists one small folder per job, however
many outputs the host has served. Retention: with the output folder on this host, a
periodic sweep deletes whole hour folders past the retention by their names (no walk over
every job) and, in the one hour folder the cutoff falls in, the job folders older than it;
nothing outside `api/`, and no folder whose name is not a date or hour, is touched.

Jobs keep only file references; base64 bodies are read from disk (or ComfyUI's /view)
when a response is rendered, so finished jobs cost no output bytes in memory. Without the
output folder on this host, each file is requested from /view as soon as ComfyUI's
'executed' frame names it, while ComfyUI finishes the prompt; the answer waits (at most
PREFETCHED of them, oldest dropped) for the response that reads it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import os
import shutil
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from comfyui_api.comfy import ComfyClient

log = logging.getLogger("comfyui_api.outputs")
API_FOLDER = "api"
PREFETCHED = 64


def job_folder(job_id: str, created_at: float) -> str:
    return f"{API_FOLDER}/{time.strftime('%Y-%m-%d/%H', time.gmtime(created_at))}/{job_id}"


def place(graph: dict[str, Any], job_id: str, created_at: float) -> dict[str, Any]:
    """The graph with each literal filename_prefix moved under this job's own folder."""
    folder = job_folder(job_id, created_at)
    for node in graph.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        prefix = inputs.get("filename_prefix")
        if isinstance(prefix, str):
            parts = [p for p in prefix.replace("\\", "/").split("/") if p not in ("", ".", "..")]
            inputs["filename_prefix"] = "/".join([folder, *(parts or ["ComfyUI"])])
    return graph


def file_refs(node_outputs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """ComfyUI's 'executed' outputs as a flat list: file refs ({node, kind, filename, ...}) and values."""
    out: list[dict[str, Any]] = []
    for node_id in sorted(node_outputs, key=lambda n: (len(n), n)):
        for kind, items in node_outputs[node_id].items():
            if not isinstance(items, list):
                continue
            for item in items:
                if (
                    isinstance(item, dict)
                    and "filename" in item
                    and item.get("type") in ("output", "temp", "input", "websocket")
                ):
                    out.append(
                        {
                            "node": node_id,
                            "kind": kind,
                            "filename": str(item["filename"]),
                            "subfolder": str(item.get("subfolder") or ""),
                            "type": item["type"],
                        }
                    )
                else:
                    out.append({"node": node_id, "kind": kind, "value": item})
    return out


class Outputs:
    """Reads output files (local folder first, else ComfyUI's /view) and sweeps old ones."""

    def __init__(self, comfy: ComfyClient, output_dir: Path | None, retention_hours: float) -> None:
        self.comfy = comfy
        self.root = os.path.realpath(output_dir) if output_dir is not None else None
        self.retention_s = retention_hours * 3600
        self._prefetched: OrderedDict[tuple[str, str, str], asyncio.Task] = OrderedDict()
        if self.root is None and comfy is not None:
            comfy.on_output = self.prefetch

    def prefetch(self, node: str, output: dict[str, Any]) -> None:
        """Start fetching the files one 'executed' frame names (no output folder on this host)."""
        for ref in file_refs({node: output}):
            if "filename" not in ref or ref["type"] == "websocket":
                continue
            key = (ref["type"], ref["subfolder"], ref["filename"])
            if key in self._prefetched:
                continue
            task = asyncio.create_task(self.comfy.view(ref["filename"], ref["subfolder"], ref["type"]))
            task.add_done_callback(_quiet)
            self._prefetched[key] = task
            while len(self._prefetched) > PREFETCHED:
                self._prefetched.popitem(last=False)[1].cancel()

    def content_type(self, ref: dict[str, Any]) -> str:
        return mimetypes.guess_type(ref["filename"])[0] or "application/octet-stream"

    async def read(self, ref: dict[str, Any]) -> tuple[bytes, str]:
        """Bytes of one output file; FileNotFoundError when it is gone (deleted by retention)."""
        ctype = self.content_type(ref)
        if ref["type"] == "websocket":  # SaveImageWebsocket: the bytes came with the frames, no file
            held = self.comfy.ws_file(ref["filename"])
            if held is None:
                raise FileNotFoundError(ref["filename"])
            return held
        root = self.root
        if root is not None and ref["type"] == "output":
            # Names come from ComfyUI's own 'executed' frames; still, never leave the folder.
            path = os.path.normpath(os.path.join(root, ref["subfolder"], ref["filename"]))
            if path.startswith(root + os.sep):
                try:
                    if os.path.getsize(path) < 1 << 20:
                        with open(path, "rb") as fh:
                            return fh.read(), ctype
                    return await asyncio.to_thread(Path(path).read_bytes), ctype
                except OSError:
                    pass  # not on this disk after all: ask ComfyUI
        early = self._prefetched.pop((ref["type"], ref["subfolder"], ref["filename"]), None)
        try:
            if early is not None and not early.cancelled():
                return await early
            return await self.comfy.view(ref["filename"], ref["subfolder"], ref["type"])
        except httpx.HTTPStatusError as exc:
            raise FileNotFoundError(ref["filename"]) from exc

    async def render(self, refs: list[dict[str, Any]], mode: str, url_of: Any) -> list[dict[str, Any]]:
        """What a caller sees of a job's outputs: each file as base64 or a download URL."""
        shown: list[dict[str, Any]] = []
        index = 0
        for ref in refs:
            if "filename" not in ref:
                shown.append(ref)
                continue
            out = {**ref, "content_type": self.content_type(ref)}
            if mode == "base64":
                try:
                    data, _ = await self.read(ref)
                    out["size"] = len(data)
                    out["base64"] = base64.b64encode(data).decode()
                except FileNotFoundError:
                    out["expired"] = True
            else:
                out["url"] = url_of(index)
            index += 1
            shown.append(out)
        return shown

    def sweep(self, now: float | None = None) -> int:
        """Delete job folders under api/ older than the retention; returns how many folders went."""
        if self.root is None or self.retention_s <= 0:
            return 0
        cutoff = (now or time.time()) - self.retention_s
        removed = 0
        for day in _entries(os.path.join(self.root, API_FOLDER)):
            for hour in _entries(day.path):
                start = _hour_start(day.name, hour.name)
                if start is None or start > cutoff:
                    continue
                if start + 3600 <= cutoff:
                    removed += _remove(hour.path)
                    continue
                for job in _entries(hour.path):  # the hour the cutoff falls in: job by job
                    try:
                        old = job.stat(follow_symlinks=False).st_mtime < cutoff
                    except OSError:
                        continue
                    if old:
                        removed += _remove(job.path)
            for folder in (*(h.path for h in _entries(day.path)), day.path):
                try:
                    os.rmdir(folder)  # only succeeds once empty
                except OSError:
                    pass
        return removed

    async def sweep_forever(self) -> None:
        if self.root is None or self.retention_s <= 0:
            return
        interval = max(1.0, min(300.0, self.retention_s / 4))
        while True:
            try:
                removed = await asyncio.to_thread(self.sweep)
                if removed:
                    log.info(
                        "deleted %d job output folders older than %.1f h", removed, self.retention_s / 3600
                    )
            except Exception:  # the sweep must outlive any one bad folder
                log.exception("output retention sweep failed")
            await asyncio.sleep(interval)


def _quiet(task: asyncio.Task) -> None:
    """A prefetch nobody read failed or was dropped: its reader (if any) asks again or sees the error."""
    if not task.cancelled():
        task.exception()


def _entries(folder: str) -> list[os.DirEntry[str]]:
    """Subfolders (not symlinks) of folder; none when it cannot be read."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _hour_start(day: str, hour: str) -> float | None:
    """Unix time an api/<day>/<hour> folder starts at, or None for a name the API did not make."""
    if len(day) != 10 or len(hour) != 2 or not hour.isdigit():
        return None
    try:
        return datetime.strptime(f"{day} {hour}", "%Y-%m-%d %H").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _remove(path: str) -> int:
    try:
        shutil.rmtree(path)
        return 1
    except OSError as exc:
        log.warning("cannot delete old outputs %s: %s", path, exc)
        return 0
