"""The service's shared state: settings, ComfyUI client, jobs, endpoints, stop markers, readiness."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import httpx

from comfyui_api.comfy import ComfyClient
from comfyui_api.images import ImageInputs
from comfyui_api.jobs import JobManager
from comfyui_api.settings import Settings
from comfyui_api.store import ExecutionLog
from comfyui_api.workflows import (
    Endpoint,
    WorkflowError,
    apply_values,
    build_endpoint,
    validate_request,
    workflow_files,
)

log = logging.getLogger("comfyui_api")


class Service:
    """State shared by the routes: settings, ComfyUI client, jobs, endpoints, log."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.comfy = ComfyClient(settings.comfyui_url, settings.resubmit_after_restart)
        self.store = ExecutionLog(settings.db_path, settings.db_busy_timeout_s)
        self.jobs = JobManager(settings, self.comfy, self.store)
        self.images = ImageInputs(settings, self.comfy, self.jobs.outbound)
        self.endpoints: dict[str, Endpoint] = {}
        self.load_errors: list[str] = []
        self.started = time.time()
        self.warmup_state = "disabled" if not settings.warmup else "pending"
        self._ready_cache: tuple[float, dict[str, Any]] | None = None
        self._stopped_cache: tuple[int | None, frozenset[str]] = (None, frozenset())  # (dir mtime, markers)
        self.comfy.on_connect.append(self.reload_endpoints)

    def stopped(self) -> frozenset[str]:
        """Workflow names with a stop marker in disabled_dir, as of this request.

        One stat of the folder per call; it is listed again only when its mtime changed
        (adding or removing a marker changes it) or is too recent to trust on a file
        system with coarse timestamps. So stop and start take effect on the next request
        without restarting the service, however a workflow's file got back into workflows/.
        """
        folder = self.settings.disabled_dir
        if folder is None:
            return frozenset()
        key, names = self._stopped_cache
        try:
            mtime = os.stat(folder).st_mtime_ns
        except FileNotFoundError:
            self._stopped_cache = (None, frozenset())
            return frozenset()
        except OSError as exc:
            # Unreadable: keep what was known rather than serving everything stopped so far.
            log.error("cannot read stop markers in %s: %s", folder, exc)
            return names
        if mtime == key and time.time_ns() - mtime > 2_000_000_000:
            return names
        try:
            with os.scandir(folder) as entries:
                names = frozenset(e.name for e in entries if not e.name.startswith("."))
        except OSError as exc:
            log.error("cannot read stop markers in %s: %s", folder, exc)
            return names
        self._stopped_cache = (mtime, names)
        return names

    def live(self) -> dict[str, Endpoint]:
        """The endpoints being served: loaded and not stopped."""
        stopped = self.stopped()
        return {n: ep for n, ep in self.endpoints.items() if n not in stopped}

    async def reload_endpoints(self) -> None:
        """(Re)build every endpoint from workflows/ with the /object_info just fetched."""
        endpoints: dict[str, Endpoint] = {}
        errors: list[str] = []
        for path in workflow_files(self.settings.workflows_dir):
            try:
                ep = build_endpoint(path, self.comfy.object_info)
            except WorkflowError as exc:
                # Callers see file names, not where this host keeps them.
                errors.append(str(exc).replace(str(self.settings.workflows_dir) + os.sep, ""))
                log.error("%s", exc)
                continue
            endpoints[ep.name] = ep
        self.endpoints, self.load_errors = endpoints, errors
        if self.warmup_state == "pending":
            asyncio.create_task(self.warmup())

    async def warmup(self) -> None:
        """Run every workflow once with its defaults so the first user request finds models loaded."""
        self.warmup_state = "running"
        ok = True
        for ep in list(self.live().values()):
            values, _ = validate_request(ep, {})
            try:
                job = await self.jobs.submit(ep.name, values, apply_values(ep, values), "warmup", "url")
                await job.done.wait()
                ok = ok and job.status == "completed"
                if job.status != "completed":
                    log.error("warmup of %s failed: %s", ep.name, job.error)
            except Exception as exc:
                log.error("warmup of %s failed: %s", ep.name, exc)
                ok = False
        self.warmup_state = "done" if ok else "failed"

    async def readiness(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._ready_cache is not None and now - self._ready_cache[0] < 1.0:
            return self._ready_cache[1]
        checks: dict[str, Any] = {"comfyui": {"ok": self.comfy.up, "url": self.settings.comfyui_url}}
        if not self.comfy.up:
            checks["comfyui"]["error"] = self.comfy.last_error
        live = self.live()
        # Stopped workflows still count as loaded (the service works); their models are not required.
        checks["workflows"] = {
            "ok": not self.load_errors and bool(self.endpoints),
            "served": sorted(live),
            "stopped": sorted(set(self.endpoints) - set(live)),
            "errors": self.load_errors,
        }
        missing: list[dict[str, str]] = []
        if self.comfy.up:
            classes = {ep.graph[n]["class_type"] for ep in live.values() for n, _, _ in ep.model_inputs}
            info: dict[str, Any] = {}
            for c in sorted(classes):
                try:
                    r = await self.comfy.http.get(f"/object_info/{c}")
                    info.update(r.json())
                except (httpx.HTTPError, ValueError):
                    info[c] = self.comfy.object_info.get(c, {})
            for ep in live.values():
                for nid, iname, value in ep.model_inputs:
                    spec = (info.get(ep.graph[nid]["class_type"]) or {}).get("input") or {}
                    entry = (spec.get("required") or {}).get(iname) or (spec.get("optional") or {}).get(iname)
                    options: list[Any] = []
                    if entry:
                        options = (
                            entry[0]
                            if isinstance(entry[0], list)
                            else ((entry[1] or {}).get("options", []) if len(entry) > 1 else [])
                        )
                    if value not in options:
                        missing.append({"workflow": ep.name, "node": nid, "input": iname, "file": value})
        checks["models"] = {"ok": self.comfy.up and not missing, "missing": missing}
        checks["warmup"] = {"ok": self.warmup_state in ("done", "disabled"), "state": self.warmup_state}
        result = {"ready": all(c["ok"] for c in checks.values()), "checks": checks}
        self._ready_cache = (now, result)
        return result

    async def close(self) -> None:
        await self.jobs.close()
        await self.comfy.close()
        self.store.close()
