"""``hostside/model_job.py``: the downloader detached, against the local HF server (real HTTP, real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from comfyfleet.devkit.upstreams.model_servers import Upstreams
from tiers.helpers import FETCH, HOSTSIDE, write_plan

JOB = HOSTSIDE / "model_job.py"
SIZE = 3_000_000


def plan(tmp_path: Path, up: Upstreams, name: str = "plan.json", repo: str = "org/gated") -> Path:
    return write_plan(
        tmp_path / name,
        {
            "models_dir": str(tmp_path / "data" / "models"),
            "staging_dir": str(tmp_path / "data" / ".comfyfleet" / "downloads"),
            "state_file": str(tmp_path / "data" / ".comfyfleet" / "model-hashes.json"),
            "hf_endpoint": up.hf_url,
            "parallel": 2,
            "items": [
                {
                    "filename": "a.safetensors",
                    "folder": "checkpoints",
                    "url": up.hf_resolve_url(repo, "a.safetensors"),
                    "sha256": None,
                }
            ],
        },
    )


def job(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, str(JOB), *args, "--job-dir", str(tmp_path / "job")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("JOB ")), "JOB {}")
    return proc.returncode, json.loads(line[4:]), proc.stderr


def start(tmp_path: Path, plan_path: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    return job(tmp_path, "start", "--fetch", str(FETCH), "--plan", str(plan_path), *extra)


def wait_for(tmp_path: Path, plan_path: Path, state: str, within: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        _, status, _ = job(tmp_path, "status", "--plan", str(plan_path))
        if status["state"] == state or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_detached_download_with_token_file_attach_and_progress(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    up.add_hf("org/gated", "a.safetensors", SIZE, gated=True)
    up.throttle["hf:a.safetensors"] = 1_500_000  # bytes/s: about 2 s
    plan_path = plan(tmp_path, up)
    secrets = tmp_path / "tokens.json"
    secrets.write_text(json.dumps({"HF_TOKEN": up.hf_token}))

    rc, first, _ = start(tmp_path, plan_path, "--secrets-file", str(secrets))
    assert rc == 0 and first["state"] == "running" and not first["attached"]
    assert not secrets.exists()  # read once, gone before the download runs
    rc, again, _ = start(tmp_path, plan_path)
    assert rc == 0 and again == {**first, "attached": True}  # the same job, no second download

    other = plan(tmp_path, up, "other.json", repo="org/other")
    rc, busy, err = start(tmp_path, other)
    assert rc == 3 and busy["state"] == "busy" and busy["pid"] == first["pid"]
    assert err.count("\n") == 1 and "another model download" in err

    deadline = time.monotonic() + 10
    running: dict[str, Any] = {}
    while not running.get("progress") and time.monotonic() < deadline:
        _, running, _ = job(tmp_path, "status", "--plan", str(plan_path))
        time.sleep(0.2)
    live = running["progress"]["checkpoints/a.safetensors"]
    assert running["state"] == "running" and running["same_plan"] is True
    assert 0 < live["bytes"] <= live["total"] == SIZE and live["rate"] > 0

    done = wait_for(tmp_path, plan_path, "done")
    assert done["rc"] == 0 and done["result"][0]["status"] == "downloaded", done
    assert done["progress"]["checkpoints/a.safetensors"] | {"rate": 0} == {
        "bytes": SIZE,
        "total": SIZE,
        "rate": 0,
        "done": True,
    }
    assert (tmp_path / "data/models/checkpoints/a.safetensors").stat().st_size == SIZE
    assert job(tmp_path, "status", "--plan", str(other))[1]["same_plan"] is False


def test_failed_download_reports_the_downloaders_error(tmp_path: Path, model_upstreams: Upstreams) -> None:
    up = model_upstreams
    up.add_hf("org/gated", "a.safetensors", SIZE, gated=True)
    plan_path = plan(tmp_path, up)
    assert start(tmp_path, plan_path)[0] == 0  # no token for a gated repo
    failed = wait_for(tmp_path, plan_path, "failed")
    assert failed["rc"] == 1, failed
    assert len(failed["errors"]) == 1 and "HF_TOKEN" in failed["errors"][0], failed["errors"]


def test_killed_job_is_lost_then_a_new_start_resumes(tmp_path: Path, model_upstreams: Upstreams) -> None:
    up = model_upstreams
    up.add_hf("org/gated", "a.safetensors", SIZE)
    up.throttle["hf:a.safetensors"] = 1_000_000
    plan_path = plan(tmp_path, up)
    _, first, _ = start(tmp_path, plan_path)
    part = tmp_path / "data/.comfyfleet/downloads/checkpoints/a.safetensors.part"
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size > SIZE // 4) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(first["pid"], signal.SIGKILL)  # the runner leads its own session: it and the downloader
    lost = wait_for(tmp_path, plan_path, "lost")
    assert lost["state"] == "lost"
    up.throttle.clear()
    _, second, _ = start(tmp_path, plan_path)
    assert not second["attached"] and second["pid"] != first["pid"]
    done = wait_for(tmp_path, plan_path, "done")
    assert done["result"][0]["bytes_reused"] > 0, done


def test_wait_answers_when_the_job_ends_and_check_first_starts_nothing_in_place(
    tmp_path: Path, model_upstreams: Upstreams
) -> None:
    up = model_upstreams
    up.add_hf("org/gated", "a.safetensors", SIZE)
    up.throttle["hf:a.safetensors"] = 2_000_000  # bytes/s: about 1.5 s
    plan_path = plan(tmp_path, up)
    _, first, _ = start(tmp_path, plan_path, "--check-first")
    assert first["state"] == "running" and not first["attached"]  # nothing in place: it starts

    t0 = time.monotonic()
    _, running, _ = job(tmp_path, "wait", "--seconds", "0.3", "--plan", str(plan_path))
    assert running["state"] == "running" and time.monotonic() - t0 >= 0.3  # answers while it runs
    _, done, _ = job(tmp_path, "wait", "--seconds", "60", "--plan", str(plan_path))
    answered = time.time()
    assert done["state"] == "done" and done["same_plan"] is True, done
    # The end is seen at once (the host-side wait looks every 50 ms), not after --seconds.
    assert answered - done["finished"] < 1.0, (answered, done["finished"])

    started = json.loads((tmp_path / "job" / "started.json").read_text())
    _, again, _ = start(tmp_path, plan_path, "--check-first")
    assert again["state"] == "in_place"  # the downloader's --check found the file: no job
    assert json.loads((tmp_path / "job" / "started.json").read_text()) == started
    (tmp_path / "data/models/checkpoints/a.safetensors").unlink()
    up.throttle.clear()
    _, refetch, _ = start(tmp_path, plan_path, "--check-first")
    assert refetch["state"] == "running" and refetch["pid"] != first["pid"]
    assert job(tmp_path, "wait", "--seconds", "60", "--plan", str(plan_path))[1]["state"] == "done"
