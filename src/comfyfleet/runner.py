"""Run deploy functions and tasks on targets through pyinfra's Python API, with per-host results.

Targets
    An IP or host name (``203.0.113.7``), a comma list (``a,b``), a pyinfra inventory
    file (``inventory/lambda.py``, with its ``group_data/``) or a group or host in one
    (``inventory/lambda.py:gpu``). Every host's data is validated
    (:func:`comfyfleet.inventory.validate_host_data`) before anything connects.

Strategies
    ``parallel`` caps how many hosts run at once (default: all), ``serial`` runs host
    after host, ``rolling=N`` runs batches of N hosts: a batch must end with every host
    healthy (the task itself waits for health) before the next starts, and the first
    failing batch stops the run, leaving later hosts untouched (status ``skipped``).
    ``fail_percent`` stops the run once more than that share of hosts failed. An
    unreachable host fails alone; the others go on.

Results
    :func:`run` returns a :class:`RunResult` with one :class:`HostResult` per host:
    ``changed`` / ``no change`` / ``would change`` (dry run) / ``failed`` /
    ``unreachable`` / ``skipped``, a one-line ``reason`` for failures, the names of the
    operations that changed, and the host's :class:`HostReport`. ``RunResult.ok`` is
    false when any host is not ok or the run stopped early.

    A :class:`~comfyfleet.errors.BadInput` raised by a task (an unsafe model name in a
    workflow, bad host data) is not a host failure: :func:`run` raises it, so the CLI
    prints its one line and exits 2. Tasks raise it while their operations are added,
    before any command reaches a host; one raised by an operation while it executes
    stops every host the same way.

Known hosts
    pyinfra memoizes known_hosts files per process; each :func:`run` clears that memo so
    a long-lived process sees hosts (and new host keys) added since its last run.

Reports
    What tasks show the operator per host: see :mod:`comfyfleet.context`.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import gevent
from pyinfra.api import BaseStateCallback, Config, Host, Inventory, State
from pyinfra.api.exceptions import PyinfraError

from comfyfleet.context import HostReport, ReportSection, report
from comfyfleet.deploys import tasks
from comfyfleet.errors import BadInput
from comfyfleet.inventory import address_problem, run_data, validate_host_data
from comfyfleet.pyinfra_compat import (
    add_deploy,
    all_ops_complete,
    cache_argument_types,
    connect_all,
    ctx_host,
    ctx_state,
    disconnect_all,
    forget_known_hosts,
    op_arguments,
    op_meta,
    run_host_op,
    run_ops,
)

__all__ = ["HostReport", "HostResult", "ReportSection", "RunOptions", "RunResult", "report", "run"]

logger = logging.getLogger("comfyfleet")

# --- results ---------------------------------------------------------------------------


@dataclass
class HostResult:
    """The outcome on one host."""

    host: str
    status: str
    reason: str = ""
    changed: list[str] = field(default_factory=list)
    report: HostReport = field(default_factory=HostReport)

    @property
    def ok(self) -> bool:
        return self.status in ("changed", "no change", "would change")


@dataclass
class RunResult:
    """Every host's outcome, in inventory order."""

    task: str
    hosts: list[HostResult]
    dry_run: bool = False
    stopped: str = ""

    @property
    def ok(self) -> bool:
        """Every host ended well and the run went to its end (a stopped run is never ok)."""
        return all(h.ok for h in self.hosts) and not self.stopped

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


@dataclass(frozen=True)
class RunOptions:
    """How to spread a run over the hosts."""

    dry_run: bool = False
    parallel: int | None = None
    serial: bool = False
    rolling: int | None = None
    fail_percent: int | None = None
    connect_timeout: int = 10


# --- targets ---------------------------------------------------------------------------

HostSpec = tuple[str, dict[str, Any]]
_HOSTNAME = re.compile(r"^(@[a-z]+(/[A-Za-z0-9._:/-]+)?|[A-Za-z0-9._:\[\]-]+)$")


def load_target(target: str) -> list[HostSpec]:
    """Hosts (name, merged data) of a target: host, comma list, inventory file, or FILE:GROUP."""
    if Path(target).is_file():
        return _from_file(target, "")
    if Path(target).is_dir():
        found = ", ".join(str(p) for p in sorted(Path(target).glob("*.py"))[:5]) or "none"
        raise BadInput(f"target {target} is a folder: give the inventory file in it (found: {found})")
    path_part, sep, group = target.rpartition(":")
    if sep and Path(path_part).is_file():
        return _from_file(path_part, group)
    if target.endswith(".py") or path_part.endswith(".py"):
        raise BadInput(f"inventory file {path_part if sep else target} not found")
    names = [n.strip() for n in target.split(",") if n.strip()]
    if not names:
        raise BadInput("no target given: pass an IP, a host name, an inventory file or FILE:GROUP")
    for name in names:
        if not _HOSTNAME.match(name):
            raise BadInput(f"target {name!r} is not a host name, IP or inventory file")
        problem = address_problem(name)
        if problem:
            raise BadInput(f"target {name!r} {problem}")
    return [(n, {}) for n in names]


def _exec_data_file(path: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__file__": str(path), "__name__": path.stem}
    try:
        exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102 - the operator's own inventory
    except Exception as exc:  # any error in the file is the operator's to fix
        raise BadInput(f"inventory {path}: {type(exc).__name__}: {exc}") from None
    return {k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, type(sys))}


def _host_entry(item: Any, path: Path, group: str) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
        return item[0], dict(item[1])
    raise BadInput(f"inventory {path}: group {group}: {item!r} is not a host name or (name, data) tuple")


def _from_file(path: str, group: str) -> list[HostSpec]:
    """Hosts of a pyinfra inventory file, with data merged the way ``pyinfra FILE ...`` merges it.

    Groups are the file's module-level lists (or ``(hosts, data)`` tuples); every host is
    also in the group named after the file. Data precedence, highest first: the host's own
    dict, its groups' data (``group_data/<group>.py`` beside the file, then the group
    tuple's dict), ``group_data/all.py``. (pyinfra's loader is not used in-process because
    importing pyinfra_cli monkey-patches the whole interpreter with gevent.)
    """
    file = Path(path).resolve()
    attrs = _exec_data_file(file)
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    group_own: dict[str, dict[str, Any]] = {}
    for name, value in attrs.items():
        is_pair = isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], list)
        hosts, extra = (value[0], value[1]) if is_pair and isinstance(value[1], dict) else (value, {})
        if not isinstance(hosts, list):
            continue
        groups[name] = [_host_entry(item, file, name) for item in hosts]
        group_own[name] = dict(extra)
    order: list[str] = []
    own: dict[str, dict[str, Any]] = {}
    member: dict[str, list[str]] = {}
    for gname, entries in groups.items():
        for hname, hdata in entries:
            if hname not in own:
                order.append(hname)
                own[hname] = {}
            own[hname].update(hdata)
            member.setdefault(hname, []).append(gname)
    stem = file.stem
    gd_dir = file.parent / "group_data"
    group_files = {p.stem: _exec_data_file(p) for p in sorted(gd_dir.glob("*.py"))} if gd_dir.is_dir() else {}
    specs: list[HostSpec] = []
    for hname in order:
        data: dict[str, Any] = dict(group_files.get("all", {}))
        for gname in [stem, *member[hname]]:
            data.update(group_own.get(gname, {}))
            data.update(group_files.get(gname, {}))
        data.update(own[hname])
        specs.append((hname, data))
    if group:
        if group in groups:
            wanted = [h for h, _ in groups[group]]
        elif group in own:
            wanted = [group]
        else:
            names = ", ".join(sorted(groups)) or "none"
            raise BadInput(f"inventory {path}: no group or host {group!r} (groups: {names})")
        specs = [s for s in specs if s[0] in wanted]
    if not specs:
        raise BadInput(f"inventory {path}{':' + group if group else ''} has no hosts")
    return specs


def prepare_hosts(
    target: str, data: dict[str, Any] | None = None, provider: str | None = None
) -> list[HostSpec]:
    """Load the target, apply ``data`` overrides and validate every host; raise BadInput on the first problem."""
    specs = []
    for name, host_data in load_target(target):
        merged = {**host_data, **(data or {})}
        if provider and merged.get("provider") not in (None, provider):
            raise BadInput(
                f"host {name}: provider is {merged['provider']!r} in the inventory but {provider!r} was asked for"
            )
        cfg = validate_host_data(name, merged, provider)
        merged["provider"] = cfg.provider
        merged["ssh_user"] = cfg.ssh_user
        specs.append((name, merged))
    return specs


# --- running ---------------------------------------------------------------------------


class _Recorder(BaseStateCallback):
    def __init__(self) -> None:
        self.connect_errors: dict[str, str] = {}

    def host_connect_error(self, state: State, host: Host, error: Any) -> None:  # type: ignore[override]
        self.connect_errors[host.name] = str(error.args[0] if getattr(error, "args", None) else error)


def parallel_ssh() -> None:
    """Make sockets and threads gevent-aware, as pyinfra's CLI does, so hosts really run in parallel.

    pyinfra runs hosts as greenlets; without this, paramiko's blocking reads run them
    one after another. It changes the whole interpreter (threads become greenlets), so
    it is the caller's choice: the `comfyfleet` CLI calls it before a run, library
    callers and test processes that host other servers may leave it off.
    """
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        with warnings.catch_warnings(), _entry_points_read_once():
            warnings.simplefilter("ignore")
            monkey.patch_all()


@contextmanager
def _entry_points_read_once() -> Iterator[None]:
    """While it lasts, ``importlib.metadata.entry_points`` answers from one read of them all.

    gevent's ``patch_all`` asks for its plugin entry points once per module it patches (25
    times), and each ask reads every installed distribution's metadata: ~130 of its ~140 ms
    here, on every command that runs hosts. The plugins it finds are the same.
    """
    every = metadata.entry_points()
    asked = metadata.entry_points

    def cached(**selection: Any) -> Any:
        return every.select(**selection) if selection else every

    metadata.entry_points = cached  # type: ignore[assignment]
    try:
        yield
    finally:
        metadata.entry_points = asked


def resolve_task(task: str | Callable[[], None]) -> tuple[str, Callable[[], None]]:
    """A task name from the registry, or a deploy function, as (name, function)."""
    if callable(task):
        return getattr(task, "__name__", "deploy"), task
    tasks.load_all()
    fn = tasks.TASKS.get(task)
    if fn is None:
        known = ", ".join(sorted(tasks.TASKS)) or "none"
        raise BadInput(f"task {task!r} is not available in this version (available: {known})")
    return task, fn


def check_options(opts: RunOptions) -> None:
    """Refuse contradictory or out-of-range strategy options (BadInput, before anything loads)."""
    for label, value in (("parallel", opts.parallel), ("rolling", opts.rolling)):
        if value is not None and value < 1:
            raise BadInput(f"--{label} must be 1 or more (got {value})")
    if opts.fail_percent is not None and not 0 <= opts.fail_percent <= 100:
        raise BadInput(f"--fail-percent must be between 0 and 100 (got {opts.fail_percent})")
    if opts.serial and opts.parallel is not None:
        raise BadInput("--serial and --parallel contradict each other: give one of them")


def run(
    target: str | list[HostSpec],
    task: str | Callable[[], None],
    data: dict[str, Any] | None = None,
    options: RunOptions | None = None,
    provider: str | None = None,
    around_batch: Callable[[list[str]], AbstractContextManager[None]] | None = None,
) -> RunResult:
    """Run a task (registry name) or deploy function on every host of ``target``.

    Hosts only really overlap once :func:`parallel_ssh` has been called in this process.
    ``around_batch(host_names)`` wraps each batch (the gateway drains a rolling batch with it).
    """
    opts = options or RunOptions()
    name, fn = resolve_task(task)
    forget_known_hosts()
    cache_argument_types()
    check_options(opts)
    specs = prepare_hosts(target, data, provider) if isinstance(target, str) else target

    batch_size = opts.rolling or len(specs)
    batches = [specs[i : i + batch_size] for i in range(0, len(specs), batch_size)]
    results: list[HostResult] = []
    stopped = ""
    for index, batch in enumerate(batches):
        with around_batch([n for n, _ in batch]) if around_batch else nullcontext():
            batch_results, batch_stop = _run_batch(batch, fn, opts)
        results.extend(batch_results)
        if batch_stop:
            stopped = batch_stop
        if opts.rolling and (batch_stop or not all(r.ok for r in batch_results)):
            rest = [spec for later in batches[index + 1 :] for spec in later]
            if rest:
                stopped = stopped or f"batch {index + 1} failed: later hosts left untouched"
                results.extend(
                    HostResult(n, "skipped", "not started: an earlier batch failed") for n, _ in rest
                )
            break
    return RunResult(task=name, hosts=results, dry_run=opts.dry_run, stopped=stopped)


def _run_batch(
    batch: list[HostSpec], fn: Callable[[], None], opts: RunOptions
) -> tuple[list[HostResult], str]:
    # Host data as pyinfra takes it: validated, `_sudo` set once per host for every operation.
    inventory = Inventory(([(n, run_data(n, dict(d))) for n, d in batch], {}))
    config = Config(
        PARALLEL=1 if opts.serial else (opts.parallel or 0),
        FAIL_PERCENT=opts.fail_percent,
        CONNECT_TIMEOUT=opts.connect_timeout,
    )
    # Without a dry run, operations are not pre-evaluated: facts are read once, at
    # execution time, in parallel across hosts (pre-evaluation reads them host by host).
    state = State(inventory, config, check_for_changes=opts.dry_run)
    recorder = _Recorder()
    state.add_callback_handler(recorder)
    stopped = ""
    try:
        connect_all(state)
        add_deploy(state, fn)
        if opts.dry_run:
            pass
        elif opts.serial:
            run_ops(state, serial=True)
        else:
            stopped = _run_hosts_independently(state)
    except BadInput:
        # The operator's input (a workflow, host data) is wrong: the CLI prints the line
        # and exits 2. Tasks raise it while their operations are being added, before any
        # command was sent.
        raise
    except PyinfraError as exc:
        if str(exc) != "No hosts remaining!":
            stopped = str(exc)
    except Exception as exc:  # a bug in one operation must still leave a result per host
        logger.exception("run stopped by an unexpected error")
        stopped = f"unexpected error: {type(exc).__name__}: {exc}"
    finally:
        try:
            disconnect_all(state)
        except Exception as exc:  # a broken connection must not hide the results
            logger.debug("disconnect failed: %s", exc)
    return [_host_result(state, host, recorder, opts.dry_run, stopped) for host in inventory], stopped


def _run_hosts_independently(state: State) -> str:
    """Each host runs its operations in order without waiting for the other hosts at every step.

    pyinfra's default waits for every host after each operation, so one slow round trip
    delays all hosts; here a host only stops on its own failure, or when the run as a
    whole stops (``fail_percent`` exceeded). Returns why the run stopped, or "".
    """
    state.is_executing = True
    stop: list[str] = []
    bad_input: list[BadInput] = []

    def one_host(host: Host) -> None:
        for op_hash in state.get_op_order():
            if stop or host not in state.active_hosts:
                return
            try:
                with ctx_host.use(host):
                    ok = run_host_op(state, host, op_hash)
            except BadInput as exc:
                # Input an operation could only judge on the host: stop every host, report it once.
                bad_input.append(exc)
                stop.append(str(exc))
                return
            if not ok:
                try:
                    state.fail_hosts({host})
                except PyinfraError as exc:
                    if str(exc) != "No hosts remaining!":
                        stop.append(str(exc))
                return

    with ctx_state.use(state):
        greenlets = [state.pool.spawn(one_host, host) for host in state.inventory.get_active_hosts()]
        gevent.joinall(greenlets)
    if bad_input:
        raise bad_input[0]
    for greenlet in greenlets:
        if greenlet.exception is not None:
            stop.append(f"unexpected error: {type(greenlet.exception).__name__}: {greenlet.exception}")
    return stop[0] if stop else ""


def _host_result(state: State, host: Host, recorder: _Recorder, dry_run: bool, stopped: str) -> HostResult:
    rep = report(host)
    if host not in state.activated_hosts:
        reason = recorder.connect_errors.get(host.name, "could not connect")
        return HostResult(host.name, "unreachable", reason, report=rep)
    changed: list[str] = []
    maybe: list[str] = []
    failed_op = ""
    reason = ""
    for op_hash in state.get_op_order():
        meta = op_meta(state, host, op_hash)
        if meta is None:
            continue
        arguments = op_arguments(state, host, op_hash)
        op_name = ", ".join(sorted(state.get_op_meta(op_hash).names))
        if dry_run:
            # Conditional steps (restart after new code, rollback) depend on what earlier
            # steps will do; shown as possible, they alone do not make a host "would change".
            if meta.will_change:
                if arguments.get("_if"):
                    maybe.append(f"{op_name} (if needed)")
                else:
                    changed.append(op_name)
            continue
        if not meta.is_complete():
            continue
        if meta.did_error() and not failed_op:
            lines = [ln for ln in (meta.stderr_lines or meta.stdout_lines) if ln.strip()]
            if arguments.get("_ignore_errors"):
                # Handled by a later step (e.g. a rollback): keep what went wrong visible.
                rep.note(f"{op_name.split(' | ')[-1]} failed: " + "\n".join(lines[-20:]))
                continue
            failed_op = op_name
            reason = f"{op_name}: {_reason_line(lines)}"
        elif meta.did_change():
            changed.append(op_name)
    if host in state.failed_hosts or failed_op:
        return HostResult(
            host.name, "failed", reason or "a fact or operation failed (see log above)", changed, rep
        )
    if stopped and not dry_run and not all_ops_complete(state, host):
        return HostResult(host.name, "skipped", f"run stopped: {stopped}", changed, rep)
    status = (
        ("would change" if changed else "no change") if dry_run else ("changed" if changed else "no change")
    )
    return HostResult(host.name, status, "", changed + (maybe if changed else []), rep)


def _reason_line(lines: list[str]) -> str:
    """The most telling line of a failed command's output (the first explicit error, else the last line)."""
    for line in lines:
        if re.search(r"refusing|not found|failed|error|cannot|rolled back", line, re.IGNORECASE):
            return line.strip()[:300]
    return (lines[-1].strip() if lines else "command failed")[:300]
