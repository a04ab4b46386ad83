"""Tier 1: the comfyui-api service on a host — artifact, workflows, API keys, container, verification.

Host data read here (besides :mod:`comfyfleet.inventory`'s ``api_port``):

==================  ==============================  ==============================================
key                 default                         meaning
==================  ==============================  ==============================================
api_binary          ``dist/comfyui-api.pyz``        the artifact built by ``scripts/build-binary``
workflows_dir       ``workflows``                   local folder whose ``*.json`` / ``*.api.yaml``
                                                    become the API's endpoints
api_listen          ``0.0.0.0``                     address the API binds on the host
api_keys_file       none                            local file of API keys to install; without it
                                                    one random key is generated on the host
                                                    (root-only ``<data_root>/api/api-keys``)
verify_timeout      ``600``                         seconds ``verify-endpoints`` waits for /ready
                                                    and for each generation
==================  ==============================  ==============================================

Everything lives in ``<data_root>/api``: ``comfyui-api.pyz``, ``workflows/``,
``executions.sqlite3``, ``api-keys`` and ``disabled/`` (stop markers: the API does not serve a
workflow with a file of its name there, re-reading the folder every second, so a re-upload of
the workflows folder never serves a stopped workflow again and stop/start need no restart). The container runs the stock ``python3`` of the
runtime image on the .pyz; its spec carries the artifact's sha256, so a new artifact
recreates only the API container and an unchanged one uploads nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, QuoteString, StringCommand, deploy, operation
from pyinfra.facts.files import File, FindFiles
from pyinfra.operations import files

from comfyfleet.deploys import ops
from comfyfleet.deploys.tasks import task
from comfyfleet.errors import BadInput
from comfyfleet.inventory import HostConfig, host_config
from comfyfleet.operations import docker
from comfyfleet.operations.shell import fail, script
from comfyfleet.runner import report

REPO_ROOT = Path(__file__).resolve().parents[3]
WORKFLOW_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}(\.json|\.api\.yaml)$")


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
        return cls(dir=d, pyz=f"{d}/comfyui-api.pyz", workflows=f"{d}/workflows", db=f"{d}/executions.sqlite3",
                   keys=f"{d}/api-keys", disabled=f"{d}/disabled")


def local_artifact(data: Any) -> Path:
    """The .pyz to upload; BadInput saying how to build it when absent."""
    given = data.get("api_binary")
    path = Path(str(given)) if given else REPO_ROOT / "dist" / "comfyui-api.pyz"
    if not path.is_file():
        raise BadInput(f"{path}: no comfyui-api artifact; build it with scripts/build-binary (or set api_binary)")
    return path


def local_workflow_files(data: Any) -> dict[str, Path]:
    """Workflow files the API serves (name → local path); anything else in the folder stays local."""
    folder = Path(str(data.get("workflows_dir") or "workflows"))
    if not folder.is_dir():
        raise BadInput(f"{folder}: workflows folder not found; set workflows_dir")
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and WORKFLOW_FILE.match(p.name) and not p.name.endswith((".lock.json", ".manifest.json")):
            out[p.name] = p
    return out


def api_listen(data: Any) -> str:
    value = str(data.get("api_listen") or "0.0.0.0")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise BadInput(f"host {host.name}: api_listen must be an IP address such as 0.0.0.0 (got {value!r})") from None
    return value


def api_spec(cfg: HostConfig, paths: ApiPaths, artifact_sha256: str, listen: str) -> docker.ContainerSpec:
    """The comfyui-api container: the runtime image's python3 running the uploaded .pyz."""
    lay = cfg.layout
    command = (
        "python3", paths.pyz,
        "--comfyui-url", cfg.comfyui_url,
        "--workflows", paths.workflows,
        "--disabled-dir", paths.disabled,
        "--host", listen,
        "--port", str(cfg.api_port),
        "--db", paths.db,
        "--api-key-file", paths.keys,
        "--comfyui-output-dir", lay.output,
    )
    return docker.ContainerSpec(
        name=lay.api_container,
        image=cfg.runtime_image,
        command=command,
        # The artifact's hash makes a new binary a new spec: only this container is recreated.
        env=(("PYTHONUNBUFFERED", "1"), ("COMFYUI_API_SHA256", artifact_sha256)),
        mounts=(paths.dir, lay.output),
        workdir=paths.dir,
        labels=(("comfyfleet.role", "api"),),
    )


@operation()
def api_keys(path: str, local_file: str | None = None) -> Any:
    """Install the operator's key file, or generate one random key on the host when none exists.

    + path: root-only key file on the host
    + local_file: operator's key file to upload instead (mode 600)

    Keys never pass through a command line: generated ones come from /dev/urandom on the host.
    """
    if local_file:
        yield from files.put._inner(src=local_file, dest=path, mode="600")
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


@deploy("comfyui-api service")
def deploy_api() -> None:
    """Upload the artifact (only when changed), sync workflows, keys, run the container, wait for /health."""
    cfg = host_config(host)
    sudo = cfg.sudo
    data = host.data
    artifact = local_artifact(data)
    sha = hashlib.sha256(artifact.read_bytes()).hexdigest()
    workflows = local_workflow_files(data)
    listen = api_listen(data)
    paths = ApiPaths.for_config(cfg)
    files.directory(name="API folder", path=paths.dir, mode="755", _sudo=sudo)
    files.directory(name="API workflows folder", path=paths.workflows, mode="755", _sudo=sudo)
    files.put(name="comfyui-api artifact", src=str(artifact), dest=paths.pyz, mode="644", _sudo=sudo)
    changed = []
    for name, local in workflows.items():
        changed.append(files.put(name=f"workflow {name}", src=str(local), dest=f"{paths.workflows}/{name}",
                                 mode="644", _sudo=sudo))
    changed.append(stale_workflows(name="Stale workflow files", directory=paths.workflows, keep=list(workflows),
                                   _sudo=sudo))
    keys_file = data.get("api_keys_file")
    if keys_file and not Path(str(keys_file)).is_file():
        raise BadInput(f"host {host.name}: api_keys_file {keys_file} not found")
    changed.append(api_keys(name="API keys", path=paths.keys, local_file=str(keys_file) if keys_file else None,
                            _sudo=sudo))
    ctr = docker.container(name="comfyui-api container", spec=api_spec(cfg, paths, sha, listen), _sudo=sudo)
    # Endpoints are built at start: new workflows or keys need a restart (unless recreated anyway).
    docker.restart(name="Restart comfyui-api for new workflows", container=cfg.layout.api_container,
                   _if=lambda: any(op.did_change() for op in changed) and not ctr.did_change(), _sudo=sudo)
    docker.wait_http(name="comfyui-api health", url=f"http://127.0.0.1:{cfg.api_port}/health",
                     container=cfg.layout.api_container, timeout=cfg.health_timeout, _sudo=sudo)


_VERIFY = r'''
import base64, glob, json, os, sys, time, urllib.error, urllib.request
port, keyfile, wfdir, timeout, disdir = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
base = "http://127.0.0.1:" + port
key = ""
if os.path.exists(keyfile):
    key = next((l.split()[0] for l in open(keyfile) if l.strip() and not l.startswith("#")), "")
def call(method, path, body=None, t=30.0):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(req, timeout=t) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")[:300]
    except Exception as e:
        return 0, "%s: %s" % (type(e).__name__, e)
def why(body, limit=2000):
    # Every message of an error body, the cause included: ComfyUI puts it last (node_errors' details).
    parts = []
    def walk(v, key=""):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, str(k))
        elif isinstance(v, list):
            for x in v:
                walk(x, key)
        elif isinstance(v, str) and v.strip() and key not in ("type", "status", "id") and v not in parts:
            parts.append(v.strip())
    walk(body)
    text = " | ".join(parts) if parts else json.dumps(body)
    return text if len(text) <= limit else text[:limit - 1] + "…"
out = {"health": None, "ready": None, "workflows": []}
out["health"] = call("GET", "/health")
deadline = time.time() + timeout
while True:
    out["ready"] = call("GET", "/ready")
    if out["ready"][0] == 200 or time.time() > deadline:
        break
    time.sleep(2)
status, spec = call("GET", "/openapi.json")
paths = spec.get("paths", {}) if status == 200 and isinstance(spec, dict) else {}
names = set(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(wfdir, "*.json"))
            if not p.endswith((".lock.json", ".manifest.json")))
stopped = set(n for n in (os.listdir(disdir) if os.path.isdir(disdir) else []) if not n.startswith("."))
for name in sorted(names | stopped):
    row = {"name": name, "schema": "/workflows/" + name in paths, "status": None, "outputs": 0, "bytes": 0,
           "seconds": None, "error": "", "stopped": name in stopped}
    if row["stopped"]:
        # Not generated with; checked to answer 404 "stopped" (an API that ignores markers would serve it).
        row["status"], body = call("POST", "/workflows/" + name, {"input": {"no_such_input": 0}})
        row["error"] = "" if isinstance(body, dict) and body.get("status") == "stopped" else json.dumps(body)[:300]
    elif row["schema"]:
        t0 = time.time()
        row["status"], job = call("POST", "/workflows/" + name, {"input": {}}, timeout)
        row["seconds"] = round(time.time() - t0, 2)
        if row["status"] == 200 and isinstance(job, dict):
            files = [o for o in job.get("outputs", []) if o.get("base64")]
            row["outputs"] = len(job.get("outputs", []))
            row["bytes"] = sum(len(base64.b64decode(o["base64"])) for o in files)
        else:
            row["error"] = why(job)
    out["workflows"].append(row)
print("VERIFY " + json.dumps(out))
'''


class ApiVerification(FactBase[dict[str, Any]]):
    """Run the endpoint checks inside the API container; the API key is read there, never passed."""

    @staticmethod
    def default() -> dict[str, Any]:
        return {}

    def command(self, container: str, port: int, keys: str, workflows: str, timeout: int,
                disabled: str) -> StringCommand:
        return script('docker exec "$1" python3 -c "$2" "$3" "$4" "$5" "$6" "$7" 2>&1 || true',
                      container, _VERIFY, port, keys, workflows, timeout, disabled)

    def process(self, output: list[str]) -> dict[str, Any]:
        for line in output:
            if line.startswith("VERIFY "):
                return dict(json.loads(line[7:]))
        return {"error": "\n".join(output[-20:]) or "no output from the verification"}


@operation(is_idempotent=False)
def verify_endpoints(cfg: HostConfig, timeout: int) -> Any:
    """/health, /ready, every workflow's schema, one real generation per workflow with its defaults.

    + cfg: the host's config
    + timeout: seconds to wait for /ready and for each generation
    """
    paths = ApiPaths.for_config(cfg)
    result = host.get_fact(ApiVerification, container=cfg.layout.api_container, port=cfg.api_port,
                           keys=paths.keys, workflows=paths.workflows, timeout=timeout, disabled=paths.disabled)
    rep = report(host)
    if "error" in result:
        yield fail(f"verify-endpoints: could not run the checks in {cfg.layout.api_container}: {result['error']}")
        return
    problems = []
    hstatus, health = result["health"]
    rstatus, ready = result["ready"]
    rows = [["/health", "ok" if hstatus == 200 else f"HTTP {hstatus}",
             f"version {health.get('version')} commit {str((health.get('build') or {}).get('commit', '?'))[:12]}"
             if isinstance(health, dict) else str(health)[:120]],
            ["/ready", "ok" if rstatus == 200 else f"HTTP {rstatus}", _ready_detail(ready)]]
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
            wf_rows.append([w["name"], "NO" if not w["schema"] else "yes (stopped)", w["status"] or "-", 0, 0, "-",
                            "stopped" if held else f"stopped but still served: {w['error']}".strip()])
            if not held:
                problems.append(f"workflow {w['name']} is marked stopped but the API still serves it "
                                "(update the API with update-binary)")
            continue
        ok = w["schema"] and w["status"] == 200 and w["bytes"] > 0
        wf_rows.append([w["name"], "yes" if w["schema"] else "NO", w["status"] or "-", w["outputs"], w["bytes"],
                        w["seconds"] if w["seconds"] is not None else "-", "ok" if ok else (w["error"] or "no output")])
        if not ok:
            problems.append(f"workflow {w['name']}: " + ("no endpoint in /openapi.json" if not w["schema"]
                                                         else f"HTTP {w['status']} {w['error']}".strip()))
    if not result["workflows"]:
        problems.append("no workflows deployed to the API")
    rep.table("workflow endpoints", ["workflow", "schema", "HTTP", "outputs", "bytes", "seconds", "result"], wf_rows)
    if problems:
        yield fail("verify-endpoints: " + "; ".join(problems))
    else:
        stopped = sum(1 for w in result["workflows"] if w.get("stopped"))
        host.noop(f"{len(wf_rows) - stopped} workflow endpoint(s) served and generating"
                  + (f", {stopped} stopped" if stopped else ""))


def _ready_detail(ready: Any) -> str:
    if not isinstance(ready, dict):
        return str(ready)[:200]
    failed = [f"{k}: {json.dumps({x: y for x, y in v.items() if x != 'ok'})[:200]}"
              for k, v in (ready.get("checks") or {}).items() if not v.get("ok")]
    return "; ".join(failed) or "ready"


@task("update-binary")
def update_binary_task() -> None:
    """Upload comfyui-api when its sha256 changed, sync workflows and keys, restart only the API."""
    deploy_api()


@task("restart-api-only")
def restart_api_task() -> None:
    """Restart the comfyui-api container gracefully and wait until /health answers."""
    ops.restart("api")  # type: ignore[call-arg, arg-type]  # pyinfra types @deploy functions as operations


@task("verify-endpoints")
def verify_endpoints_task() -> None:
    """Health, readiness, every workflow's schema and one real generation per workflow."""
    cfg = host_config(host)
    try:
        timeout = int(host.data.get("verify_timeout") or 600)
    except (TypeError, ValueError):
        raise BadInput(f"host {host.name}: verify_timeout must be a number of seconds") from None
    verify_endpoints(name="Verify comfyui-api endpoints", cfg=cfg, timeout=timeout, _sudo=cfg.sudo)
