"""Overrides files (format, validation, auto-loading) and the combined lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.analysis import analyze_paths, load_overrides
from comfyfleet.analysis.lock import build_lock
from comfyfleet.errors import BadInput
from comfyfleet.manifest import Manifest, ModelRef, NodePack

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_shipped_overrides_file_is_valid_and_used() -> None:
    overrides = load_overrides(REPO_ROOT / "workflows" / "overrides.yaml")
    assert overrides.models["v1-5-pruned-emaonly-fp16.safetensors"].folder == "checkpoints"
    result = analyze_paths([REPO_ROOT / "workflows"])
    assert result.errors == []
    assert all(not m.unresolved for m in result.manifests), [m.unresolved for m in result.manifests]
    ckpt = next(m for m in result.lock.models if m.filename == "v1-5-pruned-emaonly-fp16.safetensors")
    assert ckpt.source == "override" and ckpt.workflows == ["lora_txt2img", "txt2img"]


def test_overrides_next_to_workflows_are_loaded_automatically(tmp_path: Path, write_json) -> None:
    write_json("wf.json", {"1": {"class_type": "MyNode", "inputs": {"w": "mine.safetensors"}}})
    (tmp_path / "overrides.yaml").write_text(
        "nodes:\n  MyNode:\n    repo: https://github.com/me/my-nodes\n    version: '1.2.0'\n"
        "models:\n  mine.safetensors:\n    folder: clip\n    url: https://example.org/mine.safetensors\n"
    )
    [manifest] = analyze_paths([tmp_path]).manifests
    assert [(p.repo, p.version, p.resolved_by) for p in manifest.custom_nodes] == [
        ("https://github.com/me/my-nodes", "1.2.0", "override")
    ]
    # Legacy folder names become today's: clip -> text_encoders.
    assert [(m.folder, m.url, m.source) for m in manifest.models] == [
        ("text_encoders", "https://example.org/mine.safetensors", "override")
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nodes: [1, 2", "invalid YAML"),
        ("nodes:\n  X:\n    repo: git@github.com:a/b\n", "nodes.X.repo"),
        ("models:\n  a.safetensors:\n    folder: ../../etc\n", "models.a.safetensors.folder"),
        ("models:\n  a.safetensors:\n    sha256: nothex\n", "models.a.safetensors.sha256"),
        ("surprise: 1\n", "surprise"),
    ],
)
def test_invalid_overrides_name_file_and_key(tmp_path: Path, write_json, text: str, expected: str) -> None:
    path = tmp_path / "overrides.yaml"
    path.write_text(text)
    with pytest.raises(BadInput) as caught:
        load_overrides(path)
    assert str(caught.value).startswith(str(path)) and expected in str(caught.value)
    # In a run, the workflows of that directory are reported, not silently analyzed without it.
    write_json("wf.json", {"1": {"class_type": "SaveImage", "inputs": {}}})
    result = analyze_paths([tmp_path])
    assert result.manifests == [] and len(result.errors) == 2


def _manifest(name: str, version: str | None, model_url: str | None) -> Manifest:
    return Manifest(
        workflow=name,
        source=f"{name}.json",
        format="api",
        custom_nodes=[
            NodePack(
                id="p",
                repo="https://github.com/o/p",
                version=version,
                provides=[f"{name}Node"],
                resolved_by="node_metadata",
            )
        ],
        models=[
            ModelRef(filename="m.safetensors", folder="loras", url=model_url, source="index", node_ids=["1"])
        ],
    )


def test_lock_dedupes_packs_and_models_and_reports_conflicts() -> None:
    lock = build_lock(
        [_manifest("a", "1.0.0", None), _manifest("b", "2.0.0", "https://x/m"), _manifest("c", "2.0.0", None)]
    )
    [pack] = lock.custom_nodes
    assert pack.provides == ["aNode", "bNode", "cNode"] and pack.workflows == ["a", "b", "c"]
    assert pack.version == "2.0.0"  # asked for by most workflows
    assert [(c.repo, c.versions) for c in lock.conflicts] == [
        ("https://github.com/o/p", {"1.0.0": ["a"], "2.0.0": ["b", "c"]})
    ]
    [model] = lock.models
    assert (model.url, model.workflows) == ("https://x/m", ["a", "b", "c"])
    assert set(lock.workflows) == {"a", "b", "c"}


def test_unpinned_workflow_is_no_conflict() -> None:
    lock = build_lock([_manifest("a", None, None), _manifest("b", "2.0.0", None)])
    assert lock.conflicts == [] and lock.custom_nodes[0].version == "2.0.0"


def test_analyze_file_applies_overrides_next_to_it_unless_told_otherwise(tmp_path: Path, write_json) -> None:
    from comfyfleet.analysis import Overrides, analyze_file

    path = write_json(
        "wf.json",
        {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "mine.safetensors"}}},
    )
    (tmp_path / "overrides.yaml").write_text(
        "models:\n  mine.safetensors:\n    url: https://example.org/mine.safetensors\n"
    )
    [model] = analyze_file(path).models
    assert (model.folder, model.url) == ("checkpoints", "https://example.org/mine.safetensors")
    [model] = analyze_file(path, Overrides()).models
    assert model.url is None
