"""`comfyfleet ship`: one command from a workflow file to a verified, recorded endpoint.

A ship is a sequence of named steps (:func:`standard_steps`)::

    analyze   strict analysis here; anything unresolved stops the ship before any host
    install   tiers 2-3 on the hosts: custom nodes, then models
    api       tier 1: the API service with the new workflow (restarted only when it changed)
    health    /health and /ready on every host, retried while the service starts
    generate  one generation with the workflow's defaults; an output file must arrive
    record    the deployment in the registry

:func:`run_pipeline` runs any such sequence: each step has a time budget and a
:class:`Backoff` (attempts with exponential delays, used only for errors another
attempt can cure: network and startup errors, never bad input), hosts are retried
one by one, and the first host that fails for good stops the ship, naming the step,
the host and the cause. Nothing here stops a running service: the tiers recreate a
container only when its spec changed, a failed install puts back the node packs it
added (a pack that keeps ComfyUI from starting must not take the running workflows
down), and the API tier only runs once the install succeeded, so a failed ship leaves
the previous deployment serving. Every run, failed or not, lands in the history.

Steps are plain values (:class:`Step`) around injectable callables, so the pipeline's
logic is tested with any step functions; :func:`standard_steps` and :func:`modal_steps`
build the real ones for hosts (through :mod:`comfyfleet.runner`) and for Modal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, cast

import httpx
from comfyui_api.names import BadWorkflowName, workflow_name
from pyinfra.api import FactBase

from comfyfleet.errors import BadInput, HostFailure
from comfyfleet.registry import Deployment, Endpoint, Registry, StepRecord, utcnow

LOCAL = "local"
"""Host name of steps that run on this machine (analyze, record)."""


class Retryable(Exception):
    """A failure another attempt may cure: a connection refused, a service still starting."""


class StepTimeout(Exception):
    """A step used up its time budget."""


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt could help: network and startup errors yes, bad input never."""
    if isinstance(exc, BadInput):
        return False
    if isinstance(exc, Retryable):
        return True
    # httpx.TransportError covers refused connections, resets and read timeouts; the
    # builtin ones come from sockets used directly (and from pyinfra's connectors).
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


@dataclass(frozen=True)
class Backoff:
    """How often a step is tried and how long to wait in between (exponential)."""

    attempts: int = 1
    first_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 20.0

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the n-th failed attempt (1-based)."""
        return min(self.max_delay, self.first_delay * self.factor ** (failed_attempts - 1))


NO_RETRY = Backoff(attempts=1)


@dataclass
class ShipContext:
    """What the steps of one ship share: the request, and what earlier steps found."""

    workflow_path: Path
    name: str
    environment: str
    target: str
    hosts: list[str] = field(default_factory=list)
    endpoints: dict[str, str] = field(default_factory=dict)
    """host -> base URL of its API service."""
    manifest: Any = None
    """The workflow's Manifest once `analyze` ran."""
    deployment: Deployment | None = None
    data: dict[str, Any] = field(default_factory=dict)
    """Free-form hand-over between steps (e.g. outputs the generation produced)."""
    deadline: float = float("inf")
    """time.monotonic() by which the running step must be done."""

    @property
    def workflow(self) -> str:
        """The workflow's name: its file stem, also the endpoint path on the API."""
        return self.workflow_path.stem

    def remaining(self, cap: float | None = None) -> float:
        """Seconds left in the running step's budget (at least a little, at most cap)."""
        left = max(0.1, self.deadline - time.monotonic())
        return min(left, cap) if cap is not None else left


HostOutcomes = Mapping[str, BaseException | None]
StepFn = Callable[[ShipContext, Sequence[str]], HostOutcomes]


@dataclass(frozen=True)
class Step:
    """A named stage of a ship with its time budget (all attempts) and retry policy."""

    name: str
    run: StepFn
    timeout: float
    backoff: Backoff = NO_RETRY
    local: bool = False
    """Runs once on this machine instead of once per host."""
    inline: bool = False
    """Runs in the calling thread, bounded by a gevent timeout: pyinfra's gevent hub
    cannot run subprocesses outside the main thread, so host tasks must not be moved
    to a worker thread the way HTTP checks are."""
    on_failure: Callable[[ShipContext, list[str]], Mapping[str, str]] | None = None
    """Compensation for the hosts this step failed on (bad input excepted): puts back what
    the step changed; returns a note per host for the failure report. Runs in this thread."""


def each_host(fn: Callable[[ShipContext, str], None], parallel: int = 8) -> StepFn:
    """A step function that runs ``fn(ctx, host)`` on every given host in parallel."""

    def run(ctx: ShipContext, hosts: Sequence[str]) -> HostOutcomes:
        def one(host: str) -> BaseException | None:
            try:
                fn(ctx, host)
            except Exception as exc:  # any failure is that host's outcome, judged by the pipeline
                return exc
            return None

        if len(hosts) == 1:
            return {hosts[0]: one(hosts[0])}
        with ThreadPoolExecutor(max_workers=min(parallel, len(hosts))) as pool:
            return dict(zip(hosts, pool.map(one, hosts), strict=True))

    return run


def here(fn: Callable[[ShipContext], None]) -> StepFn:
    """A step function that runs ``fn(ctx)`` once on this machine."""

    def run(ctx: ShipContext, hosts: Sequence[str]) -> HostOutcomes:
        try:
            fn(ctx)
        except Exception as exc:
            return {LOCAL: exc}
        return {LOCAL: None}

    return run


# -- progress -----------------------------------------------------------------------


class Reporter(Protocol):
    """Receives progress per step and host (the CLI shows it with rich)."""

    def step_started(self, step: str, hosts: Sequence[str]) -> None: ...

    def attempt_failed(self, step: str, host: str, attempt: int, error: BaseException, retry_in: float) -> None: ...

    def host_finished(self, step: str, host: str, ok: bool, seconds: float, error: str | None) -> None: ...

    def note(self, step: str, host: str, message: str) -> None: ...


class NullReporter:
    """Shows nothing."""

    def step_started(self, step: str, hosts: Sequence[str]) -> None:
        """Nothing to show."""

    def attempt_failed(self, step: str, host: str, attempt: int, error: BaseException, retry_in: float) -> None:
        """Nothing to show."""

    def host_finished(self, step: str, host: str, ok: bool, seconds: float, error: str | None) -> None:
        """Nothing to show."""

    def note(self, step: str, host: str, message: str) -> None:
        """Nothing to show."""


# -- the pipeline -------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """How one step went on one host; ``skipped`` when an earlier step failed."""

    step: str
    host: str
    ok: bool
    attempts: int
    seconds: float
    error: str | None = None
    skipped: bool = False

    def record(self) -> StepRecord:
        """The registry's form of this result."""
        return StepRecord(self.step, self.host, self.ok, self.attempts, self.seconds, self.error)


@dataclass(frozen=True)
class Failure:
    """Where a ship stopped: the step, the host and the cause."""

    step: str
    host: str
    cause: str
    bad_input: bool = False

    def __str__(self) -> str:
        where = "" if self.host == LOCAL else f" on host {self.host}"
        return f"step {self.step!r} failed{where}: {self.cause}"


@dataclass
class PipelineResult:
    """Every step's outcome per host, and the failure that stopped the run, if any."""

    results: list[StepResult]
    failure: Failure | None
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every step succeeded on every host."""
        return self.failure is None


def describe(exc: BaseException) -> str:
    """One line naming the cause of a failure."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = type(exc).__name__
    if isinstance(exc, (BadInput, Retryable, StepTimeout, HostFailure)):
        return text or kind
    return f"{kind}: {text}" if text else kind


def _outcomes(step: Step, hosts: list[str], out: Mapping[str, BaseException | None] | None
              ) -> dict[str, BaseException | None]:
    out = out or {}
    result = {h: out[h] for h in hosts if h in out}
    for h in hosts:
        if h not in out:
            result[h] = RuntimeError(f"step {step.name!r} returned no result for this host")
    return result


def _attempt_inline(step: Step, ctx: ShipContext, hosts: list[str]) -> dict[str, BaseException | None]:
    """One attempt in this thread, interrupted by gevent when the step's budget runs out."""
    import gevent

    timeout = gevent.Timeout(max(0.01, ctx.deadline - time.monotonic()))
    timeout.start()
    try:
        return _outcomes(step, hosts, step.run(ctx, hosts))
    except gevent.Timeout as exc:
        if exc is not timeout:
            raise
        return {h: StepTimeout(f"timed out after {step.timeout:g}s") for h in hosts}
    except Exception as exc:
        return dict.fromkeys(hosts, exc)
    finally:
        timeout.close()


def _attempt(step: Step, ctx: ShipContext, hosts: list[str]) -> dict[str, BaseException | None]:
    """One attempt of a step on some hosts, abandoned when the step's budget runs out.

    The step runs in a daemon thread: Python cannot kill a thread, so a step that
    overruns is left to finish in the background (its own timeouts end it) while the
    ship reports the timeout and moves on to recording.
    """
    if step.inline:
        return _attempt_inline(step, ctx, hosts)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = step.run(ctx, hosts)
        except BaseException as exc:  # a step function that raised instead of returning outcomes
            box["exc"] = exc

    worker = threading.Thread(target=target, name=f"ship-{step.name}", daemon=True)
    worker.start()
    worker.join(max(0.0, ctx.deadline - time.monotonic()))
    if worker.is_alive():
        return {h: StepTimeout(f"timed out after {step.timeout:g}s") for h in hosts}
    if "exc" in box:
        return dict.fromkeys(hosts, box["exc"])
    return _outcomes(step, hosts, box.get("out"))


def run_pipeline(
    steps: Sequence[Step],
    ctx: ShipContext,
    reporter: Reporter | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> PipelineResult:
    """Run steps in order on ``ctx.hosts``; stop at the first host that fails for good."""
    rep = reporter or NullReporter()
    results: list[StepResult] = []
    failure: Failure | None = None
    started = time.monotonic()
    for step in steps:
        hosts = [LOCAL] if step.local else list(ctx.hosts)
        if failure is not None:
            results.extend(StepResult(step.name, h, False, 0, 0.0, None, skipped=True) for h in hosts)
            continue
        rep.step_started(step.name, hosts)
        step_start = time.monotonic()
        ctx.deadline = step_start + step.timeout
        attempts = dict.fromkeys(hosts, 0)
        pending = list(hosts)
        done: dict[str, StepResult] = {}
        while pending:
            outcomes = _attempt(step, ctx, pending)
            retry: list[str] = []
            delays: list[float] = []
            for host in pending:
                attempts[host] += 1
                exc = outcomes[host]
                elapsed = time.monotonic() - step_start
                if exc is None:
                    done[host] = StepResult(step.name, host, True, attempts[host], elapsed)
                    rep.host_finished(step.name, host, True, elapsed, None)
                    continue
                delay = step.backoff.delay(attempts[host])
                can_retry = (
                    is_retryable(exc)
                    and attempts[host] < step.backoff.attempts
                    and time.monotonic() + delay < ctx.deadline
                )
                if can_retry:
                    rep.attempt_failed(step.name, host, attempts[host], exc, delay)
                    retry.append(host)
                    delays.append(delay)
                    continue
                cause = describe(exc)
                if is_retryable(exc) and attempts[host] > 1:
                    cause += f" (after {attempts[host]} attempts)"
                done[host] = StepResult(step.name, host, False, attempts[host], elapsed, cause)
                rep.host_finished(step.name, host, False, elapsed, cause)
                if failure is None:
                    failure = Failure(step.name, host, cause, bad_input=isinstance(exc, BadInput))
            if failure is not None:
                # Another host failed for good: do not keep retrying the rest of this step.
                for host in retry:
                    elapsed = time.monotonic() - step_start
                    note = "not retried: another host failed"
                    done[host] = StepResult(step.name, host, False, attempts[host], elapsed, note)
                    rep.host_finished(step.name, host, False, elapsed, note)
                break
            pending = retry
            if pending:
                sleep(max(delays))
        if failure is not None and failure.step == step.name and step.on_failure and not failure.bad_input:
            failure = _compensate(step, ctx, done, failure, rep)
        results.extend(done[h] for h in hosts if h in done)
    return PipelineResult(results, failure, time.monotonic() - started)


def _compensate(step: Step, ctx: ShipContext, done: dict[str, StepResult], failure: Failure,
                rep: Reporter) -> Failure:
    """Run a failed step's compensation and add what it did to the failure report."""
    assert step.on_failure is not None
    failed = [h for h, r in done.items() if not r.ok]
    try:
        notes = dict(step.on_failure(ctx, failed))
    except Exception as exc:  # the report must still name the original cause
        notes = dict.fromkeys(failed, f"putting back failed: {describe(exc)}")
    for host, note in notes.items():
        rep.note(step.name, host, note)
        if host in done:
            r = done[host]
            done[host] = StepResult(r.step, r.host, r.ok, r.attempts, r.seconds, f"{r.error}; {note}")
    own = notes.get(failure.host)
    return Failure(failure.step, failure.host, f"{failure.cause}; {own}", failure.bad_input) if own else failure


def record_run(
    registry: Registry,
    ctx: ShipContext,
    result: PipelineResult,
    *,
    kind: str,
    trigger: str,
    started_at: str,
) -> int:
    """Write one pipeline run (with per-step timings) into the registry's history."""
    summary = "ok" if result.ok else str(result.failure)
    return registry.record_history(
        name=ctx.name,
        environment=ctx.environment,
        kind=kind,
        trigger=trigger,
        started_at=started_at,
        ok=result.ok,
        summary=summary,
        manifest_hash=ctx.manifest.digest() if ctx.manifest is not None else ctx.data.get("manifest_hash"),
        steps=[r.record() for r in result.results if not r.skipped],
    )


def record_step(registry: Registry) -> Step:
    """The last step: the deployment goes into the registry as active, serving this manifest."""

    def record(ctx: ShipContext) -> None:
        if ctx.manifest is None:
            raise RuntimeError("nothing to record: the analyze step did not produce a manifest")
        key_files = ctx.data.get("api_key_files") or {}
        endpoints = [Endpoint(h, workflow_url(ctx.endpoints[h], ctx.workflow), key_files.get(h)) for h in ctx.hosts]
        ctx.deployment = registry.upsert_deployment(
            name=ctx.name,
            environment=ctx.environment,
            workflow=ctx.workflow,
            workflow_path=str(ctx.workflow_path),
            manifest_hash=ctx.manifest.digest(),
            target=ctx.target,
            endpoints=endpoints,
        )
        runs = int(ctx.data.get("generations", 0))
        if runs:
            registry.count_executions(ctx.deployment.id, executions=runs, errors=0)

    return Step("record", here(record), timeout=30, local=True)


def workflow_url(base: str, workflow: str) -> str:
    """The endpoint URL of one workflow on one API service."""
    return f"{base.rstrip('/')}/workflows/{workflow}"


@dataclass
class ShipOutcome:
    """What `comfyfleet ship` reports: the pipeline result, the history id, the deployment."""

    result: PipelineResult
    history_id: int
    deployment: Deployment | None


def run_ship(
    ctx: ShipContext,
    steps: Sequence[Step],
    registry: Registry,
    reporter: Reporter | None = None,
    *,
    kind: str = "ship",
    trigger: str = "cli",
    sleep: Callable[[float], None] = time.sleep,
) -> ShipOutcome:
    """Run a ship's steps and record the run in the history, whatever its outcome."""
    started_at = utcnow()
    result = run_pipeline(steps, ctx, reporter, sleep)
    history_id = record_run(registry, ctx, result, kind=kind, trigger=trigger, started_at=started_at)
    return ShipOutcome(result, history_id, ctx.deployment if result.ok else None)


# -- checks against a host's API service (also used by schedules) --------------------


API_KEY_ENV = "COMFYFLEET_API_KEY"


@dataclass(frozen=True)
class OutputFile:
    """One file a generation produced, as the API reported it."""

    filename: str
    url: str | None = None
    data: bytes | None = None


class ApiClient:
    """The calls ship and the schedules make to one host's API service."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, resp: httpx.Response, what: str) -> httpx.Response:
        if resp.status_code in (401, 403):
            raise HostFailure(
                f"{what} answered {resp.status_code}: no valid API key; set api_keys_file in the "
                f"host's data (the keys update-binary installs) or {API_KEY_ENV}"
            )
        if resp.status_code in (429, 502, 503, 504):
            # The service or ComfyUI behind it is starting or busy: worth another try.
            raise Retryable(f"{what} answered {resp.status_code}{_detail(resp)}")
        if resp.status_code >= 400:
            raise HostFailure(f"{what} answered {resp.status_code}{_detail(resp)}")
        return resp

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        """GET /health: the service process is up."""
        resp = self._http.get("/health", timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        return _json(self._check(resp, "GET /health"))

    def ready(self, workflow: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """GET /ready: ComfyUI reachable, the workflows loaded, their models present.

        /ready speaks for every workflow the service has; with ``workflow`` given, only
        what concerns that one decides (another workflow's missing pack is not this
        ship's failure), read from the checks in the 503 body.
        """
        resp = self._http.get("/ready", timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        if resp.status_code != 503 or workflow is None:
            return _json(self._check(resp, "GET /ready"))
        try:
            body = resp.json()
            checks = body["checks"]
        except (ValueError, KeyError, TypeError):
            return _json(self._check(resp, "GET /ready"))
        return _ready_for(workflow, checks, body)

    def generate(self, workflow: str, params: Mapping[str, Any] | None = None,
                 timeout: float | None = None) -> list[OutputFile]:
        """POST /workflows/{workflow} (sync) with the workflow's defaults; the output files it produced.

        Outputs come back as download URLs (``"outputs": "url"``) so the check also proves
        the files can be fetched the way callers fetch them.
        """
        body: dict[str, Any] = {"outputs": "url"}
        if params:
            body["input"] = dict(params)
        what = f"POST /workflows/{workflow}"
        resp = self._http.post(f"/workflows/{workflow}", json=body, timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        if resp.status_code == 504:
            # The job is still running on the host: submitting another would only queue more.
            raise HostFailure(f"{what} answered 504{_detail(resp)}")
        return _outputs(_json(self._check(resp, what)))

    def fetch(self, output: OutputFile, timeout: float | None = None) -> bytes:
        """The bytes of an output file (inline, or downloaded from the URL the API gave)."""
        if output.data is not None:
            return output.data
        if not output.url:
            raise HostFailure(f"output {output.filename} has neither data nor a download URL")
        resp = self._http.get(output.url, timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        return self._check(resp, f"GET {output.url}").content


def _ready_for(workflow: str, checks: Mapping[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Judge a 503 from /ready for one workflow: ready, still starting, or broken."""
    comfy = checks.get("comfyui") or {}
    if not comfy.get("ok", False):
        raise Retryable(f"GET /ready: ComfyUI not reachable yet ({comfy.get('error') or 'starting'})")
    loaded = checks.get("workflows") or {}
    if workflow not in (loaded.get("served") or []):
        own = [e for e in loaded.get("errors") or [] if f"/{workflow}.json" in str(e) or str(e).startswith(workflow)]
        if own:
            raise HostFailure(f"GET /ready: workflow {workflow} not served: {own[0]}")
        raise Retryable(f"GET /ready: workflow {workflow} not loaded yet")
    missing = [m for m in (checks.get("models") or {}).get("missing") or [] if m.get("workflow") == workflow]
    if missing:
        files = ", ".join(f"{m.get('file')} (node {m.get('node')})" for m in missing)
        raise HostFailure(f"GET /ready: models missing for {workflow}: {files}")
    warm = checks.get("warmup") or {}
    if not warm.get("ok", True):
        if warm.get("state") in ("pending", "running"):
            raise Retryable(f"GET /ready: warmup {warm.get('state')}")
        raise HostFailure(f"GET /ready: warmup {warm.get('state') or 'failed'}: see the API log (--logs)")
    return body


def _detail(resp: httpx.Response) -> str:
    text = resp.text.strip().replace("\n", " ")
    return f": {text[:300]}" if text else ""


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        raise HostFailure(f"{resp.request.method} {resp.request.url.path} answered non-JSON{_detail(resp)}") from None
    return body if isinstance(body, dict) else {"value": body}


def _outputs(body: Mapping[str, Any]) -> list[OutputFile]:
    """Output files from a generation response.

    Accepts ``outputs`` as a list of files or as ComfyUI's ``{node_id: {images: [...]}}``;
    each file carries ``url`` or base64 ``data``/``base64``.
    """
    import base64

    raw = body.get("outputs", body.get("files", []))
    files: list[Mapping[str, Any]] = []
    if isinstance(raw, Mapping):
        for per_node in raw.values():
            if isinstance(per_node, Mapping):
                for items in per_node.values():
                    if isinstance(items, list):
                        files.extend(i for i in items if isinstance(i, Mapping))
            elif isinstance(per_node, list):
                files.extend(i for i in per_node if isinstance(i, Mapping))
    elif isinstance(raw, list):
        files.extend(i for i in raw if isinstance(i, Mapping))
    out: list[OutputFile] = []
    for f in files:
        if not (f.get("filename") or f.get("name")):
            continue  # a plain value a node returned (text, numbers), not a file
        encoded = f.get("base64") or f.get("data")
        out.append(
            OutputFile(
                filename=str(f.get("filename") or f.get("name")),
                url=f.get("url"),
                data=base64.b64decode(encoded) if isinstance(encoded, str) else None,
            )
        )
    return out


# -- the standard steps ---------------------------------------------------------------

_counter_lock = threading.Lock()


def api_client(ctx: ShipContext, host: str, cap: float) -> ApiClient:
    """A client for one host's API service, its timeout bounded by the step's budget.

    The key: the host's key file (read now, so a scheduled check sees a rotated key), else
    $COMFYFLEET_API_KEY; none on a loopback-only service.
    """
    key_file = (ctx.data.get("api_key_files") or {}).get(host)
    key = read_api_key(key_file, host) if key_file else ctx.data.get("api_key")
    return ApiClient(ctx.endpoints[host], key, timeout=ctx.remaining(cap))


def count_generation(ctx: ShipContext) -> None:
    """Count one finished generation (hosts run in parallel threads)."""
    with _counter_lock:
        ctx.data["generations"] = int(ctx.data.get("generations", 0)) + 1


def check_health(ctx: ShipContext, host: str) -> None:
    """GET /health, then /ready, on one host (503 while starting is retried by the step)."""
    with api_client(ctx, host, 15) as api:
        api.health(timeout=ctx.remaining(15))
        api.ready(ctx.workflow, timeout=ctx.remaining(15))


def check_generation(ctx: ShipContext, host: str) -> None:
    """One generation with the workflow's defaults on one host; an output file must arrive."""
    with api_client(ctx, host, 600) as api:
        outputs = api.generate(ctx.workflow, timeout=ctx.remaining())
        count_generation(ctx)
        if not outputs:
            raise HostFailure(f"POST /workflows/{ctx.workflow} finished but returned no output file")
        sizes = []
        for output in outputs:
            data = api.fetch(output, timeout=ctx.remaining(60))
            if not data:
                raise HostFailure(f"output file {output.filename} is empty")
            sizes.append((output.filename, len(data)))
    with _counter_lock:
        ctx.data.setdefault("outputs", {})[host] = sizes


def health_step(timeout: float = 180, attempts: int = 8) -> Step:
    """/health and /ready on every host, retried while the service (re)starts."""
    return Step("health", each_host(check_health), timeout, Backoff(attempts, 1.0, 2.0, 15.0))


def generate_step(timeout: float = 600, attempts: int = 3) -> Step:
    """One real generation per host with the workflow's defaults."""
    return Step("generate", each_host(check_generation), timeout, Backoff(attempts, 2.0, 2.0, 20.0))


AnalyzeFn = Callable[[Path], Any]


def unresolved_message(manifest: Any, path: Path) -> str | None:
    """One line listing what analysis could not resolve, or None when nothing."""
    problems: list[str] = []
    for node in manifest.unresolved.nodes:
        ids = ",".join(node.node_ids) or "?"
        problems.append(f"node {node.class_type} (#{ids}): {node.reason}")
    for model in manifest.unresolved.models:
        ids = ",".join(model.node_ids) or "?"
        problems.append(f"model {model.filename} (#{ids}): {model.reason}")
    if not problems:
        return None
    return (
        f"{path}: {len(problems)} unresolved, nothing was deployed: " + "; ".join(problems)
        + f" (add them to {path.parent / 'overrides.yaml'} and ship again)"
    )


def analyze_workflow(path: Path) -> Any:
    """The workflow's manifest, with the overrides.yaml of its folder, as the host tiers see it."""
    from comfyfleet.analysis import analyze_paths

    result = analyze_paths([path])
    if result.errors:
        raise BadInput(result.errors[0])
    if not result.manifests:
        raise BadInput(f"{path}: not a workflow")
    return result.manifests[0]


def analyze_step(analyze: AnalyzeFn | None = None, timeout: float = 60) -> Step:
    """Strict analysis here: anything unresolved stops the ship before any host is touched."""

    def run(ctx: ShipContext) -> None:
        manifest = (analyze or analyze_workflow)(ctx.workflow_path)
        message = unresolved_message(manifest, ctx.workflow_path)
        if message:
            raise BadInput(message)
        ctx.manifest = manifest

    return Step("analyze", here(run), timeout, local=True)


# -- planning a ship: the target's hosts and where their API answers ------------------

HostSpecs = list[tuple[str, dict[str, Any]]]


def api_base_for(name: str, data: Mapping[str, Any]) -> str:
    """Where the operator's machine reaches a host's API service.

    ``api_url`` in the host's data wins (a proxy or TLS in front); otherwise the host's
    SSH address (``ssh_hostname``, else its inventory name) and ``api_port``.
    """
    from comfyfleet.inventory import validate_host_data

    explicit = data.get("api_url")
    if isinstance(explicit, str) and explicit:
        if not explicit.startswith(("http://", "https://")):
            raise BadInput(f"host {name}: api_url must start with http:// or https:// (got {explicit!r})")
        return explicit.rstrip("/")
    cfg = validate_host_data(name, dict(data))
    address = str(data.get("ssh_hostname") or name)
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"http://{address}:{cfg.api_port}"


def read_api_key(path: str | Path, host: str) -> str:
    """The first key of an API key file (`KEY` or `KEY admin` per line, '#' comments), for one host."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise BadInput(f"host {host}: api_keys_file {path}: {exc.strerror or exc}") from None
    key = next((ln.split()[0] for ln in lines if ln.strip() and not ln.strip().startswith("#")), "")
    if not key:
        raise BadInput(f"host {host}: api_keys_file {path} holds no key: put one key per line")
    return key


def api_key_files(specs: HostSpecs) -> dict[str, str]:
    """Each host's ``api_keys_file`` (the keys update-binary installs there), as absolute paths."""
    return {name: str(Path(str(data["api_keys_file"])).resolve()) for name, data in specs
            if data.get("api_keys_file")}


def served_folder(host: str, data: Mapping[str, Any], workflow: Path) -> str:
    """The local workflows folder a host's API serves; the shipped workflow must be in it.

    update-binary mirrors that folder to the host (removing workflows not in it), so a
    ship from another folder would take the host's other endpoints away.
    """
    folder = data.get("workflows_dir")
    if not folder:
        return str(workflow.parent)
    if Path(str(folder)).resolve() != workflow.resolve().parent:
        raise BadInput(
            f"host {host} serves the workflows in {folder} (workflows_dir), and {workflow} is not there: "
            f"copy it into {folder} and ship that file (the API gets the whole folder)"
        )
    return str(folder)


def resolve_target(target: str) -> HostSpecs:
    """The target's hosts with their validated data (BadInput for a bad target or host data)."""
    from comfyfleet import runner

    return runner.prepare_hosts(target)


def prepare_ship(
    workflow: Path,
    target: str,
    environment: str,
    name: str | None,
    registry: Registry,
    *,
    resolve: Callable[[str], HostSpecs] = resolve_target,
) -> ShipContext:
    """Check the request and find the hosts; BadInput before anything runs when it cannot work."""
    import os

    from comfyfleet.registry import check_name

    path = Path(workflow)
    if not path.is_file():
        raise BadInput(f"{path}: workflow file not found: pass the path of a workflow JSON file")
    try:
        workflow_name(path)
    except BadWorkflowName as exc:
        raise BadInput(str(exc)) from None
    deployment_name = check_name(name or path.stem)
    check_name(environment, "environment")
    existing = registry.find(deployment_name, environment)
    if existing is not None and existing.workflow != path.stem:
        raise BadInput(
            f"deployment {deployment_name} ({environment}) serves workflow {existing.workflow}, not "
            f"{path.stem}: pass another --name, or delete it first"
        )
    if existing is not None and existing.target != target:
        raise BadInput(
            f"deployment {deployment_name} ({environment}) runs on {existing.target}, not {target}: "
            f"ship with --to {existing.target}, pass another --name, or delete it first"
        )
    ctx = ShipContext(workflow_path=path, name=deployment_name, environment=environment, target=target)
    key = os.environ.get(API_KEY_ENV)
    if key:
        ctx.data["api_key"] = key
    if target == MODAL:
        ctx.hosts = [MODAL]
        return ctx
    specs = [(n, {**d, "workflows_dir": served_folder(n, d, path)}) for n, d in resolve(target)]
    ctx.hosts = [n for n, _ in specs]
    ctx.endpoints = {n: api_base_for(n, d) for n, d in specs}
    ctx.data["specs"] = specs
    ctx.data["api_key_files"] = api_key_files(specs)
    for host, path in ctx.data["api_key_files"].items():
        read_api_key(path, host)  # a missing or empty key file stops the ship before any host is touched
    return ctx


MODAL = "modal"
"""The target (and host name) of a ship to Modal."""


# -- one change at a time per host ----------------------------------------------------


class HostsBusy(Exception):
    """Another comfyfleet process is changing one of the hosts right now."""


@contextmanager
def hold_hosts(hosts: Sequence[str], what: str) -> Iterator[None]:
    """Hold an exclusive lock per host (in the state directory) while changing the hosts.

    Two ships, or a ship and a stop, on the same host at once would interleave their
    pyinfra operations and restarts. Locks die with the process, so a crash leaves none.
    """
    import fcntl
    import hashlib
    import os

    from comfyfleet.registry import state_dir

    folder = state_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    held: list[int] = []
    try:
        for host in sorted(set(hosts)):
            path = folder / f"{hashlib.sha256(host.encode()).hexdigest()[:16]}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another comfyfleet process"
                os.close(fd)
                raise HostsBusy(f"host {host} is busy: {holder}; try again when it has finished") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
            held.append(fd)
        yield
    finally:
        for fd in held:
            os.close(fd)


# -- host tasks through the runner ----------------------------------------------------

HostTask = str | Callable[[], None]
"""A registered task name, or a pyinfra deploy function."""
TaskRun = Callable[[HostSpecs, HostTask, dict[str, Any]], Any]
"""runner.run(specs, task, data) -> RunResult (hosts[].host/status/reason/ok)."""


def _runner_run(specs: HostSpecs, task: HostTask, data: dict[str, Any]) -> Any:
    from comfyfleet import runner

    return runner.run(specs, task, data=data)


def task_step(
    name: str,
    tasks: Sequence[tuple[HostTask, Callable[[ShipContext], dict[str, Any]]]],
    timeout: float,
    backoff: Backoff = Backoff(3, 5.0, 2.0, 30.0),
    run_task: TaskRun = _runner_run,
    preflight: Callable[[], None] | None = None,
) -> Step:
    """A step running pyinfra tasks on the pending hosts, in order; per-host outcomes.

    An unreachable host is a network error (retried); a failed operation is not
    (its reason names the operation and the line that says why). ``preflight`` runs
    first and may refuse (BadInput) before any host is touched.
    """

    def run(ctx: ShipContext, hosts: Sequence[str]) -> HostOutcomes:
        if preflight is not None:
            preflight()
        specs: HostSpecs = [
            (n, {**d}) for n, d in ctx.data.get("specs", []) if n in hosts
        ]
        outcomes: dict[str, BaseException | None] = dict.fromkeys(hosts)
        for task, data_for in tasks:
            live = [(n, {**d, **data_for(ctx)}) for n, d in specs if outcomes[n] is None]
            if not live:
                break
            result = run_task(live, task, {})
            label = task if isinstance(task, str) else getattr(task, "__name__", "deploy")
            for hr in result.hosts:
                if hr.ok or hr.host not in outcomes:
                    continue
                reason = f"{label}: {hr.reason or hr.status}"
                if hr.status == "unreachable":
                    outcomes[hr.host] = Retryable(f"{label}: host unreachable: {hr.reason or 'no connection'}")
                else:
                    outcomes[hr.host] = HostFailure(reason)
        return outcomes

    return Step(name, run, timeout, backoff, inline=True)


# -- putting back node packs a failed install added -----------------------------------


class NodeFolders(FactBase):
    """Names of the folders directly in a custom_nodes/ folder (empty when it is missing)."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, path: str) -> Any:
        from comfyfleet.operations.shell import script

        return script('find "$1" -mindepth 1 -maxdepth 1 -type d -printf "%f\\n" 2>/dev/null || true', path)

    def process(self, output: list[str]) -> list[str]:
        return sorted(line.strip() for line in output if line.strip())


def nodes_snapshot(store: dict[str, list[str]]) -> Callable[[], None]:
    """A deploy recording each host's custom_nodes folders (before the install step)."""
    from pyinfra import host as current
    from pyinfra.api import deploy, operation

    from comfyfleet.inventory import host_config

    @operation(is_idempotent=False)
    def record(path: str) -> Any:
        store[current.name] = list(current.get_fact(NodeFolders, path=path))
        current.noop(f"{len(store[current.name])} node pack folder(s) before the ship")
        yield from ()

    @deploy("Node packs before the ship")
    def snapshot() -> None:
        cfg = host_config(current)
        record(name="List custom_nodes", path=cfg.layout.custom_nodes, _sudo=cfg.sudo)

    snapshot.__name__ = "nodes-snapshot"  # type: ignore[attr-defined]
    return cast(Callable[[], None], snapshot)


def park_new_nodes(before: Mapping[str, list[str]], stamp: str) -> Callable[[], None]:
    """A deploy moving node pack folders that were not there before the ship out of custom_nodes/
    (into ``<data_root>/.comfyfleet/parked-nodes/<stamp>/``, never deleted), then restarting
    ComfyUI if it does not answer, and waiting until it does."""
    from pyinfra import host as current
    from pyinfra.api import QuoteString, StringCommand, deploy, operation

    from comfyfleet.facts.comfyui import HttpStatus
    from comfyfleet.inventory import host_config
    from comfyfleet.operations import comfyui

    @operation(is_idempotent=False)
    def park(path: str, parked: str) -> Any:
        keep = set(before.get(current.name, []))
        new = [name for name in current.get_fact(NodeFolders, path=path) if name not in keep]
        if not new:
            current.noop("no node pack folder was added")
            return
        yield StringCommand("mkdir", "-p", QuoteString(parked))
        for name in new:
            yield StringCommand("mv", QuoteString(f"{path}/{name}"), QuoteString(f"{parked}/{name}"))

    @operation(is_idempotent=False)
    def restart_if_down(url: str, container: str) -> Any:
        if current.get_fact(HttpStatus, url=f"{url}/system_stats") == 200:
            current.noop("ComfyUI answers: not restarted")
            return
        yield StringCommand("docker", "restart", "-t", "30", QuoteString(container))

    @deploy("Put back the node packs")
    def put_back() -> None:
        cfg = host_config(current)
        lay = cfg.layout
        if current.name not in before:
            current.noop("no snapshot of custom_nodes: nothing to put back")
            return
        park(name="Park node packs the ship added", path=lay.custom_nodes,
             parked=f"{lay.state}/parked-nodes/{stamp}", _sudo=cfg.sudo)
        restart_if_down(name="Restart ComfyUI if it is down", url=cfg.comfyui_url, container=lay.comfyui_container,
                        _sudo=cfg.sudo)
        comfyui.wait_healthy(name="ComfyUI health", url=cfg.comfyui_url, container=lay.comfyui_container,
                             timeout=cfg.health_timeout, _sudo=cfg.sudo)

    put_back.__name__ = "put-back-nodes"  # type: ignore[attr-defined]
    return cast(Callable[[], None], put_back)


def put_back_nodes(run_task: TaskRun) -> Callable[[ShipContext, list[str]], dict[str, str]]:
    """The install step's compensation: park the packs it added, ComfyUI healthy again."""

    def compensate(ctx: ShipContext, hosts: list[str]) -> dict[str, str]:
        before = ctx.data.get("nodes_before") or {}
        specs = [(n, d) for n, d in ctx.data.get("specs", []) if n in hosts and n in before]
        if not specs:
            return {}
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        result = run_task(specs, park_new_nodes(before, stamp), {})
        notes: dict[str, str] = {}
        for hr in result.hosts:
            if hr.ok:
                moved = [c for c in hr.changed if "Park" in c]
                notes[hr.host] = ("put back: node packs the ship added were moved to "
                                  f".comfyfleet/parked-nodes/{stamp}/, ComfyUI answers again") if moved else \
                    "nothing to put back: no node pack was added, ComfyUI answers"
            else:
                notes[hr.host] = f"putting back failed: {hr.reason or hr.status}"
        return notes

    return compensate


# -- the standard ship ----------------------------------------------------------------

HOST_TASKS = {"install": ("install-nodes", "download-models"), "api": ("update-binary",)}
"""Tier tasks each host step runs, in order (tiers 2-3, then tier 1)."""


def _workflow_data(ctx: ShipContext) -> dict[str, Any]:
    return {"workflow": str(ctx.workflow_path)}


def check_tasks_available(names: Sequence[str]) -> None:
    """BadInput before any host is touched when a tier task is not in this version."""
    from comfyfleet import runner

    for name in names:
        runner.resolve_task(name)


def serving_deploy(workflow: str, served: bool) -> Callable[[], None]:
    """The host-side switch of one workflow's endpoint (see comfyfleet.registry.serving)."""
    from comfyfleet.registry.serving import serving_deploy as make

    return make(workflow, served)


def standard_steps(
    ctx: ShipContext,
    registry: Registry,
    *,
    analyze: AnalyzeFn | None = None,
    run_task: TaskRun = _runner_run,
    check_tasks: Callable[[Sequence[str]], None] = check_tasks_available,
) -> list[Step]:
    """analyze → install (tiers 2-3) → api (tier 1) → health → generate → record."""
    if ctx.target == MODAL:
        return modal_steps(ctx, registry, analyze=analyze)
    every_task = [t for group in HOST_TASKS.values() for t in group]
    before: dict[str, list[str]] = ctx.data.setdefault("nodes_before", {})
    install = task_step(
        "install",
        [(nodes_snapshot(before), _workflow_data), *((t, _workflow_data) for t in HOST_TASKS["install"])],
        # Model bytes dominate; the budget is for a large checkpoint on a slow link. All tier
        # tasks are checked before the first one runs, so a missing one touches no host.
        timeout=3 * 3600, run_task=run_task, preflight=lambda: check_tasks(every_task),
    )
    return [
        analyze_step(analyze),
        # A pack that keeps ComfyUI from starting must not take the running workflows down with it.
        replace(install, on_failure=put_back_nodes(run_task)),
        task_step("api", [*((t, _workflow_data) for t in HOST_TASKS["api"]),
                          # A ship serves the workflow even if it had been stopped before.
                          (serving_deploy(ctx.workflow, True), _workflow_data)],
                  timeout=600, run_task=run_task),
        health_step(),
        generate_step(),
        record_step(registry),
    ]


def modal_app_name(name: str, environment: str) -> str:
    """The Modal app of one deployment (2-40 lower-case letters, digits and dashes)."""
    import re

    slug = re.sub(r"[^a-z0-9-]+", "-", f"cf-{environment}-{name}".lower()).strip("-")
    return slug[:40].rstrip("-")


def modal_app_file(name: str, environment: str) -> Path:
    """Where ship writes a deployment's Modal app file (in the user's state directory)."""
    from comfyfleet.registry import state_dir

    return state_dir() / "modal" / f"{environment}-{name}.py"


def modal_steps(ctx: ShipContext, registry: Registry, *, analyze: AnalyzeFn | None = None) -> list[Step]:
    """Ship to Modal: the app file and model volume, `modal deploy`, then the same checks as hosts.

    One Modal app per deployment (its own image, volume and endpoint), generated from the
    same manifest the hosts get; cold starts make the health budget long.
    """

    def prepare(ctx: ShipContext, host: str) -> None:
        from comfyfleet.modal_target import deploy as modal_deploy
        from comfyfleet.modal_target.generate import generate_app
        from comfyfleet.modal_target.modal_cli import ModalCli
        from comfyfleet.modal_target.options import ModalOptions

        options = ModalOptions(app_name=modal_app_name(ctx.name, ctx.environment)).checked()
        app = generate_app([ctx.workflow_path], options, out_path=modal_app_file(ctx.name, ctx.environment))
        facts = modal_deploy.read_app_facts(app.path)
        cli = ModalCli()
        modal_deploy.sync_secrets(facts, cli)
        modal_deploy.fill_models_volume(facts, cli)
        ctx.data["modal_facts"] = facts

    def deploy(ctx: ShipContext, host: str) -> None:
        from comfyfleet.modal_target import deploy as modal_deploy
        from comfyfleet.modal_target.modal_cli import ModalCli

        deployed = modal_deploy.deploy_app(ctx.data["modal_facts"], ModalCli())
        ctx.endpoints[host] = deployed.url

    return [
        analyze_step(analyze),
        Step("install", each_host(prepare), timeout=6 * 3600),
        Step("api", each_host(deploy), timeout=3600),
        health_step(timeout=900, attempts=12),
        generate_step(timeout=1800),
        record_step(registry),
    ]
