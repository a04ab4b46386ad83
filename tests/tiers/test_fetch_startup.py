"""fetch_models.py's start: ``--check`` (every host, every no-op deploy) imports no network code and still tells.

Run as a host runs it (``python3 fetch_models.py ...``), with ``-X importtime`` listing what it imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tiers.helpers import FETCH, write_plan
from tiers.test_fetch_pipeline import load_fetch

# What only a download needs: --check must not pay for any of it.
NETWORK = {"http.client", "urllib.request", "urllib.parse", "ssl", "socket", "email.parser", "mmap", "queue"}
STARTUP = {"argparse", "concurrent.futures", "typing", "contextlib"}


def run(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(FETCH), *argv], capture_output=True, text=True, timeout=60
    )
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "cumulative" not in line
    }
    return proc, imported


def check(plan: Path) -> tuple[dict[str, Any], set[str]]:
    proc, imported = run(["--plan", str(plan), "--check"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout.split("CHECK ", 1)[1])
    return {r["filename"]: r for r in rows}, imported


def test_check_imports_no_network_code_and_still_finds_wrong_and_missing_files(tmp_path: Path) -> None:
    models = tmp_path / "models/checkpoints"
    models.mkdir(parents=True)
    good, bad = b"good model bytes", b"tampered model!!"
    (models / "good.safetensors").write_bytes(good)
    (models / "bad.safetensors").write_bytes(bad)
    items = [
        {
            "filename": name,
            "folder": "checkpoints",
            "url": "https://huggingface.co/o/r/resolve/main/x",
            "sha256": sha,
        }
        for name, sha in (
            ("good.safetensors", hashlib.sha256(good).hexdigest()),
            ("bad.safetensors", hashlib.sha256(good).hexdigest()),  # same length, other bytes
            ("gone.safetensors", hashlib.sha256(good).hexdigest()),
        )
    ]
    state = tmp_path / "state/model-hashes.json"
    plan = write_plan(
        tmp_path / "plan.json",
        {
            "models_dir": str(tmp_path / "models"),
            "staging_dir": str(tmp_path / "staging"),
            "state_file": str(state),
            "items": items,
        },
    )
    first, imported = check(plan)
    assert {k: r["state"] for k, r in first.items()} == {
        "good.safetensors": "ok",
        "bad.safetensors": "wrong",
        "gone.safetensors": "missing",
    }
    assert first["bad.safetensors"]["sha256"] == hashlib.sha256(bad).hexdigest()
    assert not imported & (NETWORK | STARTUP), imported & (NETWORK | STARTUP)
    assert "hashlib" in imported  # the first check hashed the files ...
    written = state.stat().st_mtime_ns

    again, imported = check(plan)
    assert again == first  # ... the next ones answer from the hash cache, just as right
    assert not imported & (NETWORK | STARTUP | {"hashlib"}), imported & (NETWORK | STARTUP | {"hashlib"})
    assert state.stat().st_mtime_ns == written  # and a no-op check writes nothing

    # Rewritten in place with the right bytes (new mtime): hashed again, now ok.
    (models / "bad.safetensors").write_bytes(good)
    os.utime(models / "bad.safetensors", ns=(written + 10**9, written + 10**9))
    third, _imported = check(plan)
    assert third["bad.safetensors"]["state"] == "ok"


@pytest.mark.parametrize(
    "argv",
    [
        ["--plan", "p.json"],
        ["--plan=p.json", "--check"],
        ["--check", "--plan", "p.json", "--secrets-stdin"],
        ["--plan", "p.json", "--parallel", "4", "--progress-file", "/tmp/x y.json"],
        ["--parallel=2", "--plan", "a.json", "--plan", "b.json"],
    ],
)
def test_hand_parsed_command_line_reads_as_argparse_reads_it(argv: list[str]) -> None:
    fm = load_fetch()
    fast = fm.parse_args(argv)
    assert isinstance(fast, fm.Args)  # the fast path took it
    assert vars(fast) == vars(fm.argparse_args(argv))


def test_other_command_lines_go_to_argparse(tmp_path: Path) -> None:
    proc, imported = run(["--help"])
    assert proc.returncode == 0 and "--secrets-stdin" in proc.stdout and "argparse" in imported
    proc, _imported = run(["--plan", "p.json", "--parallel", "many"])
    assert proc.returncode == 2 and "invalid int value: 'many'" in proc.stderr
    proc, _imported = run(["--check"])
    assert proc.returncode == 2 and "--plan" in proc.stderr
    # An abbreviation argparse accepts still works (parsed by argparse).
    plan = write_plan(
        tmp_path / "plan.json",
        {"models_dir": str(tmp_path / "m"), "staging_dir": str(tmp_path / "s"), "items": []},
    )
    proc, imported = run(["--pl", str(plan), "--check"])
    assert proc.returncode == 0 and proc.stdout.startswith("CHECK []") and "argparse" in imported
