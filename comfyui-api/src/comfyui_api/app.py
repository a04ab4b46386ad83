"""The ASGI application: routes, startup/shutdown, and the mapping of failures to HTTP answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import platform
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from comfyui_api import __version__, docs, jsonbody, limits, outbound, tenancy
from comfyui_api.comfy import ComfyRejected, ComfyUnavailable
from comfyui_api.images import Rejected
from comfyui_api.jobs import (
    FINAL,
    Job,
    KeyBusy,
    QueueFull,
    guess_image_extension,
    safe_input_name,
)
from comfyui_api.security import SecurityMiddleware, caller
from comfyui_api.service import Service
from comfyui_api.settings import Settings, is_loopback, parse_networks
from comfyui_api.workflows import (
    Endpoint,
    apply_values,
    validate_request,
)

log = logging.getLogger("comfyui_api")
ENVELOPE_KEYS = {"input", "async", "outputs", "webhook"}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data, separators=(",", ":")),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


async def _caller_gone(request: Request) -> None:
    """Return when the caller hangs up (its body is already read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _problem(status: int, detail: Any, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    return _json({"detail": detail, **extra}, status, headers)


def create_app(settings: Settings) -> Starlette:
    """Build the ASGI app for these settings (the CLI serves it with uvicorn; Modal mounts it)."""
    settings.check()
    svc = Service(settings)
    allow = parse_networks(settings.allow_outbound)
    retry = {"retry-after": str(settings.retry_after_s)}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await svc.comfy.start()
        svc.jobs.spawn(svc.jobs.files.sweep_forever())
        try:
            yield
        finally:
            await svc.close()

    def unavailable(exc: Exception) -> Response:
        return _problem(503, f"ComfyUI is not reachable at {settings.comfyui_url}: {exc}", retry)

    async def health(request: Request) -> Response:
        if not caller(request.scope).authenticated:
            # Enough for a load balancer; versions, paths and workflows need a key.
            return _json({"status": "ok", "service": "comfyui-api"})
        return _json(
            {
                "status": "ok",
                "service": "comfyui-api",
                "version": __version__,
                "build": settings.build_info,
                "python": platform.python_version(),
                "uptime_s": round(time.time() - svc.started, 3),
                "comfyui": {
                    "url": settings.comfyui_url,
                    "reachable": svc.comfy.up,
                    "version": (svc.comfy.system_stats.get("system") or {}).get("comfyui_version"),
                },
                "workflows": sorted(svc.live()),
                "stopped": sorted(svc.stopped()),
                "jobs_in_flight": svc.jobs.queue_depth(),
            }
        )

    async def ready(request: Request) -> Response:
        result = await svc.readiness()
        if not caller(request.scope).authenticated:
            result = {"ready": result["ready"]}
        return _json(result, 200 if result["ready"] else 503, None if result["ready"] else retry)

    async def openapi(request: Request) -> Response:
        return _json(docs.openapi(svc.live(), __version__))

    async def docs_page(request: Request) -> Response:
        return HTMLResponse(docs.page())

    async def docs_asset(request: Request) -> Response:
        try:
            found = docs.asset(request.path_params["asset"])
        except docs.AssetsMissing as exc:
            return _problem(500, str(exc))
        if found is None:
            return _problem(404, "no such file under /docs/")
        return Response(found[0], media_type=found[1], headers={"cache-control": "public, max-age=3600"})

    async def list_workflows(request: Request) -> Response:
        return _json(
            {
                name: {"summary": ep.summary, "schema": ep.request_schema(), "outputs": ep.output_nodes}
                for name, ep in sorted(svc.live().items())
            }
        )

    async def read_json(request: Request) -> Any:
        try:
            return jsonbody.loads(await request.body())
        except jsonbody.BadJson as exc:
            raise _BadRequest(_problem(422, exc.errors)) from None

    def envelope(body: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if not isinstance(body, dict):
            return {}, [{"loc": ["body"], "msg": "body must be a JSON object", "type": "type_error"}]
        errors = [
            {
                "loc": ["body", k],
                "msg": f"unknown field {k!r}; allowed: {', '.join(sorted(ENVELOPE_KEYS))}",
                "type": "extra_forbidden",
            }
            for k in body
            if k not in ENVELOPE_KEYS
        ]
        if not isinstance(body.get("async", False), bool):
            errors.append(
                {"loc": ["body", "async"], "msg": "async must be true or false", "type": "bool_type"}
            )
        if body.get("outputs", settings.output_mode) not in ("base64", "url"):
            errors.append(
                {"loc": ["body", "outputs"], "msg": "outputs must be 'base64' or 'url'", "type": "enum"}
            )
        hook = body.get("webhook")
        if hook is not None:
            if not isinstance(hook, str) or not hook.startswith(("http://", "https://")):
                errors.append(
                    {"loc": ["body", "webhook"], "msg": "webhook must be an http(s) URL", "type": "url"}
                )
            elif not settings.webhook_secret:
                errors.append(
                    {
                        "loc": ["body", "webhook"],
                        "type": "unsupported",
                        "msg": "webhooks need a signing secret: start the service with --webhook-secret-file",
                    }
                )
        return body, errors

    async def check_webhook(body: dict[str, Any]) -> list[dict[str, Any]]:
        hook = body.get("webhook")
        why = await outbound.check_url(hook, allow) if isinstance(hook, str) else None
        return (
            [] if why is None else [{"loc": ["body", "webhook"], "type": "url", "msg": f"webhook URL {why}"}]
        )

    async def run_job(
        request: Request,
        workflow: str,
        params: dict[str, Any],
        graph: dict[str, Any],
        body: dict[str, Any],
        ep: Endpoint | None,
    ) -> Response:
        try:
            job = await svc.jobs.submit(
                workflow,
                params,
                graph,
                caller(request.scope).key_id,
                body.get("outputs", settings.output_mode),
                body.get("webhook"),
            )
        except KeyBusy:
            return _problem(
                429,
                f"this key has {settings.max_jobs_per_key} jobs in flight; retry when one finishes",
                retry,
            )
        except QueueFull:
            return _problem(429, f"more than {settings.queue_limit} jobs in flight; retry later", retry)
        except ComfyUnavailable as exc:
            return unavailable(exc)
        except ComfyRejected as exc:
            return rejected(exc, ep)
        if body.get("async"):
            return _json(job.public(), 202, {"location": f"/jobs/{job.id}"})
        finished = asyncio.ensure_future(job.done.wait())
        gone = asyncio.ensure_future(_caller_gone(request))
        try:
            await asyncio.wait(
                {finished, gone}, timeout=settings.sync_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            finished.cancel()
            gone.cancel()
        if not job.done.is_set():
            # Nobody is waiting for it any more (the caller hung up or its time is up): stop it
            # rather than let it hold the GPU.
            with contextlib.suppress(ComfyUnavailable):
                await svc.jobs.cancel(job)
            if gone.done() and not gone.cancelled():
                log.info("job %s cancelled: its synchronous caller disconnected", job.id)
                return _problem(499, "the caller disconnected; the job was cancelled", id=job.id)
            return _problem(
                504,
                f"job did not finish within {settings.sync_timeout_s:g}s and was cancelled; "
                'send it with "async": true for long jobs',
                id=job.id,
            )
        return _json(await svc.jobs.view(job), _job_status_code(job))

    def rejected(exc: ComfyRejected, ep: Endpoint | None) -> Response:
        body = exc.body
        if ep is None:
            return _json(body, 400)
        by_input = {(p.node_id, p.input): p.name for p in ep.params.values()}
        errors = []
        for nid, entry in (body.get("node_errors") or {}).items():
            for e in entry.get("errors", []):
                name = by_input.get((str(nid), str((e.get("extra_info") or {}).get("input_name"))))
                if name is not None:
                    errors.append(
                        {
                            "loc": ["body", "input", name],
                            "type": e.get("type"),
                            "msg": f"{e.get('message')}: {e.get('details')}",
                        }
                    )
        if errors:
            return _problem(422, errors)
        return _problem(
            502, "ComfyUI rejected the workflow (is everything it needs installed?)", comfyui=body
        )

    async def run_workflow(request: Request) -> Response:
        if request.path_params["name"] in svc.stopped():
            return _json(
                {
                    "detail": f"workflow {request.path_params['name']!r} is stopped on this host (its "
                    "deployment was stopped; `comfyfleet deployments start` serves it again)",
                    "status": "stopped",
                },
                404,
            )
        ep = svc.endpoints.get(request.path_params["name"])
        if ep is None:
            if not svc.comfy.up and not svc.endpoints:
                return unavailable(Exception(svc.comfy.last_error))
            return _problem(404, f"no workflow named {request.path_params['name']!r}; see GET /workflows")
        try:
            body, errors = envelope(await read_json(request))
        except _BadRequest as bad:
            return bad.response
        values, perrors = validate_request(ep, body.get("input"))
        errors += perrors
        given = set(body.get("input") or {}) if isinstance(body.get("input"), dict) else set()
        if not errors:
            graph = apply_values(ep, values)
            by_input = {(p.node_id, p.input): p.name for p in ep.params.values()}
            touched = {ep.params[n].node_id for n in given if n in ep.params}
            for nid, iname, msg in limits.over_limits(graph, touched, settings):
                errors.append(
                    {"loc": ["body", "input", by_input.get((nid, iname), iname)], "type": "limit", "msg": msg}
                )
        errors += await check_webhook(body)
        if errors:
            return _problem(422, errors)
        try:
            submitted = await svc.images.resolve(ep, values, given, caller(request.scope))
        except Rejected as bad:
            return _problem(bad.status, bad.detail)
        except ComfyUnavailable as exc:
            return unavailable(exc)
        return await run_job(request, ep.name, values, apply_values(ep, submitted), body, ep)

    async def raw_prompt(request: Request) -> Response:
        if not caller(request.scope).admin:
            return _problem(
                403,
                "raw /prompt graphs need an admin key (a 'KEY admin' line in the key file); "
                "use POST /workflows/<name>",
            )
        try:
            body = await read_json(request)
        except _BadRequest as bad:
            return bad.response
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), dict) or not body["prompt"]:
            return _problem(
                422,
                [
                    {
                        "loc": ["body", "prompt"],
                        "type": "missing",
                        "msg": "prompt must be an API-format graph: {node_id: {class_type, inputs}}",
                    }
                ],
            )
        graph = body.pop("prompt")
        body.setdefault("input", None)
        body, errors = envelope(body)
        errors += [
            {"loc": ["body", "prompt", nid, "inputs", iname], "type": "limit", "msg": msg}
            for nid, iname, msg in limits.over_limits(graph, None, settings)
        ]
        errors += await check_webhook(body)
        if errors:
            return _problem(422, errors)
        return await run_job(request, "_prompt", {"nodes": len(graph)}, graph, body, None)

    async def upload_image(request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=10)
        image = form.get("image")
        if image is None or isinstance(image, str):
            return _problem(
                422,
                [
                    {
                        "loc": ["body", "image"],
                        "type": "missing",
                        "msg": "send the file as multipart field 'image'",
                    }
                ],
            )
        data = await image.read()
        ext = guess_image_extension(data)
        if ext is None:
            return _problem(
                422,
                [{"loc": ["body", "image"], "type": "image", "msg": "not a PNG, JPEG, WebP or GIF image"}],
            )
        name = str(image.filename or "upload" + ext).rsplit("/", 1)[-1]
        subfolder = str(form.get("subfolder") or "")
        who = caller(request.scope)
        if (
            not safe_input_name(name)
            or (subfolder and not safe_input_name(subfolder))
            or tenancy.annotated(name)
            or str(form.get("type") or "input") != "input"
        ):
            return _problem(
                422,
                [
                    {
                        "loc": ["body", "image"],
                        "type": "path",
                        "msg": "file name and subfolder must stay inside the input folder",
                    }
                ],
            )
        overwrite = str(form.get("overwrite", "false")).lower() in ("1", "true")
        where = "/".join(p for p in (tenancy.input_folder(who), subfolder) if p)
        try:
            info = await svc.comfy.upload_image(name, data, "image/" + ext[1:], where, overwrite)
        except ComfyUnavailable as exc:
            return unavailable(exc)
        except httpx.HTTPStatusError as exc:
            return _problem(502, f"ComfyUI refused the upload: HTTP {exc.response.status_code}")
        return _json({**info, "subfolder": tenancy.from_comfy(who, str(info.get("subfolder") or ""))})

    def find_job(request: Request) -> Job | None:
        job = svc.jobs.get(request.path_params["job_id"])
        if job is not None and not caller(request.scope).owns(job.key_id):
            return None  # another key's job: as if it did not exist
        return job

    async def get_job(request: Request) -> Response:
        job = find_job(request)
        if job is None:
            return _problem(
                404, "no such job (jobs are kept in memory for the latest ones; see GET /executions)"
            )
        return _json(await svc.jobs.view(job), 200)

    async def delete_job(request: Request) -> Response:
        job = find_job(request)
        if job is None:
            return _problem(404, "no such job")
        if job.status in FINAL:
            return _problem(409, f"job already {job.status}", job=job.public())
        try:
            await svc.jobs.cancel(job)
        except ComfyUnavailable as exc:
            return unavailable(exc)
        return _json(job.public(), 200)

    async def job_output(request: Request) -> Response:
        job = find_job(request)
        try:
            index = int(request.path_params["index"])
        except ValueError:
            index = -1
        if job is None or not 0 <= index < len(job.files):
            return _problem(404, "no such output")
        try:
            data, ctype = await svc.jobs.read_output(job.files[index])
        except ComfyUnavailable as exc:
            return unavailable(exc)
        except FileNotFoundError:
            return _problem(404, "output file is gone (outputs are kept for a limited time)")
        name = job.files[index]["filename"].replace('"', "")
        return Response(data, media_type=ctype, headers={"content-disposition": f'inline; filename="{name}"'})

    async def executions(request: Request) -> Response:
        q = request.query_params
        errors = []

        def when(key: str) -> float | None:
            v = q.get(key)
            if v is None:
                return None
            try:
                return float(v)
            except ValueError:
                try:
                    return datetime.fromisoformat(v).timestamp()
                except ValueError:
                    errors.append(
                        {
                            "loc": ["query", key],
                            "type": "datetime",
                            "msg": f"{key} must be unix seconds or ISO 8601",
                        }
                    )
                    return None

        since, until = when("since"), when("until")
        try:
            limit = min(max(int(q.get("limit", 50)), 1), 500)
            offset = max(int(q.get("offset", 0)), 0)
        except ValueError:
            errors.append(
                {"loc": ["query", "limit"], "type": "int_type", "msg": "limit and offset must be integers"}
            )
            limit, offset = 50, 0
        if errors:
            return _problem(422, errors)
        who = caller(request.scope)
        rows = await asyncio.to_thread(
            svc.store.query,
            q.get("workflow"),
            q.get("status"),
            since,
            until,
            q.get("key_id") if who.admin else who.key_id,
            limit,
            offset,
        )
        return _json({"executions": rows, "limit": limit, "offset": offset})

    routes = [
        Route("/health", health),
        Route("/ready", ready),
        Route("/openapi.json", openapi),
        Route("/docs", docs_page),
        Route("/docs/{asset}", docs_asset),
        Route("/workflows", list_workflows),
        Route("/workflows/{name}", run_workflow, methods=["POST"]),
        Route("/prompt", raw_prompt, methods=["POST"]),
        Route("/upload/image", upload_image, methods=["POST"]),
        Route("/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/jobs/{job_id}", delete_job, methods=["DELETE"]),
        Route("/jobs/{job_id}/outputs/{index}", job_output),
        Route("/executions", executions),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = svc
    app.add_middleware(
        SecurityMiddleware,
        keys=settings.api_keys,
        required=settings.auth_required(),
        rate_per_minute=settings.rate_limit_per_minute,
        burst=settings.rate_limit_burst,
        max_body=settings.max_body_bytes,
        admin_keys=settings.admin_keys,
        trusted_proxies=settings.trusted_proxies,
        auth_failures_per_minute=settings.auth_failures_per_minute,
        local_only=not settings.auth_required() and is_loopback(settings.host),
    )
    return app


def _job_status_code(job: Job) -> int:
    if job.status == "completed":
        return 200
    if job.status == "cancelled":
        return 409
    if job.error and job.error.get("type") in ("comfyui_restarted", "comfyui_unreachable"):
        return 503
    return 500


class _BadRequest(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__("bad request")
        self.response = response
