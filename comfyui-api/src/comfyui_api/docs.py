"""OpenAPI document and a self-contained /docs page (no CDN: hosts and browsers may be offline)."""

from __future__ import annotations

import html as _html
import json
from typing import Any

from comfyui_api.workflows import Endpoint

_ERROR = {"type": "object", "properties": {"detail": {}}}
_VALIDATION = {"type": "object", "properties": {"detail": {"type": "array", "items": {
    "type": "object", "properties": {"loc": {"type": "array", "items": {"type": "string"}},
                                     "msg": {"type": "string"}, "type": {"type": "string"}}}}}}
_OUTPUT = {"type": "object", "properties": {
    "node": {"type": "string"}, "kind": {"type": "string", "description": "images, gifs, audio, video, latents, ..."},
    "filename": {"type": "string"}, "subfolder": {"type": "string"}, "type": {"type": "string"},
    "content_type": {"type": "string"}, "size": {"type": "integer"},
    "base64": {"type": "string", "description": "file bytes (outputs=base64)"},
    "url": {"type": "string", "description": "download URL served by this API (outputs=url)"},
    "value": {"description": "non-file output values (e.g. text)"}}}
_JOB = {"type": "object", "properties": {
    "id": {"type": "string"}, "workflow": {"type": "string"},
    "status": {"type": "string", "enum": ["queued", "running", "cancelling", "completed", "failed", "cancelled"]},
    "prompt_id": {"type": "string"}, "created_at": {"type": "number"}, "started_at": {"type": "number"},
    "finished_at": {"type": "number"}, "duration_ms": {"type": "number"},
    "progress": {"type": "object"}, "error": {"type": "object"},
    "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Output"}},
    "webhook": {"type": "object"}}}


def _envelope(input_schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": {
        "input": input_schema,
        "async": {"type": "boolean", "default": False, "description": "answer 202 with a job id at once"},
        "outputs": {"type": "string", "enum": ["base64", "url"], "description": "how output files are returned"},
        "webhook": {"type": "string", "format": "uri",
                    "description": "POSTed when the job ends, signed per Standard Webhooks"}}}


def _responses(sync: bool = True) -> dict[str, Any]:
    job = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}}
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "200": {"description": "job finished; outputs inside", **job},
        "202": {"description": "accepted (async); poll GET /jobs/{id}", **job},
        "401": {"description": "missing or invalid API key", **err},
        "413": {"description": "request body too large", **err},
        "422": {"description": "invalid request; detail names the field",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ValidationError"}}}},
        "429": {"description": "rate limit or queue limit reached; see Retry-After", **err},
        "500": {"description": "the workflow failed in ComfyUI", **job},
        "503": {"description": "ComfyUI unreachable; see Retry-After", **err},
        "504": {"description": "still running after the sync timeout; poll GET /jobs/{id}", **err},
    }


def openapi(endpoints: dict[str, Endpoint], version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for every workflow endpoint and the fixed routes."""
    paths: dict[str, Any] = {}
    for name, ep in sorted(endpoints.items()):
        paths[f"/workflows/{name}"] = {"post": {
            "operationId": f"run_{name.replace('-', '_')}", "summary": ep.summary, "description": ep.description,
            "tags": ["workflows"],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{_schema_name(name)}Request"}}}},
            "responses": _responses()}}
    paths["/prompt"] = {"post": {"operationId": "run_raw_prompt", "tags": ["advanced"],
                                 "summary": "Run an API-format graph as is",
                                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                                     "type": "object", "required": ["prompt"],
                                     "properties": {"prompt": {"type": "object"}, "async": {"type": "boolean"},
                                                    "outputs": {"type": "string", "enum": ["base64", "url"]},
                                                    "webhook": {"type": "string"}}}}}},
                                 "responses": {**_responses(), "400": {"description": "ComfyUI rejected the graph ({error, node_errors})"}}}}
    paths["/jobs/{job_id}"] = {
        "get": {"operationId": "get_job", "tags": ["jobs"], "summary": "Job status, progress and outputs",
                "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the job", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}},
                              "404": {"description": "unknown job"}}},
        "delete": {"operationId": "cancel_job", "tags": ["jobs"], "summary": "Cancel (ComfyUI queue delete or interrupt)",
                   "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                   "responses": {"200": {"description": "cancelled"}, "409": {"description": "already finished"}}}}
    paths["/jobs/{job_id}/outputs/{index}"] = {"get": {"operationId": "get_job_output", "tags": ["jobs"],
                                                       "summary": "Download one output file",
                                                       "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                                                                      {"name": "index", "in": "path", "required": True, "schema": {"type": "integer"}}],
                                                       "responses": {"200": {"description": "file bytes"}}}}
    paths["/upload/image"] = {"post": {"operationId": "upload_image", "tags": ["advanced"],
                                       "summary": "Upload an image into ComfyUI's input folder",
                                       "requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
                                           "image": {"type": "string", "format": "binary"}, "subfolder": {"type": "string"},
                                           "overwrite": {"type": "boolean"}}}}}},
                                       "responses": {"200": {"description": "{name, subfolder, type}"}}}}
    paths["/executions"] = {"get": {"operationId": "list_executions", "tags": ["log"], "summary": "Execution log",
                                    "parameters": [{"name": n, "in": "query", "schema": {"type": t}} for n, t in (
                                        ("workflow", "string"), ("status", "string"), ("since", "string"),
                                        ("until", "string"), ("limit", "integer"), ("offset", "integer"))],
                                    "responses": {"200": {"description": "rows, newest first"}}}}
    for p, summary in (("/health", "Process up; version and build"), ("/ready", "ComfyUI reachable, models present, warmed up"),
                       ("/workflows", "Every workflow with its request schema")):
        paths[p] = {"get": {"operationId": p.strip("/"), "tags": ["service"], "summary": summary,
                            "responses": {"200": {"description": "ok"}, "503": {"description": "not ready"}}}}
    schemas: dict[str, Any] = {"Job": _JOB, "Output": _OUTPUT, "Error": _ERROR, "ValidationError": _VALIDATION}
    for name, ep in endpoints.items():
        schemas[f"{_schema_name(name)}Request"] = _envelope(ep.request_schema())
    return {"openapi": "3.1.0",
            "info": {"title": "ComfyUI workflows API", "version": version,
                     "description": "One endpoint per workflow in workflows/, derived from the workflow JSON."},
            "paths": paths,
            "components": {"schemas": schemas,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]}


def _schema_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


def html(endpoints: dict[str, Endpoint], version: str) -> str:
    """A readable page listing every endpoint, its fields, and a curl example."""
    e = _html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ComfyUI workflows API</title>"
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}code,pre{background:#f4f4f4}</style>"
             f"</head><body><h1>ComfyUI workflows API <small>{e(version)}</small></h1>"
             "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. Send <code>Authorization: Bearer KEY</code>."
             " Body: <code>{\"input\": {...}, \"async\": false, \"outputs\": \"base64\"|\"url\", \"webhook\": URL}</code>.</p>"]
    for name, ep in sorted(endpoints.items()):
        parts.append(f"<h2 id='{e(name)}'>POST /workflows/{e(name)}</h2><p>{e(ep.summary)}</p>")
        if ep.description:
            parts.append(f"<p>{e(ep.description)}</p>")
        parts.append("<table><tr><th>field</th><th>type</th><th>default</th><th>allowed</th><th>description</th></tr>")
        for p in ep.params.values():
            allowed = ""
            if p.enum is not None:
                allowed = ", ".join(map(str, p.enum[:12])) + (" …" if len(p.enum) > 12 else "")
            elif p.minimum is not None or p.maximum is not None:
                allowed = f"{p.minimum if p.minimum is not None else ''} … {p.maximum if p.maximum is not None else ''}"
            default = json.dumps(p.default)
            if len(default) > 60:
                default = default[:57] + "…"
            parts.append(f"<tr><td><code>{e(p.name)}</code>{' (required)' if p.required else ''}</td><td>{e(p.kind)}</td>"
                         f"<td><code>{e(default)}</code></td><td>{e(allowed)}</td><td>{e(p.description)}</td></tr>")
        parts.append("</table>")
        example = {k: p.default for k, p in list(ep.params.items())[:2]}
        parts.append(f"<pre>curl -X POST -H 'Authorization: Bearer $KEY' -H 'Content-Type: application/json' \\\n"
                     f"  -d '{e(json.dumps({'input': example}))}' http://HOST:3000/workflows/{e(name)}</pre>")
    if not endpoints:
        parts.append("<p>No workflow endpoints yet (ComfyUI not reached, or workflows/ is empty).</p>")
    parts.append("</body></html>")
    return "".join(parts)
