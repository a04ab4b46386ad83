"""A no-op host's staging probes as a deploy runs them: the real runner (``StagedFiles``, one ``python3 -I -S``
under a real ``sh``) with the real install_nodes / fetch_models / model_job scripts, a real git pack and a
real HTTP server answering /object_info.

They run on every host of every deploy, so they must not pay for what only a change needs (starting
processes, removing trees, typing, the idna codec) — and must still see every drift.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.facts.hostside import StagedFiles, parse_tagged
from tiers.helpers import FETCH, HOSTSIDE, INSTALL_NODES, write_plan
from tiers.test_install_nodes import _ObjectInfo, git, make_pack

MODEL_JOB = HOSTSIDE / "model_job.py"
# Run last in the same interpreter: what the three scripts before it imported.
MODULES = 'import json, sys\nprint("MODULES " + json.dumps(sorted(sys.modules)))\n'
# What only a change (or an https fetch) needs; site: the runner's -S.
NOT_ON_A_NOOP = {"subprocess", "typing", "encodings.idna", "urllib.request", "ssl", "site"}


@pytest.fixture
def object_info() -> Iterator[str]:
    _ObjectInfo.classes = {"PackNode": {"python_module": "custom_nodes.Pack"}, "KSampler": {}}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ObjectInfo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/object_info"
    server.shutdown()
    thread.join(5)


def probe(tmp_path: Path, nodes_plan: Path, models_plan: Path) -> tuple[dict[str, Any], ...]:
    """The tagged answers of (install_nodes, fetch_models, model_job, the modules list)."""
    modules = tmp_path / "modules.py"
    modules.write_text(MODULES)
    probes = (
        ("python3", str(INSTALL_NODES), "--plan", str(nodes_plan), "check", "--verify"),
        ("python3", str(FETCH), "--plan", str(models_plan), "--check"),
        ("python3", str(MODEL_JOB), "status", "--job-dir", str(tmp_path / "job"), "--plan", str(models_plan)),
        ("python3", str(modules)),
    )
    text = StagedFiles().command(paths=(), probes=probes).get_raw_value()
    assert text.count("python3 -I -S -c") == 1
    # sudo leaves the working directory wherever the login was: a json.py there is not the stdlib's.
    (tmp_path / "json.py").write_text('print("CHECK [\\"shadowed\\"]")\n')
    out = subprocess.run(
        ["sh", "-c", text], capture_output=True, text=True, check=True, timeout=120, cwd=tmp_path
    )
    answers = StagedFiles().process(out.stdout.splitlines())["probes"]
    return tuple(parse_tagged(answers[str(i)]) for i in range(len(probes)))


def test_noop_probes_import_only_what_a_noop_needs_and_still_see_drift(
    tmp_path: Path, object_info: str
) -> None:
    url, commits = make_pack(tmp_path / "up", "Pack", ["1.0.0", "1.1.0"], classes=["PackNode"])
    nodes = tmp_path / "custom_nodes"
    nodes.mkdir()
    git("clone", "-q", url, str(nodes / "Pack"))
    git("-c", "advice.detachedHead=false", "checkout", "-q", "v1.0.0", cwd=nodes / "Pack")
    nodes_plan = write_plan(
        tmp_path / "nodes.json",
        {
            "custom_nodes_dir": str(nodes),
            "state_dir": str(tmp_path / "state"),
            "comfyui_dir": str(tmp_path / "ComfyUI"),
            "python": [sys.executable],
            "cm_cli": None,
            "object_info_url": object_info,
            "core_classes": ["KSampler"],
            "packs": [
                {
                    "id": "pack",
                    "repo": url,
                    "version": "1.0.0",
                    "dir": "Pack",
                    "registry": False,
                    "provides": ["PackNode"],
                }
            ],
        },
    )
    model = tmp_path / "models/checkpoints/m.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model bytes")
    models = {
        "models_dir": str(tmp_path / "models"),
        "staging_dir": str(tmp_path / "staging"),
        "state_file": str(tmp_path / "state/model-hashes.json"),
        "items": [
            {
                "filename": "m.safetensors",
                "folder": "checkpoints",
                "url": "https://huggingface.co/o/r/resolve/main/m.safetensors",
                "sha256": hashlib.sha256(b"model bytes").hexdigest(),
            }
        ],
    }
    models_plan = write_plan(tmp_path / "models.json", models)

    nodes_noop, models_noop, job_noop, seen = probe(tmp_path, nodes_plan, models_plan)
    assert nodes_noop["CHECK"] == [{"id": "pack", "dir": "Pack", "needs": []}]
    assert nodes_noop["VERIFY"]["packs"] == [{"id": "pack", "dir": "Pack", "missing": [], "imported": True}]
    assert nodes_noop["VERIFY"]["missing_core"] == []
    assert [r["state"] for r in models_noop["CHECK"]] == ["ok"]
    assert job_noop["JOB"]["state"] == "none"
    imported = set(seen["MODULES"])
    assert {"argparse", "json", "socket"} <= imported  # the scripts did run in this interpreter
    assert NOT_ON_A_NOOP.isdisjoint(imported), NOT_ON_A_NOOP & imported

    # The same lean probes still see drift: a pack moved off its tag, a tampered model, another plan.
    git("-c", "advice.detachedHead=false", "checkout", "-q", "v1.1.0", cwd=nodes / "Pack")
    model.write_bytes(b"model bytez")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "started.json").write_text(json.dumps({"plan_sha256": "0" * 64, "started": 1.0}))
    nodes_drift, models_drift, job_drift, _ = probe(tmp_path, nodes_plan, models_plan)
    assert nodes_drift["CHECK"][0]["needs"] == [f"at {commits['1.1.0'][:12]}, wants {commits['1.0.0'][:12]}"]
    assert "VERIFY" not in nodes_drift  # something to install: no proof from this run
    assert [r["state"] for r in models_drift["CHECK"]] == ["wrong"]
    assert job_drift["JOB"]["same_plan"] is False
