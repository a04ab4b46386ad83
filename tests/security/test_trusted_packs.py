"""Attacks on the node tier through a workflow file: packs come from trusted sources only.

A workflow is untrusted input. Its nodes' ``properties.aux_id`` can name any GitHub
repository; installing it would run that repository's install.py and requirements as root
on a GPU host. Only packs ComfyUI-Manager's data lists, or that the user allowed in
workflows/overrides.yaml, may be installed. A pinned version must be exactly that tag or
commit: never the default branch that happens to be checked out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet.upstreams import GitUpstreams

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_NODES = REPO_ROOT / "src" / "comfyfleet" / "hostside" / "install_nodes.py"
EVIL = "someone/any-repo"


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfyfleet.cli.main", "analyze", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "250"},
    )


def workflow_with(props: dict[str, Any], class_type: str = "AnyRepoPayloadNode") -> dict[str, Any]:
    """A UI workflow: one core node and one node whose metadata names a pack."""
    nodes = [
        {"id": 1, "type": "EmptyLatentImage", "mode": 0, "widgets_values": [512, 512, 1], "properties": {}},
        {"id": 2, "type": class_type, "mode": 0, "widgets_values": [], "properties": props},
    ]
    return {"last_node_id": 2, "nodes": nodes, "links": [], "version": 0.4}


def test_aux_id_naming_an_unknown_repo_is_unresolved_and_strict_fails(tmp_path: Path) -> None:
    (tmp_path / "wf.json").write_text(json.dumps(workflow_with({"aux_id": EVIL, "ver": "0123abcd"})))
    done = analyze(tmp_path / "wf.json", "--strict", "--format", "json")
    assert done.returncode == 1, done.stdout + done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["custom_nodes"] == []
    [node] = manifest["unresolved"]["nodes"]
    assert node["class_type"] == "AnyRepoPayloadNode" and node["node_ids"] == ["2"]
    # The one line that allows it, as a user would paste it.
    line = next(part for part in node["reason"].split("   ") if part.startswith("- https://"))
    assert line == f"- https://github.com/{EVIL}"

    (tmp_path / "overrides.yaml").write_text(f"trusted_repos:\n  {line}\n")
    allowed = analyze(tmp_path / "wf.json", "--strict", "--format", "json")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    [pack] = json.loads(allowed.stdout)["custom_nodes"]
    assert (pack["repo"], pack["version"], pack["provides"]) == (
        f"https://github.com/{EVIL}",
        "0123abcd",
        ["AnyRepoPayloadNode"],
    )


def test_aux_id_cannot_swap_a_known_class_for_an_unknown_repo(tmp_path: Path) -> None:
    """A class the Manager lists, with aux_id pointing at a look-alike: the listed pack, never the look-alike."""
    wf = workflow_with({"aux_id": "someone/ComfyUI-KJNodes-evil"}, class_type="ImageResizeKJv2")
    (tmp_path / "wf.json").write_text(json.dumps(wf))
    done = analyze(tmp_path / "wf.json", "--strict", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    repos = [p["repo"] for p in json.loads(done.stdout)["custom_nodes"]]
    assert repos == ["https://github.com/kijai/ComfyUI-KJNodes"]


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitUpstreams]:
    server = GitUpstreams(tmp_path / "git")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def install(tmp_path: Path, url: str, version: str) -> tuple[int, dict[str, Any], Path]:
    nodes = tmp_path / "custom_nodes"
    plan = {
        "custom_nodes_dir": str(nodes),
        "state_dir": str(tmp_path / "state"),
        "comfyui_dir": str(tmp_path / "ComfyUI"),
        "python": [sys.executable],
        "cm_cli": None,
        "pip_args": [],
        "packs": [
            {
                "id": "pinpack",
                "repo": url,
                "version": version,
                "dir": "PinPack",
                "registry": True,
                "provides": ["PinPackNode"],
            },
        ],
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run(
        [sys.executable, str(INSTALL_NODES), "--plan", str(tmp_path / "plan.json"), "install"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    [row] = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    return proc.returncode, row, nodes / "PinPack"


def test_pinned_version_without_its_tag_fails_instead_of_installing_head(
    tmp_path: Path, git_server: GitUpstreams
) -> None:
    url = git_server.make_node_pack_repo("PinPack", ["PinPackNode"], versions=("1.0.0", "1.1.0"))
    rc, row, folder = install(tmp_path, url, "1.2.0")
    assert rc == 1 and row["status"] == "failed"
    assert "version 1.2.0 of" in row["error"] and "has no git tag v1.2.0 or 1.2.0" in row["error"]
    # Nothing left where ComfyUI would import it at its next start.
    assert not folder.exists()

    # The same pack pinned to a version it has: exactly that tag, not master (1.1.0).
    rc, row, folder = install(tmp_path, url, "1.0.0")
    assert rc == 0, row
    head = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout
    tagged = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "v1.0.0^{commit}"], capture_output=True, text=True
    ).stdout
    assert head.strip() == tagged.strip() == row["commit"]


def test_pinned_commit_absent_from_the_repo_fails(tmp_path: Path, git_server: GitUpstreams) -> None:
    url = git_server.make_node_pack_repo("PinPack", ["PinPackNode"], versions=("1.0.0",))
    rc, row, folder = install(tmp_path, url, "f" * 40)
    assert rc == 1 and f"commit {'f' * 40} is not in" in row["error"]
    assert not folder.exists()
