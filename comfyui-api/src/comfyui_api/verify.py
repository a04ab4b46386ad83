"""``comfyui-api verify``: check a running service from its own host, through :class:`ApiClient`.

    python3 -I -S comfyui-api.pyz verify --port 3000 --api-key-file KEYS --workflows DIR \\
        --disabled-dir DIR --timeout 600

/health, /ready (waited for up to ``--timeout`` s), every workflow's path in /openapi.json,
one generation per served workflow with its defaults (outputs inline: counted and measured),
and the 404 "stopped" answer of every stopped workflow (a file of its name in the disabled
folder; none of those generates), on this host's service (``--host``, default 127.0.0.1). Prints
one line ``VERIFY {json}``: ``health`` and ``ready`` as ``[status, body]``, ``workflows`` one row
each (``name schema status outputs bytes seconds error stopped``). The key is read from its file
here and sent only to this host's own service: it never appears in argv or output. comfyfleet's ``verify-endpoints`` runs this on each host (in the
API container) and judges the result.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from comfyui_api.client import ApiClient, ApiError
from comfyui_api.settings import ConfigError, read_key_file

_SIDE_FILES = (".lock.json", ".manifest.json")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="comfyui-api verify",
        description="Check the service on this host: health, ready, one generation per workflow.",
    )
    p.add_argument("--host", default="127.0.0.1", help="the address the service answers on, on this host")
    p.add_argument("--port", type=int, default=3000, help="the service's port")
    p.add_argument("--api-key-file", type=Path, help="the service's key file (the first key is used)")
    p.add_argument("--workflows", type=Path, default=Path("workflows"), help="the service's workflows folder")
    p.add_argument("--disabled-dir", type=Path, help="the service's stop markers folder")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for /ready and for each generation")
    return p


def error_text(body: Any, limit: int = 2000) -> str:
    """Every message of an error body in one line, the cause included (ComfyUI puts it last)."""
    parts: list[str] = []

    def walk(v: Any, key: str = "") -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, str(k))
        elif isinstance(v, list):
            for x in v:
                walk(x, key)
        elif (
            isinstance(v, str)
            and v.strip()
            and key not in ("type", "status", "id")
            and v.strip() not in parts
        ):
            parts.append(v.strip())

    walk(body)
    text = " | ".join(parts) if parts else json.dumps(body)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _answer(call: Any) -> tuple[int, Any]:
    """``[status, body]`` of one call: the body when it succeeds, the error's body (or detail) when not."""
    try:
        return 200, call()
    except ApiError as exc:
        return exc.status, exc.body if exc.body is not None else str(exc.detail)


def workflow_names(workflows: Path, disabled: Path | None) -> tuple[set[str], set[str]]:
    """The workflows the folder holds and the stopped ones (markers in the disabled folder)."""
    names = {p.name[:-5] for p in workflows.glob("*.json") if not p.name.endswith(_SIDE_FILES)}
    stopped = set()
    if disabled is not None and disabled.is_dir():
        stopped = {p.name for p in disabled.iterdir() if not p.name.startswith(".")}
    return names, stopped


def check(api: ApiClient, workflows: Path, disabled: Path | None, timeout: float) -> dict[str, Any]:
    """Every check of the service, as the ``VERIFY`` line carries it."""
    out: dict[str, Any] = {"health": _answer(api.health), "ready": None, "workflows": []}
    deadline = time.monotonic() + timeout
    while True:
        out["ready"] = _answer(api.ready)
        if out["ready"][0] == 200 or time.monotonic() > deadline:
            break
        time.sleep(2)
    status, spec = _answer(api.openapi)
    paths = spec.get("paths", {}) if status == 200 and isinstance(spec, dict) else {}
    names, stopped = workflow_names(workflows, disabled)
    for name in sorted(names | stopped):
        row: dict[str, Any] = {
            "name": name,
            "schema": f"/workflows/{name}" in paths,
            "status": None,
            "outputs": 0,
            "bytes": 0,
            "seconds": None,
            "error": "",
            "stopped": name in stopped,
        }
        if row["stopped"]:
            # Not generated with: an input no workflow has must still get 404 "stopped" (an API
            # that ignored the markers would answer 400 or generate).
            row["status"], body = _answer(lambda n=name: api.run(n, {"no_such_input": 0}).raw)
            said_stopped = isinstance(body, dict) and body.get("status") == "stopped"
            row["error"] = "" if said_stopped else json.dumps(body)[:300]
        elif row["schema"]:
            t0 = time.monotonic()
            try:
                result = api.run(name, outputs="base64", timeout=timeout)
                row["status"] = 200
                row["outputs"] = len(result.outputs) + len(result.values)
                row["bytes"] = sum(len(o.data or b"") for o in result.outputs)
            except ApiError as exc:
                row["status"] = exc.status
                row["error"] = error_text(exc.body if exc.body is not None else exc.detail)
            row["seconds"] = round(time.monotonic() - t0, 2)
        out["workflows"].append(row)
    return out


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    key = None
    try:
        if args.api_key_file is not None and args.api_key_file.is_file():
            key = read_key_file(args.api_key_file)[0][0]
    except ConfigError as exc:
        print("VERIFY " + json.dumps({"error": str(exc)}), flush=True)
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    # The service runs on this very host (its own address when not bound to loopback): plain HTTP is local.
    with ApiClient(f"http://{host}:{args.port}", key, timeout=30.0, allow_plain_http=True) as api:
        result = check(api, args.workflows, args.disabled_dir, args.timeout)
    print("VERIFY " + json.dumps(result), flush=True)
    return 0
