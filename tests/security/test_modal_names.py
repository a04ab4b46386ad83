"""One workflow-name rule everywhere, and a generated Modal app that no name or path can inject code into."""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from pathlib import Path

import pytest
from comfyui_api.names import is_workflow_name
from comfyui_api.workflows import WorkflowError, build_endpoint

from comfyfleet.deploys.serving import serving_deploy
from comfyfleet.errors import BadInput
from comfyfleet.manifest import Lock, Manifest
from comfyfleet.modal_target.generate import AppInputs, render_app, workflow_files_of
from comfyfleet.modal_target.options import ModalOptions

HOSTILE = ['a"""b', "it's", 'say"hi', "two\nlines", "back\\slash", "{{ x }}", "my.flow", "../up", "a b;c", ""]
PAYLOAD = "__import__('pathlib').Path('PWNED').touch()"


def _import(path: Path) -> object:
    name = f"generated_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_workflow_name_is_refused_by_the_modal_generator(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadInput) as err:
        workflow_files_of([Manifest(workflow=name, source=str(tmp_path / "wf.json"), format="api")])
    assert "rename" in str(err.value) and str(tmp_path) in str(err.value)


def test_hostile_folder_names_stay_inside_the_docstring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / f'x"""\n{PAYLOAD}\n"""\\{{{{ y }}}}\'q'
    folder.mkdir()
    wf = folder / "wf.json"
    wf.write_text('{"1": {"class_type": "EmptyImage", "inputs": {}}}')
    out = tmp_path / "out" / "app.py"
    out.parent.mkdir()
    inputs = AppInputs(
        lock=Lock(workflows={"wf": "0" * 64}, custom_nodes=[], models=[]), workflow_files={"wf.json": wf}
    )
    out.write_text(render_app(inputs, ModalOptions(), out))
    module = _import(out)
    assert not (tmp_path / "PWNED").exists()
    assert str(wf.relative_to(tmp_path)) in (module.__doc__ or "")
    assert module.WORKFLOWS == ["wf"]


@pytest.mark.parametrize("name", ["ok-name_1", *HOSTILE])
def test_the_api_modal_and_registry_agree_on_names(tmp_path: Path, name: str) -> None:
    """The API, the Modal generator and the serving registry accept exactly the names of the one rule."""
    expected = name == "ok-name_1"
    assert is_workflow_name(name) is expected
    api_ok = False
    if "/" not in name:  # a file of that name can exist in workflows/: does the API serve it?
        path = tmp_path / f"{name}.json"
        path.write_text(
            json.dumps(
                {
                    "1": {"class_type": "EmptyImage", "inputs": {}},
                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
                }
            )
        )
        info = {"EmptyImage": {"input": {}}, "SaveImage": {"input": {}, "output_node": True}}
        try:
            api_ok = build_endpoint(path, info).name == name
        except WorkflowError as exc:
            assert "rename the file" in str(exc)
    modal_ok = registry_ok = True
    try:
        workflow_files_of([Manifest(workflow=name, source=str(tmp_path / "wf.json"), format="api")])
    except BadInput:
        modal_ok = False
    try:
        serving_deploy(name, True)
    except BadInput:
        registry_ok = False
    assert api_ok is modal_ok is registry_ok is expected
