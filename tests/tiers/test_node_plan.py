"""Operator-side decisions of tier 2: which packs, which folders, which clone URLs (no host needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from comfyfleet.deploys.nodes import (
    clone_url,
    load_manifests,
    needed_packs,
    pack_dir,
)
from comfyfleet.errors import BadInput
from comfyfleet.facts.hostside import parse_tagged
from comfyfleet.inventory import git_mirrors
from comfyfleet.manifest import Manifest, NodePack, Unresolved, UnresolvedNode


def manifest(name: str, *packs: NodePack, core: tuple[str, ...] = ()) -> Manifest:
    return Manifest(
        workflow=name,
        source=f"workflows/{name}.json",
        format="api",
        custom_nodes=list(packs),
        core_classes=list(core),
    )


def pack(repo: str, version: str | None, *provides: str) -> NodePack:
    return NodePack(
        id=repo.rsplit("/", 1)[-1].lower(),
        repo=repo,
        version=version,
        provides=list(provides),
        resolved_by="override",
    )


def test_packs_of_several_workflows_are_merged_and_conflicting_pins_refused() -> None:
    a = manifest("a", pack("https://github.com/x/Pack", "1.0.0", "N1"), core=("KSampler",))
    b = manifest(
        "b",
        pack("https://github.com/x/Pack", None, "N2"),
        pack("https://github.com/y/Other", None, "O"),
        core=("SaveImage",),
    )
    packs, core = needed_packs([a, b])
    assert [(p.repo, p.version, p.provides) for p in packs] == [
        ("https://github.com/x/Pack", "1.0.0", ["N1", "N2"]),
        ("https://github.com/y/Other", None, ["O"]),
    ]
    assert core == ["KSampler", "SaveImage"]
    c = manifest("c", pack("https://github.com/x/Pack", "2.0.0", "N1"))
    with pytest.raises(
        BadInput, match=r"workflows/c\.json: pack https://github.com/x/Pack pinned to 2\.0\.0"
    ):
        needed_packs([a, c])


def test_unresolved_class_is_refused_with_the_fix() -> None:
    m = manifest("a")
    m.unresolved = Unresolved(
        nodes=[UnresolvedNode(class_type="Mystery", node_ids=["7"], reason="no pack lists it")]
    )
    with pytest.raises(
        BadInput, match=r"workflows/a\.json: node 7 class Mystery: no pack lists it \(add it under nodes:"
    ):
        needed_packs([m])


def test_pack_folders_and_clone_urls() -> None:
    assert pack_dir(pack("https://github.com/kijai/ComfyUI-KJNodes", None)) == "ComfyUI-KJNodes"
    assert pack_dir(pack("https://github.com/kijai/ComfyUI-KJNodes.git", None)) == "ComfyUI-KJNodes"
    odd = NodePack(id="$(rm -rf /)", repo="https://example.org/$(rm -rf /)", resolved_by="override")
    with pytest.raises(BadInput, match="safe folder name"):
        pack_dir(odd)
    mirrors = git_mirrors(
        "https://github.com/=http://127.0.0.1:9000/,https://gitlab.com/=http://127.0.0.1:9001/g/"
    )
    assert clone_url("https://github.com/a/B", mirrors) == "http://127.0.0.1:9000/a/B.git"
    assert clone_url("https://gitlab.com/a/B.git", mirrors) == "http://127.0.0.1:9001/g/a/B.git"
    assert clone_url("https://example.org/a/B", {}) == "https://example.org/a/B.git"
    with pytest.raises(BadInput, match="not a git URL"):
        clone_url("https://example.org/a b;id", {})
    assert git_mirrors({"https://github.com/": "http://m/"}) == {"https://github.com/": "http://m/"}


def test_host_script_answers_are_parsed_and_errors_kept() -> None:
    lines = [
        "progress: x 50%",
        'CHECK [{"dir": "A", "needs": []}]',
        "error: pack a: boom",
        "RESULT {bad json",
    ]
    assert parse_tagged(lines) == {"CHECK": [{"dir": "A", "needs": []}], "error": ["pack a: boom"]}


def test_manifests_come_from_the_analysis_of_the_workflow_folder(tmp_path: Path) -> None:
    wf = tmp_path / "workflows"
    wf.mkdir()
    (wf / "one.json").write_text(
        json.dumps(
            {
                "1": {"class_type": "MyNode", "inputs": {"text": "x"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
            }
        )
    )
    (wf / "overrides.yaml").write_text(
        yaml.safe_dump(
            {
                "nodes": {
                    "MyNode": {
                        "repo": "https://github.com/me/my-nodes",
                        "version": "0123456789abcdef0123456789abcdef01234567",
                    }
                }
            }
        )
    )
    packs, core = needed_packs(load_manifests(None, str(wf)))
    assert [(p.repo, p.version, p.provides) for p in packs] == [
        ("https://github.com/me/my-nodes", "0123456789abcdef0123456789abcdef01234567", ["MyNode"])
    ]
    assert "SaveImage" in core
    with pytest.raises(BadInput, match="no such workflow"):
        load_manifests(str(wf / "missing.json"))
    (wf / "broken.json").write_text("{not json")
    with pytest.raises(BadInput, match="broken.json"):
        load_manifests(None, str(wf))


def test_a_fork_and_its_original_in_two_workflows_are_refused_not_installed_twice() -> None:
    a = manifest("a", pack("https://github.com/kijai/ComfyUI-KJNodes", None, "N1"))
    b = manifest("b", pack("https://github.com/me/ComfyUI-KJNodes", None, "N2"))
    with pytest.raises(BadInput, match=r"would both be custom_nodes/ComfyUI-KJNodes"):
        needed_packs([a, b])
