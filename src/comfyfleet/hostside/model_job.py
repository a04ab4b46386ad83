#!/usr/bin/env python3
"""Run ``fetch_models.py`` detached on the GPU host, so the other tiers run while models download.

Uploaded next to ``fetch_models.py`` and run with the host's python3 (standard library only).
One job per job folder (``<data root>/.comfyfleet/model-job``)::

    model_job.py start  --job-dir D --fetch F --plan P [--secrets-file S] [--check-first]
    model_job.py status --job-dir D [--plan P]
    model_job.py wait   --job-dir D [--plan P] [--seconds N]

``start`` launches ``model_job.py run`` in a new session (setsid: it outlives the SSH
connection that started it) and returns at once. A second ``start`` while the job runs
attaches to it instead of starting another download; a job running another plan is named
and refused. The plan is copied into the job folder, so the running job's plan is fixed.
Tokens come from ``--secrets-file`` (deleted as soon as it is read) and reach the downloader
on its standard input, never argv or the environment. ``--check-first`` (scripts just
uploaded, so nobody could ask the downloader's ``--check`` before): no job starts when
every file of the plan is already in place (``state`` ``in_place``).

``run`` (the detached process, at nice 10) runs the downloader with ``--progress-file``, its standard
error in ``log`` and standard output in ``result``, and writes ``status.json`` (exit code,
start and end times) when it ends, whatever the end.

``status`` prints one line ``JOB {json}``: ``state`` none | running | done | failed | lost
(its process is gone without a status: killed, or the host rebooted), the plan's sha256
(``same_plan`` with ``--plan``: whether the job is for that plan),
the live per-file progress, timestamps, and when finished the downloader's ``RESULT`` rows
and its error lines.

``wait`` blocks on the running job (its pid and status file, looked at every 50 ms) for at
most ``--seconds`` and then prints what ``status`` prints: the caller sees the job's end at
once and its progress every ``--seconds`` without polling from afar.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time

# ``status`` runs on every host of every deploy: it starts nothing, so subprocess and typing are
# imported where they are used (tests/tiers/test_probe_startup.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PID = "pid"
PLAN = "plan.json"
LOG = "log"
RESULT = "result"
STATUS = "status.json"
PROGRESS = "progress.json"
STARTED = "started.json"
NICE = 10
WAIT_STEP = 0.05


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _alive(job_dir: str) -> int | None:
    """The job's runner pid when that process still runs (and is this job's runner)."""
    try:
        with open(os.path.join(job_dir, PID)) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return None
    # A recycled pid belongs to another program: the runner names its job folder in argv.
    if b"run" in cmdline and os.fsencode(os.path.abspath(job_dir)) in cmdline:
        return pid
    return None


def _plan_sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _emit(data: dict[str, Any]) -> None:
    print("JOB " + json.dumps(data), flush=True)


def start(args: argparse.Namespace) -> int:
    import subprocess  # noqa: PLC0415 - see the imports above

    job = os.path.abspath(args.job_dir)
    os.makedirs(job, mode=0o755, exist_ok=True)
    secrets = b"{}"
    if args.secrets_file:
        try:
            with open(args.secrets_file, "rb") as f:
                secrets = f.read() or b"{}"
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.secrets_file)
    want = _plan_sha(args.plan)
    with open(os.path.join(job, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pid = _alive(job)
        if pid is not None:
            have = (_read_json(os.path.join(job, STARTED)) or {}).get("plan_sha256")
            if have != want:
                _emit({"state": "busy", "pid": pid, "plan_sha256": have})
                print(
                    f"another model download (pid {pid}, another plan) is running on this host: "
                    "let it finish (it is followed with the models-wait task), then run again",
                    file=sys.stderr,
                )
                return 3
            _emit({"state": "running", "attached": True, "pid": pid, "plan_sha256": want})
            return 0
        if args.check_first and _in_place(args.fetch, args.plan):
            _emit({"state": "in_place", "plan_sha256": want})
            return 0
        for name in (STATUS, RESULT, LOG, PROGRESS, STARTED):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(job, name))
        with open(args.plan, "rb") as src, open(os.path.join(job, PLAN), "wb") as dst:
            dst.write(src.read())
        argv = [sys.executable, os.path.abspath(__file__), "run", "--job-dir", job, "--fetch", args.fetch]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(secrets)
        proc.stdin.close()
        _write_json(
            os.path.join(job, STARTED), {"plan_sha256": want, "started": time.time(), "pid": proc.pid}
        )
        with open(os.path.join(job, PID), "w") as f:
            f.write(str(proc.pid))
    _emit({"state": "running", "attached": False, "pid": proc.pid, "plan_sha256": want})
    return 0


def _in_place(fetch: str, plan: str) -> bool:
    """Whether the downloader's ``--check`` finds every file of the plan in place."""
    import subprocess  # noqa: PLC0415 - see the imports above

    try:
        out = subprocess.run(
            [sys.executable, fetch, "--plan", plan, "--check"], capture_output=True, text=True, timeout=600
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False  # no answer: the job runs and its downloader says what is wrong
    for line in out.splitlines():
        if line.startswith("CHECK "):
            try:
                rows = json.loads(line[len("CHECK ") :])
            except ValueError:
                return False
            return all(isinstance(r, dict) and r.get("state") == "ok" for r in rows)
    return False


def run(args: argparse.Namespace) -> int:
    """The detached runner: the downloader, then the status file."""
    import subprocess  # noqa: PLC0415 - see the imports above

    job = os.path.abspath(args.job_dir)
    secrets = sys.stdin.buffer.read()
    # The tiers running beside the download (pip installs, container starts) are the critical
    # path while bytes arrive: the download yields the CPU to them (a network-bound download
    # barely notices; a CPU-starved host finishes the tiers first).
    with contextlib.suppress(OSError):
        os.nice(NICE)
    started = time.time()
    rc: int | None = None
    error = None
    try:
        with open(os.path.join(job, LOG), "ab") as log, open(os.path.join(job, RESULT), "wb") as out:
            argv = [sys.executable, args.fetch, "--plan", os.path.join(job, PLAN), "--secrets-stdin"]
            argv += ["--progress-file", os.path.join(job, PROGRESS)]
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=log, cwd="/")
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(secrets)
                proc.stdin.close()
            del secrets
            rc = proc.wait()
    except OSError as exc:
        error = f"could not run the downloader: {exc}"
    status = {"rc": rc if rc is not None else -1, "started": started, "finished": time.time(), "error": error}
    status["plan_sha256"] = (_read_json(os.path.join(job, STARTED)) or {}).get("plan_sha256")
    _write_json(os.path.join(job, STATUS), status)
    return 0


def _tail_errors(path: str) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    errors = [ln[len("error: ") :] for ln in lines if ln.startswith("error: ")]
    if errors:
        return errors
    # No downloader verdict (it crashed): its last lines say why.
    return [ln for ln in lines if not ln.startswith("progress:")][-3:]


def status(args: argparse.Namespace) -> int:
    job = os.path.abspath(args.job_dir)
    started = _read_json(os.path.join(job, STARTED)) or {}
    out: dict[str, Any] = {"plan_sha256": started.get("plan_sha256"), "started": started.get("started")}
    if args.plan:
        try:
            out["same_plan"] = _plan_sha(args.plan) == started.get("plan_sha256")
        except OSError:
            out["same_plan"] = False
    out["progress"] = _read_json(os.path.join(job, PROGRESS)) or {}
    pid = _alive(job)
    done = _read_json(os.path.join(job, STATUS))
    if pid is not None and done is None:
        out.update(state="running", pid=pid)
    elif done is not None:
        out.update(done)
        out["state"] = "done" if done.get("rc") == 0 else "failed"
        result: list[Any] = []
        try:
            with open(os.path.join(job, RESULT)) as f:
                for line in f:
                    if line.startswith("RESULT "):
                        result = json.loads(line[len("RESULT ") :])
        except (OSError, ValueError):
            pass
        out["result"] = result
        if out["state"] == "failed":
            out["errors"] = ([done["error"]] if done.get("error") else []) + _tail_errors(
                os.path.join(job, LOG)
            )
    elif started:
        out["state"] = "lost"
        out["errors"] = _tail_errors(os.path.join(job, LOG))
    else:
        out["state"] = "none"
    _emit(out)
    return 0


def wait(args: argparse.Namespace) -> int:
    """``status`` once the job ends, or after ``--seconds`` while it runs."""
    job = os.path.abspath(args.job_dir)
    deadline = time.monotonic() + max(0.0, args.seconds)
    while (
        time.monotonic() < deadline
        and _alive(job) is not None
        and not os.path.exists(os.path.join(job, STATUS))
    ):
        time.sleep(WAIT_STEP)
    return status(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Detached model downloads of a comfyfleet plan.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start")
    p.add_argument("--job-dir", required=True)
    p.add_argument("--fetch", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--secrets-file")
    p.add_argument("--check-first", action="store_true", help="start nothing when every file is in place")
    p = sub.add_parser("run")
    p.add_argument("--job-dir", required=True)
    p.add_argument("--fetch", required=True)
    p = sub.add_parser("status")
    p.add_argument("--job-dir", required=True)
    p.add_argument("--plan", help="say whether the job runs (ran) this plan: same_plan")
    p = sub.add_parser("wait")
    p.add_argument("--job-dir", required=True)
    p.add_argument("--plan", help="as for status")
    p.add_argument("--seconds", type=float, default=1.0, help="longest wait while the job runs")
    args = parser.parse_args(argv)
    os.umask(0o022)
    return {"start": start, "run": run, "status": status, "wait": wait}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
