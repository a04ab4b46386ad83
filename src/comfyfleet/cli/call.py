"""`comfyfleet call WORKFLOW`: run a deployed workflow through its API and save what it made.

The service is found the way `ship` addresses it: a deployment in the registry serving the
workflow (its endpoint and key file), or a target (`--target`, as ship's `--to`) whose host
data give the API address and key file, or an API URL (`--host http://...`). A host is
reached as ship reaches it: through its SSH (the deployment's recorded route, the target's
SSH settings), so the key never crosses plain HTTP; an https:// ``api_url`` or a given URL
directly. Inputs are checked against the workflow's schema from `GET /workflows` before
anything runs.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from comfyui_api.client import ApiClient, ApiError, ApiUnavailable, Output, Result
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from comfyfleet.errors import BadInput
from comfyfleet.registry import Deployment, Registry
from comfyfleet.schedules import api_base
from comfyfleet.ship import API_KEY_ENV, api_base_for, api_route_for, read_api_key, resolve_target
from comfyfleet.tunnel import SshRoute, TunnelError, open_tunnel

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def register(app: typer.Typer) -> None:
    """Add `call` to the main app."""
    app.command("call")(call)


@dataclass(frozen=True)
class Service:
    """Where a workflow is called: the host's name (for messages), its API base URL and key,
    and the SSH route its requests take (None: the URL is called directly)."""

    host: str
    base_url: str
    api_key: str | None
    route: SshRoute | None = None


def find_service(
    workflow: str, target: str | None, host: str | None, env: str | None, registry: Registry
) -> Service:
    """The API service to call, resolved like ship resolves it; BadInput when there is none."""
    env_key = os.environ.get(API_KEY_ENV) or None
    if host and host.startswith(("http://", "https://")):
        return Service(host, host.rstrip("/"), env_key)
    if target:
        specs = resolve_target(target)
        if host:
            specs = [(n, d) for n, d in specs if n == host]
            if not specs:
                raise BadInput(f"target {target} has no host {host!r}: pass one of its hosts to --host")
        name, data = specs[0]
        key_file = data.get("api_keys_file")
        key = read_api_key(key_file, name) if key_file else env_key
        return Service(name, api_base_for(name, data), key, api_route_for(name, data))
    deployment = _deployment_for(workflow, env, registry)
    endpoints = [e for e in deployment.endpoints if host is None or e.host == host]
    if not endpoints:
        hosts = ", ".join(e.host for e in deployment.endpoints)
        raise BadInput(
            f"deployment {deployment.name} ({deployment.environment}) is not on host {host!r}: "
            f"it runs on {hosts}"
        )
    endpoint = endpoints[0]
    key = read_api_key(endpoint.api_key_file, endpoint.host) if endpoint.api_key_file else env_key
    route = SshRoute.from_record(endpoint.host, endpoint.ssh) if endpoint.ssh else None
    return Service(endpoint.host, api_base(endpoint.url), key, route)


def _deployment_for(workflow: str, env: str | None, registry: Registry) -> Deployment:
    found = [
        d
        for d in registry.deployments(environment=env)
        if workflow in (d.workflow, d.name) and d.status != "inactive"
    ]
    if not found:
        raise BadInput(
            f"no active deployment serves workflow {workflow!r}"
            f"{f' in {env}' if env else ''}: ship it first (comfyfleet ship), or pass "
            "--target INVENTORY or --host http://HOST:PORT"
        )
    if len(found) > 1:
        which = ", ".join(f"{d.name} ({d.environment})" for d in found)
        raise BadInput(f"workflow {workflow!r} is served by {which}: pass --env or --target")
    return found[0]


def parse_inputs(
    workflow: str, pairs: Sequence[str], files: Sequence[str], schema: Mapping[str, Any]
) -> dict[str, Any]:
    """`key=value` and `key=@path` options as the workflow's request values (typed by its schema)."""
    props: Mapping[str, Any] = schema.get("properties") or {}
    values: dict[str, Any] = {}
    for option, given in [("--input", p) for p in pairs] + [("--input-file", f) for f in files]:
        key, sep, raw = given.partition("=")
        if not sep or not key:
            raise BadInput(
                f"{option} {given!r}: write it as key=value"
                + (" (or key=@path)" if option == "--input-file" else "")
            )
        if key not in props:
            names = ", ".join(sorted(props)) or "none"
            raise BadInput(
                f"{option} {given!r}: workflow {workflow} has no input {key!r} (its inputs: {names})"
            )
        if option == "--input-file":
            values[key] = _file_value(key, raw.removeprefix("@"), props[key])
        else:
            values[key] = _typed(key, raw, props[key])
    return values


def _file_value(key: str, path: str, prop: Mapping[str, Any]) -> str:
    if prop.get("type") != "string":
        raise BadInput(f"--input-file {key}=@{path}: input {key} is a {prop.get('type')}, not a file")
    try:
        return base64.b64encode(Path(path).read_bytes()).decode()
    except OSError as exc:
        raise BadInput(f"--input-file {key}=@{path}: {exc.strerror or exc}") from None


def _typed(key: str, raw: str, prop: Mapping[str, Any]) -> Any:
    kind = prop.get("type")
    value: Any = raw
    try:
        if kind == "integer":
            value = int(raw, 0)
        elif kind == "number":
            value = float(raw)
        elif kind == "boolean":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            value = raw.lower() in ("true", "1", "yes")
        elif kind in ("array", "object"):
            value = json.loads(raw)
    except ValueError:
        raise BadInput(f"--input {key}={raw}: {key} takes a {kind}") from None
    enum = prop.get("enum")
    if enum is not None and value not in enum:
        shown = ", ".join(map(str, enum[:12])) + (", ..." if len(enum) > 12 else "")
        raise BadInput(f"--input {key}={raw}: not one of {shown}")
    return value


def save_output(directory: Path, workflow: str, job_id: str, index: int, output: Output, data: bytes) -> Path:
    """Write one output as WORKFLOW-JOBID-INDEX.EXT in directory; an existing file is never replaced."""
    ext = Path(output.filename).suffix or mimetypes.guess_extension(output.content_type or "") or ".bin"
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{workflow}-{job_id}-{index}"
    for n in range(1000):
        path = directory / f"{stem}{'' if n == 0 else f'.{n}'}{ext}"
        try:
            with open(path, "xb") as fh:
                fh.write(data)
            return path
        except FileExistsError:
            continue
    raise BadInput(f"{directory}: {stem}{ext} and 999 more names are taken: pass another --out")


def _failure(exc: ApiError, service: Service, workflow: str) -> NoReturn:
    """Exit 2 for what the caller must change, 1 for what went wrong on the host."""
    detail = exc.detail
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    where = f"{workflow} on {service.host}" + (
        "" if service.host == service.base_url else f" ({service.base_url})"
    )
    if isinstance(exc, ApiUnavailable) and exc.status == 0:
        raise BadInput(f"{where}: not reachable: {detail}")
    if exc.status in (401, 403):
        raise BadInput(
            f"{where}: {exc.status} {detail}: set api_keys_file in the host's data or ${API_KEY_ENV}"
        )
    if exc.status in (404, 422):
        raise BadInput(f"{where}: {detail}")
    if exc.status == 504:
        detail = f"{detail} (--async waits past the service's sync timeout, up to --timeout)"
    err.print(f"call failed: {where}: {exc.status} {detail}", markup=False, soft_wrap=True)
    raise typer.Exit(1)


class JobProgress:
    """A spinner while a job is queued, a bar once ComfyUI reports a node's steps."""

    def __init__(self, label: str) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[step]}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self.task: TaskID = self.progress.add_task(label, total=None, step="")
        self.label = label

    def __enter__(self) -> JobProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, result: Result) -> None:
        p = result.progress if isinstance(result.progress, Mapping) else {}
        value, total = p.get("value"), p.get("max")
        step = f"node {p.get('node')} {value}/{total}" if value is not None and total else ""
        self.progress.update(
            self.task,
            description=f"{self.label}: {result.status}",
            step=step,
            total=total or None,
            completed=value or 0,
        )


def call(
    workflow: Annotated[str, typer.Argument(help="workflow name (or its .json file) as deployed")],
    target: Annotated[
        str | None, typer.Option("--target", help="inventory file, group or host, as ship's --to")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="a host of the deployment/target, or an API URL")
    ] = None,
    env: Annotated[str | None, typer.Option("--env", help="environment of the deployment")] = None,
    inputs: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="key=value, typed by the schema")
    ] = None,
    input_files: Annotated[
        list[str] | None, typer.Option("--input-file", help="key=@path: a file's bytes")
    ] = None,
    run_async: Annotated[
        bool, typer.Option("--async", help="submit, then poll the job with progress")
    ] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="where outputs are saved")] = Path("."),
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="seconds to wait for the job")] = 600.0,
) -> None:
    """Run a deployed workflow through its API and save its outputs as WORKFLOW-JOBID-N.EXT.

    Example: comfyfleet call txt2img --input prompt="a red fox" --input seed=7 --out renders/
    """
    name = Path(workflow).stem if workflow.endswith(".json") else workflow
    service = find_service(name, target, host, env, Registry())
    with ExitStack() as stack:
        client = stack.enter_context(_client(service, stack))  # closed before the tunnel
        result, saved = _call_and_save(
            client, service, name, inputs, input_files, run_async, timeout, out_dir
        )
    out.print(f"[green]{result.status}[/] {name} on {service.host}: job {result.id}")
    for path, output in saved:
        out.print(f"  {path}  ({path.stat().st_size} bytes, {output.content_type or 'file'})")
    for value in result.values:
        out.print(f"  value: {value}", markup=False)


def _client(service: Service, stack: ExitStack) -> ApiClient:
    """A client for the service: through its host's SSH tunnel (kept open by ``stack``), else directly."""
    base, transport = service.base_url, None
    if service.route is not None:
        try:
            tunnel = stack.enter_context(open_tunnel(service.route))
        except TunnelError as exc:
            raise BadInput(str(exc)) from None
        base, transport = tunnel.base_url, tunnel.transport
    try:
        return ApiClient(base, service.api_key, timeout=30.0, transport=transport)
    except ValueError as exc:
        raise BadInput(
            f"host {service.host}: {exc}: set api_url to an https:// address in its data, or tunnel "
            "(ssh -L 3000:127.0.0.1:3000 HOST) and pass --host http://127.0.0.1:3000"
        ) from None


def _call_and_save(
    client: ApiClient,
    service: Service,
    name: str,
    inputs: list[str] | None,
    input_files: list[str] | None,
    run_async: bool,
    timeout: float,
    out_dir: Path,
) -> tuple[Result, list[tuple[Path, Output]]]:
    """Run the workflow and save its outputs; the service's errors as one line and an exit code."""
    try:
        result = _run(client, service, name, inputs or [], input_files or [], run_async, timeout)
        saved = [
            (save_output(out_dir, name, result.id, i, o, client.download(o)), o)
            for i, o in enumerate(result.outputs)
        ]
    except ApiError as exc:
        _failure(exc, service, name)
    return result, saved


def _run(
    client: ApiClient,
    service: Service,
    name: str,
    inputs: Sequence[str],
    files: Sequence[str],
    run_async: bool,
    timeout: float,
) -> Result:
    workflows = client.workflows()
    if name not in workflows:
        if not (client.health().get("comfyui") or {}).get("reachable", True):
            raise ApiUnavailable(503, "ComfyUI behind the API is not reachable, so no workflow is served yet")
        served = ", ".join(sorted(workflows)) or "none"
        raise BadInput(
            f"{service.host} ({service.base_url}) does not serve workflow {name!r} (it serves: {served})"
        )
    values = parse_inputs(name, inputs, files, workflows[name].get("schema") or {})
    with JobProgress(f"{name} on {service.host}") as progress:
        if run_async:
            # Ctrl-C while the submit is in flight: the job may already be queued on the host and
            # only its answer names it, so wait for that answer and cancel the job it names.
            with _ctrl_c_held(f"Ctrl-C: cancelling {name} once {service.host} answers") as pressed:
                job_id = client.submit(name, values)
            if pressed.is_set():
                _cancel(client, job_id, service)
        else:
            try:
                return _finished(client.run(name, values, timeout=timeout), service, name)
            except KeyboardInterrupt:
                # The id comes only with the answer; the service cancels a job whose caller hung up.
                err.print(
                    f"interrupted: {service.host} cancels the job now nobody waits for it", markup=False
                )
                raise typer.Exit(130) from None
            except ApiUnavailable as exc:
                if not isinstance(exc.__cause__, httpx.ReadTimeout):
                    raise
                err.print(
                    f"call failed: {name} on {service.host}: no answer within --timeout {timeout:g}s, so "
                    "the service cancelled the job; --async --timeout N follows a long job with progress",
                    markup=False,
                    soft_wrap=True,
                )
                raise typer.Exit(1) from None
        try:
            result = client.wait(job_id, timeout, on_progress=progress.update)
        except TimeoutError as exc:
            err.print(
                f"call failed: {exc}; it keeps running on {service.host} (GET /jobs/{job_id})", markup=False
            )
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _cancel(client, job_id, service)
    return _finished(result, service, name)


def _cancel(client: ApiClient, job_id: str, service: Service) -> NoReturn:
    client.cancel(job_id)
    err.print(f"cancelled job {job_id} on {service.host}", markup=False)
    raise typer.Exit(130)


@contextmanager
def _ctrl_c_held(message: str) -> Iterator[threading.Event]:
    """Hold a first Ctrl-C until the block ends (the event says it came); a second one interrupts."""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield pressed  # signal handlers belong to the main thread; elsewhere nothing is held
        return

    def hold(signum: int, frame: object) -> None:
        if pressed.is_set():
            raise KeyboardInterrupt
        pressed.set()
        err.print(message, markup=False)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _finished(result: Result, service: Service, name: str) -> Result:
    if result.status != "completed":
        error = result.error if isinstance(result.error, Mapping) else {"message": result.error}
        message = error.get("message") or error.get("exception_message") or error
        err.print(
            f"call failed: {name} on {service.host}: job {result.id} {result.status}: {message}",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    return result
