"""The comfyui-api service on a host: its files' layout, key file, workflow files, endpoint verification.

``verify_endpoints`` runs ``comfyui-api verify`` (:mod:`comfyui_api.verify`, built on the one
client) from the host's own .pyz inside the API container when the operation executes (never
while operations are planned, so a dry run generates nothing), and reads its ``VERIFY`` line back
to judge it and fill the host's report. The API key stays on the host: the command reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, Host, QuoteString, State, StringCommand, operation
from pyinfra.facts.files import File, FindFiles, Sha256File

from comfyfleet.context import report
from comfyfleet.inventory import HostConfig, host_config
from comfyfleet.shell import fail, script


@dataclass(frozen=True)
class ApiPaths:
    """Where the API's files live on a host (same paths inside its container)."""

    dir: str
    pyz: str
    workflows: str
    db: str
    keys: str
    disabled: str

    @classmethod
    def for_config(cls, cfg: HostConfig) -> ApiPaths:
        d = f"{cfg.layout.root}/api"
        return cls(
            dir=d,
            pyz=f"{d}/comfyui-api.pyz",
            workflows=f"{d}/workflows",
            db=f"{d}/executions.sqlite3",
            keys=f"{d}/api-keys",
            disabled=f"{d}/disabled",
        )


@operation()
def secret_file(local_file: str, path: str) -> Any:
    """Upload a file of secrets root-only (mode 600), only when its sha256 differs.

    + local_file: the operator's file
    + path: where it lives on the host

    Sent without ``files.put``, whose ``--diff`` prints the old and new lines of a file (here:
    keys or credentials).
    """
    want = hashlib.sha256(Path(local_file).read_bytes()).hexdigest()
    if host.get_fact(Sha256File, path=path) == want:
        host.noop(f"{path} up to date")
        return
    yield FileUploadCommand(local_file, path, remote_temp_filename=host.get_temp_filename(path))
    yield StringCommand("chmod", "600", QuoteString(path))


@operation()
def api_keys(path: str, local_file: str | None = None) -> Any:
    """Install the operator's key file, or generate one random key on the host when none exists.

    + path: root-only key file on the host
    + local_file: operator's key file to upload instead (mode 600)

    Keys never pass through a command line: generated ones come from /dev/urandom on the host.
    """
    if local_file:
        yield from secret_file._inner(local_file=local_file, path=path)
        return
    if host.get_fact(File, path=path):
        host.noop("API key file present")
        return
    yield script('umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n" > "$1"; echo >> "$1"', path)


@operation()
def stale_workflows(directory: str, keep: list[str]) -> Any:
    """Remove workflow files on the host that are no longer in the local workflows folder."""
    present = host.get_fact(FindFiles, path=directory, maxdepth=1, quote_path=True) or []
    stale = sorted(p for p in present if p.rsplit("/", 1)[-1] not in set(keep))
    if not stale:
        host.noop("no stale workflow files")
        return
    yield StringCommand("rm", "-f", *(QuoteString(p) for p in stale))


@operation(is_idempotent=False)
def verify_endpoints(cfg: HostConfig, timeout: int) -> Generator[Any, None, None]:
    """/health, /ready, every workflow's schema, one real generation per workflow with its defaults.

    + cfg: the host's config
    + timeout: seconds to wait for /ready and for each generation
    """
    paths = ApiPaths.for_config(cfg)
    command = script(
        'docker exec "$1" python3 -I -S "$2" verify --host "$8" --port "$3" --api-key-file "$4" '
        '--workflows "$5" --timeout "$6" --disabled-dir "$7" 2>&1',
        cfg.layout.api_container,
        paths.pyz,
        cfg.api_port,
        paths.keys,
        paths.workflows,
        timeout,
        paths.disabled,
        cfg.api_local_address,
    )
    answer: dict[str, Any] = {}

    # pyinfra hands `state` and `host` to a callback by these parameter names.
    def run_checks(state: State, host: Host) -> bool:
        _, output = host.run_shell_command(command, _sudo=cfg.sudo)
        answer.update(verify_result(output.stdout_lines))
        return True

    # The checks run when the operation executes, once: a dry run (which plans operations by
    # running their bodies) shows them as to be done and generates nothing.
    yield FunctionCommand(run_checks, (), {})
    if not answer:
        return
    result = answer
    rep = report(host)
    if "error" in result:
        yield fail(
            f"verify-endpoints: could not run the checks in {cfg.layout.api_container}: {result['error']}"
        )
        return
    problems = []
    hstatus, health = result["health"]
    rstatus, ready = result["ready"]
    rows = [
        [
            "/health",
            "ok" if hstatus == 200 else f"HTTP {hstatus}",
            f"version {health.get('version')} commit {str((health.get('build') or {}).get('commit', '?'))[:12]}"
            if isinstance(health, dict)
            else str(health)[:120],
        ],
        ["/ready", "ok" if rstatus == 200 else f"HTTP {rstatus}", _ready_detail(ready)],
    ]
    rep.table("comfyui-api", ["check", "result", "detail"], rows)
    if hstatus != 200:
        problems.append(f"/health answered {hstatus}")
    if rstatus != 200:
        problems.append(f"/ready answered {rstatus}: {_ready_detail(ready)}")
    wf_rows = []
    for w in result["workflows"]:
        if w.get("stopped"):
            # A stopped deployment is not a failure; one that is still served is.
            held = not w["schema"] and w["status"] == 404
            wf_rows.append(
                [
                    w["name"],
                    "NO" if not w["schema"] else "yes (stopped)",
                    w["status"] or "-",
                    0,
                    0,
                    "-",
                    "stopped" if held else f"stopped but still served: {w['error']}".strip(),
                ]
            )
            if not held:
                problems.append(
                    f"workflow {w['name']} is marked stopped but the API still serves it "
                    "(update the API with update-binary)"
                )
            continue
        ok = w["schema"] and w["status"] == 200 and w["bytes"] > 0
        wf_rows.append(
            [
                w["name"],
                "yes" if w["schema"] else "NO",
                w["status"] or "-",
                w["outputs"],
                w["bytes"],
                w["seconds"] if w["seconds"] is not None else "-",
                "ok" if ok else (w["error"] or "no output"),
            ]
        )
        if not ok:
            problems.append(
                f"workflow {w['name']}: "
                + (
                    "no endpoint in /openapi.json"
                    if not w["schema"]
                    else f"HTTP {w['status']} {w['error']}".strip()
                )
            )
    if not result["workflows"]:
        problems.append("no workflows deployed to the API")
    rep.table(
        "workflow endpoints", ["workflow", "schema", "HTTP", "outputs", "bytes", "seconds", "result"], wf_rows
    )
    if problems:
        yield fail("verify-endpoints: " + "; ".join(problems))
    else:
        stopped = sum(1 for w in result["workflows"] if w.get("stopped"))
        host.noop(
            f"{len(wf_rows) - stopped} workflow endpoint(s) served and generating"
            + (f", {stopped} stopped" if stopped else "")
        )


def _ready_detail(ready: Any) -> str:
    if not isinstance(ready, dict):
        return str(ready)[:200]
    failed = [
        f"{k}: {json.dumps({x: y for x, y in v.items() if x != 'ok'})[:200]}"
        for k, v in (ready.get("checks") or {}).items()
        if not v.get("ok")
    ]
    return "; ".join(failed) or "ready"


def verify_result(lines: list[str]) -> dict[str, Any]:
    """The checks' ``VERIFY {json}`` line, else an error with the end of what they printed."""
    for line in lines:
        if line.startswith("VERIFY "):
            return dict(json.loads(line[7:]))
    said = "\n".join(lines[-20:])
    if "invalid choice" in said or "unrecognized arguments: verify" in said:
        said += "\n(the host's comfyui-api.pyz predates `verify`: run update-binary)"
    return {"error": said or "no output from the verification"}


@operation(is_idempotent=False)
def fetch_api_key(remote_path: str, local_path: str) -> Generator[Any, None, None]:
    """Copy the host's first API key into a local, owner-only file (over the SSH pyinfra already has).

    + remote_path: the root-only key file on the host (``<data_root>/api/api-keys``)
    + local_path: where the operator's machine keeps it (created 0600, folder 0700)

    The key passes through the command's output only: never an argument, never printed.
    """
    command = StringCommand("cat", QuoteString(remote_path))

    def fetch(state: State, host: Host) -> bool:  # pyinfra passes these by name
        ok, output = host.run_shell_command(command, _sudo=host_config(host).sudo)
        key = next((ln.strip() for ln in output.stdout_lines if ln.strip() and not ln.startswith("#")), "")
        if not ok or not key:
            report(host).note(f"no API key could be read from {remote_path}")
            return False
        write_private(Path(local_path), key + "\n")
        report(host).note(f"API key saved to {local_path} (read from {remote_path} over SSH)")
        return True

    yield FunctionCommand(fetch, (), {})


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (its folder too), replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
