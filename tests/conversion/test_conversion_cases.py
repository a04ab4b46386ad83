"""UI → API conversion, feature by feature, against what ComfyUI's own frontend produced.

Each case in data/cases/ is a small hand-made UI workflow and the prompt that the real frontend
(1.35.9, as served by a real ComfyUI 0.8.0) built from it with app.graphToPrompt(); the source of
each recording is in the case file. The conversion must give exactly that prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from comfyui_api.graph import GraphError, ui_to_api
from comfyui_api.workflows import WorkflowError, apply_values, build_endpoint

DATA = Path(__file__).parent / "data"
CASES = sorted((DATA / "cases").glob("*.json"))


def object_info() -> dict[str, Any]:
    return json.loads((DATA / "object_info_cases.json").read_text())["object_info"]


def case(name: str) -> dict[str, Any]:
    return json.loads((DATA / "cases" / f"{name}.json").read_text())


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_conversion_equals_the_frontends_prompt(path: Path) -> None:
    recorded = json.loads(path.read_text())
    assert ui_to_api(recorded["workflow"], object_info()) == recorded["frontend_prompt"]


def test_cases_cover_every_feature() -> None:
    assert {p.stem for p in CASES} >= {
        "widgets_and_control_after_generate",
        "widget_added_after_save_gets_default",
        "missing_widget_default_image_scale",
        "bypassed_and_muted_nodes",
        "reroute_and_primitive_node",
        "kjnodes_set_get",
        "subgraph_promoted_widgets_and_inner_modes",
        "nested_subgraphs",
        "bypassed_subgraph_instance",
        "muted_subgraph_instance",
        "legacy_group_node",
        "kjnodes_get_without_set",
    }


def test_unknown_node_type_is_one_line_naming_the_node() -> None:
    workflow = case("nested_subgraphs")["workflow"]
    workflow["definitions"]["subgraphs"][1]["nodes"][0]["type"] = "FancySampler"
    with pytest.raises(GraphError) as err:
        ui_to_api(workflow, object_info(), "wf.json")
    assert str(err.value) == (
        "wf.json: node 83:5:1 (FancySampler) is not installed in ComfyUI; install its node pack, then restart"
    )


def test_missing_subgraph_definition_and_self_containing_subgraph_are_refused() -> None:
    workflow = case("subgraph_promoted_widgets_and_inner_modes")["workflow"]
    broken = {**workflow, "definitions": {"subgraphs": []}}
    with pytest.raises(GraphError, match=r"node 83 is a subgraph .* missing from definitions.subgraphs"):
        ui_to_api(broken, object_info(), "wf.json")
    looped = json.loads(json.dumps(workflow))
    inner = looped["definitions"]["subgraphs"][0]
    inner["nodes"].append({**inner["nodes"][0], "id": 9, "type": inner["id"], "inputs": [], "outputs": []})
    with pytest.raises(GraphError, match=r"node 83:9: subgraph .* contains itself"):
        ui_to_api(looped, object_info(), "wf.json")


def test_endpoint_parameters_follow_the_subgraphs_exposed_inputs(tmp_path: Path) -> None:
    path = tmp_path / "sample.json"
    path.write_text(json.dumps(case("nested_subgraphs")["workflow"]))
    endpoint = build_endpoint(path, object_info())
    assert list(endpoint.params) == ["seed", "steps"]
    seed = endpoint.params["seed"]
    assert (seed.node_id, seed.input, seed.default, seed.kind) == ("83:5:1", "seed", 31337, "integer")
    graph = apply_values(endpoint, {"seed": 5, "steps": 3})
    assert (graph["83:5:1"]["inputs"]["seed"], graph["83:5:1"]["inputs"]["steps"]) == (5, 3)
    assert endpoint.graph["83:5:1"]["inputs"]["seed"] == 31337


def test_override_file_still_wins_over_exposed_inputs(tmp_path: Path) -> None:
    path = tmp_path / "sample.json"
    path.write_text(json.dumps(case("subgraph_promoted_widgets_and_inner_modes")["workflow"]))
    (tmp_path / "sample.api.yaml").write_text(
        "inputs:\n  steps: {hidden: true}\n  seed: {rename: noise_seed}\n"
    )
    endpoint = build_endpoint(path, object_info())
    assert list(endpoint.params) == ["noise_seed"]


def test_workflow_without_subgraphs_keeps_derived_parameters(tmp_path: Path) -> None:
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(case("widgets_and_control_after_generate")["workflow"]))
    endpoint = build_endpoint(path, object_info())
    assert {"prompt", "negative_prompt", "seed", "steps", "width", "height"} <= set(endpoint.params)


def test_all_muted_workflow_has_no_endpoint(tmp_path: Path) -> None:
    workflow = case("widgets_and_control_after_generate")["workflow"]
    for node in workflow["nodes"]:
        node["mode"] = 2
    assert ui_to_api(workflow, object_info()) == {}
    path = tmp_path / "off.json"
    path.write_text(json.dumps(workflow))
    with pytest.raises(WorkflowError, match="no output node"):
        build_endpoint(path, object_info())
