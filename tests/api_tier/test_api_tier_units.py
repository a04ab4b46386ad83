"""Tier 1 pieces that need no fleet: the container spec, what gets synced, bad host data."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyfleet.deploys.api import ApiPaths, api_spec, local_artifact, local_workflow_files
from comfyfleet.errors import BadInput
from comfyfleet.inventory import validate_host_data


def test_spec_runs_the_pyz_with_stock_python_and_changes_with_the_artifact() -> None:
    cfg = validate_host_data("h1", {"provider": "lambda", "api_port": 3100, "comfyui_port": 8288})
    paths = ApiPaths.for_config(cfg)
    a = api_spec(cfg, paths, "a" * 64, "0.0.0.0")
    b = api_spec(cfg, paths, "b" * 64, "0.0.0.0")
    assert a.command[:2] == ("python3", "/home/ubuntu/comfyfleet/api/comfyui-api.pyz")
    cmd = list(a.command)
    assert cmd[cmd.index("--comfyui-url") + 1] == "http://127.0.0.1:8288"
    assert cmd[cmd.index("--port") + 1] == "3100" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--api-key-file") + 1] == "/home/ubuntu/comfyfleet/api/api-keys"
    assert a.name == "comfyui-api" and a.network == "host"
    assert a.spec_hash() != b.spec_hash()  # a new artifact recreates the API container
    assert api_spec(cfg, paths, "a" * 64, "0.0.0.0").spec_hash() == a.spec_hash()


def test_only_workflow_files_are_synced(tmp_path: Path) -> None:
    for name in (
        "txt2img.json",
        "txt2img.api.yaml",
        "overrides.yaml",
        "comfyfleet.lock.yaml",
        "x.manifest.json",
        "evil;rm -rf.json",
        "../up.json".replace("/", "_"),
        "notes.txt",
    ):
        (tmp_path / name).write_text("{}")
    assert sorted(local_workflow_files(str(tmp_path))) == [
        "txt2img.api.yaml",
        "txt2img.json",
    ]
    with pytest.raises(BadInput, match="workflows folder not found"):
        local_workflow_files(str(tmp_path / "missing"))


def test_missing_artifact_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="scripts/build-binary"):
        local_artifact(str(tmp_path / "nope.pyz"))


def test_spec_points_the_api_at_the_stop_markers() -> None:
    cfg = validate_host_data("h1", {"provider": "lambda"})
    paths = ApiPaths.for_config(cfg)
    cmd = list(api_spec(cfg, paths, "a" * 64, "0.0.0.0").command)
    # The folder serving.py writes markers into; it lies inside the mounted API folder.
    assert cmd[cmd.index("--disabled-dir") + 1] == "/home/ubuntu/comfyfleet/api/disabled" == paths.disabled
    assert paths.disabled.startswith(paths.dir + "/")
