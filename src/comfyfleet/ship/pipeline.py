"""The ship pipeline: named steps with time budgets and retries, run on every host of a target.

:func:`run_pipeline` runs any sequence of :class:`Step`: each step has a time budget and a
:class:`Backoff` (attempts with exponential delays, used only for errors another attempt can
cure: network and startup errors, never bad input), hosts are retried one by one, and the
first host that fails for good stops the run, naming the step, the host and the cause. A
step's ``on_failure`` puts back what the ship changed.

Steps are plain values around injectable callables, so the pipeline's logic is tested with
any step functions; :mod:`comfyfleet.ship.hosts` and :mod:`comfyfleet.ship.modal` build the
real ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gevent
import httpx
from comfyui_api.client import ApiUnavailable

from comfyfleet.errors import BadInput, HostFailure
from comfyfleet.registry import Deployment, StepRecord

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
    # ApiUnavailable: the API service not reachable, starting or busy; httpx.TransportError
    # covers refused connections, resets and read timeouts; the builtin ones come from
    # sockets used directly (and from pyinfra's connectors).
    return isinstance(exc, (ApiUnavailable, httpx.TransportError, ConnectionError, TimeoutError))


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
    """Compensation once this step failed (bad input excepted), given the hosts it failed on: puts
    back what the ship changed (on those hosts, or on all where the target must stay one); returns
    a note per host it touched for the report. Runs in this thread."""


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

    def attempt_failed(
        self, step: str, host: str, attempt: int, error: BaseException, retry_in: float
    ) -> None: ...

    def host_finished(self, step: str, host: str, ok: bool, seconds: float, error: str | None) -> None: ...

    def note(self, step: str, host: str, message: str) -> None: ...


class NullReporter:
    """Shows nothing."""

    def step_started(self, step: str, hosts: Sequence[str]) -> None:
        """Nothing to show."""

    def attempt_failed(
        self, step: str, host: str, attempt: int, error: BaseException, retry_in: float
    ) -> None:
        """Nothing to show."""

    def host_finished(self, step: str, host: str, ok: bool, seconds: float, error: str | None) -> None:
        """Nothing to show."""

    def note(self, step: str, host: str, message: str) -> None:
        """Nothing to show."""


# -- the pipeline -------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult(StepRecord):
    """The registry's step record plus ``skipped``: an earlier step failed, this one did not run."""

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


def _outcomes(
    step: Step, hosts: list[str], out: Mapping[str, BaseException | None] | None
) -> dict[str, BaseException | None]:
    out = out or {}
    result = {h: out[h] for h in hosts if h in out}
    for h in hosts:
        if h not in out:
            result[h] = RuntimeError(f"step {step.name!r} returned no result for this host")
    return result


def _attempt_inline(step: Step, ctx: ShipContext, hosts: list[str]) -> dict[str, BaseException | None]:
    """One attempt in this thread, interrupted by gevent when the step's budget runs out."""
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


def _compensate(
    step: Step, ctx: ShipContext, done: dict[str, StepResult], failure: Failure, rep: Reporter
) -> Failure:
    """Run a failed step's compensation and add what it did to the failure report."""
    assert step.on_failure is not None
    failed = [h for h, r in done.items() if not r.ok]
    try:
        notes = dict(step.on_failure(ctx, failed))
    except Exception as exc:  # the report must still name the original cause
        notes = dict.fromkeys(failed, f"putting back failed: {describe(exc)}")
    for host, note in notes.items():
        rep.note(step.name, host, note)
        if host in done and not done[host].ok:
            r = done[host]
            done[host] = StepResult(r.step, r.host, r.ok, r.attempts, r.seconds, f"{r.error}; {note}")
    own = notes.get(failure.host)
    return (
        Failure(failure.step, failure.host, f"{failure.cause}; {own}", failure.bad_input) if own else failure
    )
