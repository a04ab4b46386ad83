"""Tier 3's download operations: fetch in line, or start a detached job on the host and follow it.

``hostside/fetch_models.py`` downloads (ranged, resumable, verified); ``hostside/model_job.py``
runs it detached with pid, status and per-file progress under ``<data root>/.comfyfleet/model-job``.
Tokens reach the host as a 0600 file in a 0700 folder of the SSH user that the script reads on
stdin (or ``--secrets-file``) and deletes; never argv, env or output. Composed by
:mod:`comfyfleet.deploys.models` (in line) and :mod:`comfyfleet.deploys.model_job` (pipeline).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import posixpath
import uuid
import zlib
from collections.abc import Generator
from io import BytesIO, StringIO
from pathlib import Path
from typing import Any

import yaml
from pyinfra import host
from pyinfra.api import FileUploadCommand, FunctionCommand, Host, QuoteString, State, StringCommand, operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.server import Home

from comfyfleet.context import host_run, report
from comfyfleet.facts import prefetch
from comfyfleet.facts.comfyui import MissingDirectories
from comfyfleet.facts.hostside import HostsideJson, StagedFiles, parse_tagged
from comfyfleet.inventory import HostConfig
from comfyfleet.operations.hostside import MODELS_CHECK, probed_or_fact
from comfyfleet.safety import normalize_model_name
from comfyfleet.secrets import load_tokens
from comfyfleet.shell import fail, script

# An empty 0600 file in a 0700 folder of the SSH user, before any byte of a token is written.
_SECRETS_FILE = r"""
umask 077
mkdir -p "$1" && chmod 700 "$1" || exit 1
# Left over only if a connection died between upload and use: never keep them around.
find "$1" -maxdepth 1 -name 'tokens-*.json' -mmin +10 -delete 2>/dev/null
: > "$2" && chmod 600 "$2"
"""

# Reads the tokens file on stdin, deletes it whatever happens; the tokens never reach argv or env.
_FETCH_WITH_SECRETS = r"""
f=$1; shift
"$@" --secrets-stdin < "$f"
rc=$?
rm -f "$f"
exit $rc
"""


@operation()
def fetch(script_path: str, plan_path: str, count: int, token_names: list[str]) -> Generator[Any, None, None]:
    """Download what is missing or wrong (no change when every file is in place and verified).

    + script_path: ``fetch_models.py`` on the host
    + plan_path: its JSON plan
    + count: how many files the plan names (for the no-op message)
    + token_names: which tokens the plan's URLs may need (read on the operator's machine)
    """
    problem = _missing_models(script_path, plan_path, count)
    if problem is not None:
        if problem:
            yield fail(problem)
        return
    argv = ["python3", script_path, "--plan", plan_path]
    upload, secrets_file = token_upload(token_names)
    if secrets_file is None:
        yield StringCommand(*argv)
        return
    yield from upload
    yield script(_FETCH_WITH_SECRETS, secrets_file, *argv)


def _missing_models(script_path: str, plan_path: str, count: int) -> str | None:
    """``None`` when something must be downloaded; ``""`` when every file is in place (no-op
    noted); else why the host's check could not tell (one line)."""
    check = probed_or_fact(("python3", script_path, "--plan", plan_path, *MODELS_CHECK))
    rows = check.get("CHECK")
    if rows is None:
        return (
            "; ".join(check.get("error", []))
            or "fetch_models.py --check gave no answer (python3 on the host?)"
        )
    if all(r["state"] == "ok" for r in rows):
        host.noop(f"{count} model file(s) in place")
        return ""
    return None


def token_upload(token_names: list[str]) -> tuple[list[Any], str | None]:
    """Commands putting the tokens a plan needs into a fresh 0600 file of the SSH user, and its path.

    ``([], None)`` when no token is set for those names. Whoever runs the plan reads the
    file and deletes it (``--secrets-stdin`` after ``_FETCH_WITH_SECRETS``, ``model_job.py
    --secrets-file``).
    """
    tokens = load_tokens()
    payload = {k: v for k, v in tokens.values.items() if k in token_names}
    if not payload:
        return [], None
    # Uploaded as the SSH user (no sudo, so no world-readable temp copy) into its own 0700 folder.
    home = host.get_fact(Home, _sudo=False) or "/root"
    secrets_dir = f"{home}/.comfyfleet-secrets"
    secrets_file = f"{secrets_dir}/tokens-{uuid.uuid4().hex}.json"
    return [
        StringCommand(
            "sh",
            "-c",
            QuoteString(_SECRETS_FILE),
            "comfyfleet",
            QuoteString(secrets_dir),
            QuoteString(secrets_file),
            _sudo=False,
        ),
        FileUploadCommand(StringIO(json.dumps(payload)), secrets_file, _sudo=False),
    ], secrets_file


@operation()
def report_downloads(step: OperationMeta, lock_file: str | None) -> Generator[Any, None, None]:
    """Show what the download step did, and record computed hashes in the lock."""
    if step.is_complete() and step.did_change():
        show_downloads(parse_tagged(step.stdout_lines).get("RESULT", []), lock_file)
    host.noop("reported models")
    return
    yield


def show_downloads(rows: list[dict[str, Any]], lock_file: str | None) -> None:
    """The host's report of ``fetch_models.py``'s RESULT rows; computed hashes recorded in the lock."""
    report(host).table(
        "models",
        ["file", "status", "via", "MB fetched", "MB resumed", "sha256"],
        [
            [
                f"{r['folder']}/{r['filename']}",
                r["status"],
                r.get("via", "-"),
                f"{r.get('bytes_fetched', 0) / 1e6:.1f}",
                f"{r.get('bytes_reused', 0) / 1e6:.1f}",
                (r.get("sha256") or "")[:16],
            ]
            for r in rows
        ],
    )
    if lock_file:
        recorded = record_hashes(Path(lock_file), rows)
        if recorded:
            report(host).note(f"recorded {recorded} computed sha256 value(s) in {lock_file}")


def record_hashes(lock_file: Path, rows: list[dict[str, Any]]) -> int:
    """Fill in sha256 for lock models that had none; returns how many were recorded."""
    if not lock_file.is_file():
        return 0
    data = yaml.safe_load(lock_file.read_text()) or {}
    computed = {(r["folder"], r["filename"]): r.get("sha256") for r in rows if r.get("sha256")}
    # A bare lock, or what `comfyfleet analyze DIR --out` writes: {lock: {...}, manifests: {name: {...}}}.
    model_lists = [data.get("models") or [], (data.get("lock") or {}).get("models") or []]
    model_lists += [(m or {}).get("models") or [] for m in (data.get("manifests") or {}).values()]
    count = 0
    for model in (m for models in model_lists for m in models):
        key = (model.get("folder"), normalize_model_name(str(model.get("filename", ""))))
        if not model.get("sha256") and computed.get(key):
            model["sha256"] = computed[key]
            count += 1
    if count:
        tmp = lock_file.with_suffix(lock_file.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        tmp.replace(lock_file)
    return count


PROGRESS_SECONDS = 1.0
"""How often the host-side wait answers while the job runs (its end is answered at once)."""
progress_log = logging.getLogger("comfyfleet.progress")
"""One line per host and second while models download: every file's MB done/total and MB/s."""


def job_dir(cfg: HostConfig) -> str:
    return f"{cfg.layout.state}/model-job"


def _script(cfg: HostConfig, name: str) -> str:
    return f"{cfg.layout.state}/bin/{name}"


def _plan_path(cfg: HostConfig) -> str:
    return f"{cfg.layout.state}/plans/models.json"


def job_status_argv(cfg: HostConfig, wait: float | None = None) -> tuple[str, ...]:
    """The read-only status command of the host's download job (a staging probe too).

    ``wait``: the host-side wait instead, answering when the job ends or after that many seconds.
    """
    command = ("status",) if wait is None else ("wait", "--seconds", f"{wait:g}")
    return (
        "python3",
        _script(cfg, "model_job.py"),
        *command,
        "--job-dir",
        job_dir(cfg),
        "--plan",
        _plan_path(cfg),
    )


@operation()
def start_download(cfg: HostConfig, count: int, token_names: list[str]) -> Generator[Any, None, None]:
    """Start the plan's downloads detached on the host (no change when every file is in place).

    + cfg: the host's config (paths of the staged scripts, the plan and the job folder)
    + count: how many files the plan names (for the no-op message)
    + token_names: which tokens the plan's URLs may need (read on the operator's machine)
    """
    problem = _missing_models(_script(cfg, "fetch_models.py"), _plan_path(cfg), count)
    if problem is not None:
        if problem:
            yield fail(problem)
        return
    yield from _start_job(cfg, token_names)


STAGE_LIMIT = 96 * 1024
"""Largest inline payload of :func:`stage_and_start` (one shell argument holds at most 128 KiB)."""

# Makes the folders, writes the files it is given (atomically, 0644), then runs model_job.py:
# the scripts, the plan and the start of the job in one command. Nothing in it is secret.
_STAGE_AND_START = r"""
import base64, json, os, sys, zlib
os.umask(0o022)
spec = json.loads(sys.argv[1])
for folder in spec["dirs"]:
    os.makedirs(folder, exist_ok=True)
for path, data in spec["files"].items():
    with open(path + ".tmp", "wb") as f:
        f.write(zlib.decompress(base64.b64decode(data)))
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def stage_payload(directories: list[str], files: dict[str, bytes]) -> str:
    """The JSON :data:`_STAGE_AND_START` reads: folders to make, files (compressed) to write."""
    packed = {p: base64.b64encode(zlib.compress(d, 9)).decode() for p, d in sorted(files.items())}
    return json.dumps({"dirs": directories, "files": packed}, separators=(",", ":"))


@operation()
def stage_and_start(
    cfg: HostConfig,
    directories: list[str],
    files: dict[str, bytes],
    probes: list[tuple[str, ...]],
    count: int,
    token_names: list[str],
) -> Generator[Any, None, None]:
    """Folders, host scripts and plan, and the start of the download job, in one command.

    A bare host's download starts one round trip after the facts (:func:`prefetch.prefetch`
    of ``MissingDirectories`` and ``StagedFiles`` with these arguments); no change when the
    folders and files are in place and every model file too. With scripts just written the
    job itself checks first (``model_job.py start --check-first``).

    + cfg: the host's config (the job folder, where the scripts and the plan go)
    + directories: folders that must exist (the data layout)
    + files: remote path -> content (the scripts and the plan, nothing secret)
    + probes: the staging probes (``StagedFiles``), the models check among them
    + count: how many files the plan names (for the no-op message)
    + token_names: which tokens the plan's URLs may need (read on the operator's machine)
    """
    probe_list = tuple(tuple(p) for p in probes)
    missing = prefetch.fact(MissingDirectories, paths=tuple(directories))
    state = prefetch.fact(StagedFiles, paths=tuple(sorted(files)), probes=probe_list)
    stale = {p: d for p, d in files.items() if state["hashes"].get(p) != hashlib.sha256(d).hexdigest()}
    host_run(host).probes = (
        {}
        if stale
        else {argv: parse_tagged(state["probes"].get(str(i), [])) for i, argv in enumerate(probe_list)}
    )
    check_first = False
    if not stale:
        problem = _missing_models(_script(cfg, "fetch_models.py"), _plan_path(cfg), count)
        if problem:
            yield fail(problem)
            return
        if problem == "":  # every model file in place: only missing folders, if any
            if missing:
                yield StringCommand("mkdir", "-p", *(QuoteString(p) for p in missing))
            return
    else:
        # Nobody could ask the new scripts yet: on a host with a models folder, files may be in place.
        check_first = cfg.layout.models not in missing
    folders = sorted({*missing, *(posixpath.dirname(p) for p in stale)})
    payload = stage_payload(folders, stale) if folders or stale else None
    if payload is not None and len(payload) > STAGE_LIMIT:  # a very large plan: uploaded on its own
        yield StringCommand("mkdir", "-p", *(QuoteString(p) for p in folders))
        for path, data in sorted(stale.items()):
            yield FileUploadCommand(BytesIO(data), path, remote_temp_filename=host.get_temp_filename(path))
        if stale:
            yield StringCommand("chmod", "644", *(QuoteString(p) for p in sorted(stale)))
        payload = None
    yield from _start_job(cfg, token_names, payload, check_first)


def _start_job(
    cfg: HostConfig, token_names: list[str], payload: str | None = None, check_first: bool = False
) -> Generator[Any, None, None]:
    """Commands starting the job: tokens to their file first; ``payload`` staged in the same command."""
    # A job starts now: a status read before this moment no longer says anything.
    host_run(host).probes.pop(job_status_argv(cfg), None)
    argv: list[Any] = [
        QuoteString(_script(cfg, "model_job.py")),
        "start",
        "--job-dir",
        QuoteString(job_dir(cfg)),
        "--fetch",
        QuoteString(_script(cfg, "fetch_models.py")),
        "--plan",
        QuoteString(_plan_path(cfg)),
    ]
    if check_first:
        argv.append("--check-first")
    upload, secrets_file = token_upload(token_names)
    yield from upload
    if secrets_file is not None:
        argv += ["--secrets-file", QuoteString(secrets_file)]
    if payload is None:
        yield StringCommand("python3", *argv)
    else:
        yield StringCommand("python3", "-c", QuoteString(_STAGE_AND_START), QuoteString(payload), *argv)


def progress_text(progress: dict[str, Any]) -> str:
    """``checkpoints/a 312/512 MB 39.8 MB/s; loras/b done 256/256 MB 41.0 MB/s``: every stream, one line."""
    parts = []
    for key, p in sorted(progress.items()):
        total = f"/{p['total'] / 1e6:.0f}" if p.get("total") else ""
        done = " done" if p.get("done") else ""
        parts.append(f"{key}{done} {p.get('bytes', 0) / 1e6:.0f}{total} MB {p.get('rate', 0) / 1e6:.1f} MB/s")
    return "; ".join(parts) or "starting"


@operation(is_idempotent=False)
def wait_download(cfg: HostConfig, count: int, lock_path: str | None) -> Generator[Any, None, None]:
    """Follow the host's download job until it ends; fail with the downloader's error.

    No change when no job of this plan is running (it finished before, or nothing had to
    be fetched): its outcome, or the files in place, are read without running anything.

    + cfg: the host's config (the job folder, the plan)
    + count: how many files the plan names
    + lock_path: where computed hashes are recorded
    """
    status = job_status_argv(cfg)
    check = ("python3", _script(cfg, "fetch_models.py"), "--plan", _plan_path(cfg), *MODELS_CHECK)
    # Read in the staging round trip when nothing was started since (start_download drops it).
    now = probed_or_fact(status)
    job = now.get("JOB")
    if job is None:
        yield fail(
            "; ".join(now.get("error", [])) or "model_job.py status gave no answer (python3 on the host?)"
        )
        return
    answer: dict[str, Any] = {"job": job}
    if job["state"] == "running":
        status_command = script('"$@"', *job_status_argv(cfg, wait=PROGRESS_SECONDS))
        check_command = script('"$@"', *check)

        # pyinfra hands `state` and `host` to a callback by these parameter names.
        def follow(state: State, host: Host) -> bool:
            shown = ""
            while True:
                ok, output = host.run_shell_command(status_command, _sudo=cfg.sudo)
                line = parse_tagged(output.stdout_lines).get("JOB") if ok else None
                if line is None:
                    answer["error"] = (
                        "; ".join(output.stderr_lines[-3:]) or "model_job.py status gave no answer"
                    )
                    return True
                text = progress_text(line.get("progress") or {})
                if text != shown and (line["state"] == "running" or line.get("progress")):
                    progress_log.info("[%s] models: %s", host.name, text)
                    shown = text
                if line["state"] != "running":
                    break
            answer["job"] = line
            if not (line["state"] == "done" and line.get("same_plan")):
                _, out = host.run_shell_command(check_command, _sudo=cfg.sudo)
                answer["check"] = parse_tagged(out.stdout_lines).get("CHECK")
            return True

        yield FunctionCommand(follow, (), {})
        if "error" in answer:
            yield fail(f"model downloads: {answer['error']}")
            return
        job = answer["job"]
    elif not (job["state"] == "done" and job.get("same_plan")):
        answer["check"] = host.get_fact(HostsideJson, argv=check).get("CHECK")
    problem = _verdict(job, answer.get("check"), count, lock_path)
    if problem:
        yield fail(problem)
        return
    host.noop(f"{count} model file(s) in place")


def _verdict(
    job: dict[str, Any], rows: list[dict[str, Any]] | None, count: int, lock_path: str | None
) -> str:
    """What failed (one line), or "" when every file is in place (then reported)."""
    if job.get("same_plan") and job["state"] == "failed":
        errors = job.get("errors") or [f"the downloader exited with {job.get('rc')}"]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"model download failed: {errors[0]}{more}"
    if job.get("same_plan") and job["state"] == "done":
        show_downloads(job.get("result") or [], lock_path)
        return ""
    missing = [f"{r['folder']}/{r['filename']}" for r in rows or [] if r.get("state") != "ok"]
    if rows is not None and not missing:  # every file in place (a workflow without models: none)
        return ""
    why = (
        "its download stopped before the end (killed, or the host restarted)"
        if job.get("state") == "lost"
        else "no download of this plan is running"
    )
    return f"model files missing: {', '.join(missing) or 'unknown (no check answer)'}: {why}; run again to resume"
