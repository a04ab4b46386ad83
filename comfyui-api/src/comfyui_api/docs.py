"""The OpenAPI document, and /docs: Swagger UI over it, served from this process (no CDN).

Hosts and the browsers that open their /docs may have no internet, so Swagger UI's files come
from the Python package that ships them (flask-swagger-ui, pinned in requirements-pyz-data.txt;
only its files are read, Flask is never imported) and are served under /docs/ with the small
script in docs_page.js, which starts Swagger UI and shows a job's output files as images, video
or audio under the response.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import os
from typing import Any

from comfyui_api.workflows import Endpoint

_ERROR = {"type": "object", "properties": {"detail": {}}}
_VALIDATION = {
    "type": "object",
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        }
    },
}
_OUTPUT = {
    "type": "object",
    "properties": {
        "node": {"type": "string"},
        "kind": {"type": "string", "description": "images, gifs, audio, video, latents, ..."},
        "filename": {"type": "string"},
        "subfolder": {"type": "string"},
        "type": {"type": "string"},
        "content_type": {"type": "string"},
        "size": {"type": "integer"},
        "base64": {"type": "string", "description": "file bytes (outputs=base64)"},
        "url": {"type": "string", "description": "download URL served by this API (outputs=url)"},
        "value": {"description": "non-file output values (e.g. text)"},
    },
}
_JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "workflow": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["queued", "running", "cancelling", "completed", "failed", "cancelled"],
        },
        "prompt_id": {"type": "string"},
        "created_at": {"type": "number"},
        "started_at": {"type": "number"},
        "finished_at": {"type": "number"},
        "duration_ms": {"type": "number"},
        "progress": {"type": "object"},
        "error": {"type": "object"},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Output"}},
        "webhook": {"type": "object"},
    },
}


def _envelope(input_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "input": input_schema,
            "async": {"type": "boolean", "default": False, "description": "answer 202 with a job id at once"},
            "outputs": {
                "type": "string",
                "enum": ["base64", "url"],
                "description": "how output files are returned",
            },
            "webhook": {
                "type": "string",
                "format": "uri",
                "description": "POSTed when the job ends, signed per Standard Webhooks",
            },
        },
    }


def _responses(sync: bool = True) -> dict[str, Any]:
    job = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}}
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "200": {"description": "job finished; outputs inside", **job},
        "202": {"description": "accepted (async); poll GET /jobs/{id}", **job},
        "401": {"description": "missing or invalid API key", **err},
        "413": {"description": "request body too large", **err},
        "422": {
            "description": "invalid request; detail names the field",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ValidationError"}}},
        },
        "429": {"description": "rate limit or queue limit reached; see Retry-After", **err},
        "500": {"description": "the workflow failed in ComfyUI", **job},
        "503": {"description": "ComfyUI unreachable; see Retry-After", **err},
        "504": {"description": "still running after the sync timeout; poll GET /jobs/{id}", **err},
    }


def openapi(endpoints: dict[str, Endpoint], version: str) -> dict[str, Any]:
    """OpenAPI 3.1 for every workflow endpoint and the fixed routes."""
    paths: dict[str, Any] = {}
    for name, ep in sorted(endpoints.items()):
        paths[f"/workflows/{name}"] = {
            "post": {
                "operationId": f"run_{name.replace('-', '_')}",
                "summary": ep.summary,
                "description": _description(ep),
                "tags": ["workflows"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{_schema_name(name)}Request"},
                            "example": _example(ep),
                        }
                    },
                },
                "responses": _responses(),
            }
        }
    paths["/prompt"] = {
        "post": {
            "operationId": "run_raw_prompt",
            "tags": ["advanced"],
            "summary": "Run an API-format graph as is",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["prompt"],
                            "properties": {
                                "prompt": {"type": "object"},
                                "async": {"type": "boolean"},
                                "outputs": {"type": "string", "enum": ["base64", "url"]},
                                "webhook": {"type": "string"},
                            },
                        }
                    }
                },
            },
            "responses": {
                **_responses(),
                "400": {"description": "ComfyUI rejected the graph ({error, node_errors})"},
            },
        }
    }
    paths["/jobs/{job_id}"] = {
        "get": {
            "operationId": "get_job",
            "tags": ["jobs"],
            "summary": "Job status, progress and outputs",
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "the job",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
                },
                "404": {"description": "unknown job"},
            },
        },
        "delete": {
            "operationId": "cancel_job",
            "tags": ["jobs"],
            "summary": "Cancel (ComfyUI queue delete or interrupt)",
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "cancelled"}, "409": {"description": "already finished"}},
        },
    }
    paths["/jobs/{job_id}/outputs/{index}"] = {
        "get": {
            "operationId": "get_job_output",
            "tags": ["jobs"],
            "summary": "Download one output file",
            "parameters": [
                {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "index", "in": "path", "required": True, "schema": {"type": "integer"}},
            ],
            "responses": {"200": {"description": "file bytes"}},
        }
    }
    paths["/upload/image"] = {
        "post": {
            "operationId": "upload_image",
            "tags": ["advanced"],
            "summary": "Upload an image into ComfyUI's input folder",
            "description": "Pass the answer's `name` (`subfolder/name` when a subfolder was given) as a workflow's "
            "image input.",
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                "image": {
                                    "type": "string",
                                    "format": "binary",
                                    "description": "PNG, JPEG, WebP or GIF",
                                },
                                "subfolder": {
                                    "type": "string",
                                    "default": "",
                                    "description": "inside ComfyUI's input folder",
                                },
                                "overwrite": {
                                    "type": "boolean",
                                    "default": False,
                                    "description": "replace a file of that name (else a free name is chosen)",
                                },
                            },
                        }
                    }
                }
            },
            "responses": {
                "200": {
                    "description": "where the file is",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "subfolder": {"type": "string"},
                                    "type": {"type": "string"},
                                },
                            }
                        }
                    },
                }
            },
        }
    }
    paths["/executions"] = {
        "get": {
            "operationId": "list_executions",
            "tags": ["log"],
            "summary": "Execution log",
            "parameters": [
                {"name": n, "in": "query", "schema": {"type": t}}
                for n, t in (
                    ("workflow", "string"),
                    ("status", "string"),
                    ("since", "string"),
                    ("until", "string"),
                    ("limit", "integer"),
                    ("offset", "integer"),
                )
            ],
            "responses": {"200": {"description": "rows, newest first"}},
        }
    }
    for p, summary in (
        ("/health", "Process up; version and build"),
        ("/ready", "ComfyUI reachable, models present, warmed up"),
        ("/workflows", "Every workflow with its request schema"),
    ):
        paths[p] = {
            "get": {
                "operationId": p.strip("/"),
                "tags": ["service"],
                "summary": summary,
                "responses": {"200": {"description": "ok"}, "503": {"description": "not ready"}},
            }
        }
    schemas: dict[str, Any] = {
        "Job": _JOB,
        "Output": _OUTPUT,
        "Error": _ERROR,
        "ValidationError": _VALIDATION,
    }
    for name, ep in endpoints.items():
        schemas[f"{_schema_name(name)}Request"] = _envelope(ep.request_schema())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ComfyUI workflows API",
            "version": version,
            "description": "One endpoint per workflow in workflows/, derived from the workflow JSON.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _schema_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


def _description(ep: Endpoint) -> str:
    parts = [ep.description] if ep.description else []
    images = [p.name for p in ep.params.values() if p.kind == "image"]
    if images:
        parts.append(
            f"Image inputs ({', '.join(images)}): an http(s) URL, base64, a data: URI, or the `name` that "
            "`POST /upload/image` returned for a file you uploaded."
        )
    return "\n\n".join(parts)


def _example(ep: Endpoint) -> dict[str, Any]:
    """A request "Try it out" can send as is: the workflow's defaults, outputs as download URLs."""
    values = {p.name: p.default for p in ep.params.values() if p.default is not None}
    return {"input": values, "async": False, "outputs": "url"}


# -- /docs ------------------------------------------------------------------------------

SWAGGER_UI_PACKAGE = "flask_swagger_ui"
"""The package whose files are Swagger UI's distribution (``dist/``, as published by swagger-api)."""

ASSETS = {
    "swagger-ui-bundle.js": ("dist/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": ("dist/swagger-ui.css", "text/css; charset=utf-8"),
    "swagger-ui-LICENSE.txt": ("dist/LICENSE", "text/plain; charset=utf-8"),
    "swagger-ui-VERSION.txt": ("dist/VERSION", "text/plain; charset=utf-8"),
}
"""Files of Swagger UI served under /docs/ (also what scripts/build-binary keeps of the package)."""

PAGE_SCRIPT = "docs_page.js"
ASSET_PATHS = frozenset({f"/docs/{name}" for name in ASSETS} | {f"/docs/{PAGE_SCRIPT}"})
"""Open without an API key, like /docs itself: a browser fetches them before anyone authorizes."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ComfyUI workflows API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<style>.comfyui-outputs{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.comfyui-outputs figure{margin:0}.comfyui-outputs img,.comfyui-outputs video{max-width:512px;max-height:512px}
.comfyui-outputs figcaption{font:12px monospace}</style>
</head>
<body>
<div id="swagger-ui"><noscript>This page needs JavaScript; the API is described in
<a href="/openapi.json">/openapi.json</a>.</noscript></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/docs_page.js"></script>
</body>
</html>
"""


class AssetsMissing(Exception):
    """Swagger UI's files are not installed (the package named in requirements-pyz-data.txt)."""


def page() -> str:
    """The /docs page: Swagger UI reading /openapi.json."""
    return PAGE


@functools.cache
def asset(name: str) -> tuple[bytes, str] | None:
    """The bytes and content type of a file served under /docs/, None for an unknown name.

    Read through the package's loader without importing it, so this works from site-packages
    and from inside the .pyz (zipimport) alike.
    """
    if name == PAGE_SCRIPT:
        data = importlib.resources.files("comfyui_api").joinpath(PAGE_SCRIPT).read_bytes()
        return data, "text/javascript; charset=utf-8"
    if name not in ASSETS:
        return None
    relative, content_type = ASSETS[name]
    spec = importlib.util.find_spec(SWAGGER_UI_PACKAGE)
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        raise AssetsMissing(
            f"Swagger UI's files are missing: install the {SWAGGER_UI_PACKAGE} package "
            "(comfyui-api depends on it; scripts/build-binary vendors it)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], *relative.split("/"))
    try:
        return spec.loader.get_data(path), content_type  # type: ignore[attr-defined]
    except OSError as exc:
        raise AssetsMissing(
            f"Swagger UI's file {relative} is missing from {SWAGGER_UI_PACKAGE}: {exc}"
        ) from None
