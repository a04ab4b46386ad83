"""Workflow formats: API, the prompt wrapper, UI, subgraphs, group nodes, skipped nodes."""

from __future__ import annotations

import pytest

from analysis.helpers import ui_node, ui_workflow
from comfyfleet.analysis import analyze_data
from comfyfleet.analysis.index import KnowledgeIndex

API = {
    "1": {
        "class_type": "UNETLoader",
        "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"},
    },
    "2": {"class_type": "OnlyBig", "inputs": {"model": ["1", 0], "strength": 0.5}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
}


def test_api_format_lists_core_packs_and_models(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(API, "wf", "wf.json", index=small_index)
    assert manifest.format == "api"
    assert manifest.core_classes == ["SaveImage", "UNETLoader"]
    assert [(p.repo, p.provides) for p in manifest.custom_nodes] == [
        ("https://github.com/alice/big-pack", ["OnlyBig"])
    ]
    assert [(m.filename, m.folder) for m in manifest.models] == [
        ("flux1-dev.safetensors", "diffusion_models")
    ]
    assert manifest.models[0].node_ids == ["1"]


def test_prompt_wrapper_is_unwrapped(small_index: KnowledgeIndex) -> None:
    wrapped = {"prompt": API, "client_id": "abc"}
    assert analyze_data(wrapped, "wf", "wf.json", index=small_index).model_dump(
        exclude={"source"}
    ) == analyze_data(API, "wf", "wf.json", index=small_index).model_dump(exclude={"source"})


def test_ui_format_names_widgets_from_inputs(small_index: KnowledgeIndex) -> None:
    loader = ui_node(
        5,
        "MysteryLoader",
        ["sdxl\\base.safetensors", 1.0],
        inputs=[
            {"name": "ckpt_name", "widget": {"name": "ckpt_name"}},
            {"name": "strength", "widget": {"name": "strength"}},
        ],
    )
    manifest = analyze_data(ui_workflow(loader), "wf", "wf.json", index=small_index)
    assert manifest.format == "ui"
    # Named by the node's inputs: ckpt_name -> checkpoints; Windows separator normalized.
    assert [(m.filename, m.folder, m.source) for m in manifest.models] == [
        ("sdxl/base.safetensors", "checkpoints", "input_name")
    ]


def test_ui_widget_names_are_not_guessed_when_counts_disagree(small_index: KnowledgeIndex) -> None:
    # Old frontends list only converted widgets: one name for three values must not be used.
    node = ui_node(
        1,
        "MysteryLoader",
        [3, "a_lora_file.safetensors", 0.5],
        inputs=[{"name": "ckpt_name", "widget": {"name": "ckpt_name"}}],
    )
    manifest = analyze_data(ui_workflow(node), "wf", "wf.json", index=small_index)
    assert [(m.folder, m.source) for m in manifest.models] == [("loras", "heuristic")]


def test_learned_widget_order_names_ui_values(small_index: KnowledgeIndex) -> None:
    # The index learned BigLoader's widget order ["weights", "dtype"] from the template.
    assert small_index.widget_order["BigLoader"] == ["weights", "dtype"]
    node = ui_node(1, "BigLoader", ["other_weights.safetensors", "fp16"])
    manifest = analyze_data(ui_workflow(node), "wf", "wf.json", index=small_index)
    assert [(m.folder, m.source) for m in manifest.models] == [("diffusion_models", "class_input")]


def test_muted_bypassed_and_frontend_only_nodes_are_skipped(small_index: KnowledgeIndex) -> None:
    workflow = ui_workflow(
        ui_node(1, "OnlyBig", mode=2),
        ui_node(2, "OnlySmall", ["x_lora.safetensors"], mode=4),
        ui_node(3, "Note", ["see https://example.org/a.safetensors"]),
        ui_node(4, "Reroute"),
        ui_node(5, "PrimitiveNode", ["42"]),
        ui_node(6, "SaveImage", ["out"]),
    )
    manifest = analyze_data(workflow, "wf", "wf.json", index=small_index)
    assert manifest.custom_nodes == [] and manifest.models == []
    assert manifest.core_classes == ["SaveImage"]
    assert {(s.node_id, s.class_type, s.reason) for s in manifest.skipped_nodes} == {
        ("1", "OnlyBig", "muted"),
        ("2", "OnlySmall", "bypassed"),
        ("3", "Note", "frontend-only"),
        ("4", "Reroute", "frontend-only"),
        ("5", "PrimitiveNode", "frontend-only"),
    }


SUBGRAPH_ID = "11111111-2222-4333-8444-555555555555"


def _subgraph_workflow(instance_mode: int = 0) -> dict:
    inner_loader = ui_node(
        1,
        "UNETLoader",
        ["stale_inner_value.safetensors", "default"],
        inputs=[
            {"name": "unet_name", "widget": {"name": "unet_name"}, "link": 7},
            {"name": "weight_dtype", "widget": {"name": "weight_dtype"}},
        ],
    )
    inner_pack = ui_node(2, "OnlySmall")
    subgraph = {
        "id": SUBGRAPH_ID,
        "name": "Generate",
        "inputs": [{"name": "unet_name", "linkIds": [7]}],
        "nodes": [inner_loader, inner_pack],
        "links": [
            {"id": 7, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "COMBO"}
        ],
    }
    instance = ui_node(
        9,
        SUBGRAPH_ID,
        ["chosen_on_instance.safetensors"],
        mode=instance_mode,
        inputs=[{"name": "unet_name", "widget": {"name": "unet_name"}}],
    )
    return ui_workflow(instance, definitions={"subgraphs": [subgraph]})


def test_subgraph_nodes_count_and_instance_values_win(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(_subgraph_workflow(), "wf", "wf.json", index=small_index)
    assert [p.provides for p in manifest.custom_nodes] == [["OnlySmall"]]
    assert manifest.custom_nodes[0].repo == "https://github.com/bob/small-pack"
    assert [(m.filename, m.folder, m.node_ids) for m in manifest.models] == [
        ("chosen_on_instance.safetensors", "diffusion_models", ["9:1"])
    ]
    assert SUBGRAPH_ID not in manifest.core_classes + [u.class_type for u in manifest.unresolved.nodes]


def test_subgraph_proxy_widgets_set_inner_values(small_index: KnowledgeIndex) -> None:
    workflow = _subgraph_workflow()
    instance = workflow["nodes"][0]
    instance["inputs"] = []
    instance["properties"] = {"proxyWidgets": [["1", "unet_name"]]}
    instance["widgets_values"] = ["from_proxy.safetensors"]
    manifest = analyze_data(workflow, "wf", "wf.json", index=small_index)
    assert [m.filename for m in manifest.models] == ["from_proxy.safetensors"]


@pytest.mark.parametrize("mode, reason", [(4, "bypassed"), (2, "muted")])
def test_disabled_subgraph_instance_still_runs_its_nodes(
    small_index: KnowledgeIndex, mode: int, reason: str
) -> None:
    """ComfyUI 0.8.0's frontend (1.35.9) still queues the nodes inside a bypassed or muted subgraph
    instance (recorded: tests/conversion/data/cases/*_subgraph_instance.json), so they must be installed."""
    manifest = analyze_data(_subgraph_workflow(instance_mode=mode), "wf", "wf.json", index=small_index)
    assert [p.provides for p in manifest.custom_nodes] == [["OnlySmall"]]
    assert [(s.node_id, s.reason) for s in manifest.skipped_nodes] == [("9", reason)]


def test_group_nodes_expand_to_their_inner_nodes(small_index: KnowledgeIndex) -> None:
    group = {
        "nodes": [
            {"index": 0, "type": "UNETLoader", "widgets_values": ["group_default.safetensors", "default"]},
            {"index": 1, "type": "OnlyBig", "widgets_values": [0.5]},
        ]
    }
    instance = ui_node(4, "workflow>My Group", ["group_instance.safetensors", "fp8", 0.7])
    manifest = analyze_data(
        ui_workflow(instance, extra={"groupNodes": {"My Group": group}}), "wf", "wf.json", index=small_index
    )
    assert [p.provides for p in manifest.custom_nodes] == [["OnlyBig"]]
    assert manifest.core_classes == ["UNETLoader"]
    assert [(m.filename, m.folder) for m in manifest.models] == [
        ("group_instance.safetensors", "diffusion_models")
    ]


def test_nested_lora_rows_and_disabled_rows(small_index: KnowledgeIndex) -> None:
    rows = [
        {},
        {"type": "PowerLoraLoaderHeaderWidget"},
        {"on": True, "lora": "styles\\ink.safetensors", "strength": 1},
        {"on": False, "lora": "unused.safetensors", "strength": 1},
        "",
    ]
    manifest = analyze_data(
        ui_workflow(ui_node(1, "Power Lora Loader (rgthree)", rows)), "wf", "wf.json", index=small_index
    )
    assert [(m.filename, m.folder) for m in manifest.models] == [("styles/ink.safetensors", "loras")]


NESTED_ID = "22222222-3333-4444-8555-666666666666"


def _nested_subgraph_workflow(use_proxies: bool) -> dict:
    """Outer instance 9 -> outer subgraph holding nested instance 4 -> inner UNETLoader 1."""
    inner_loader = ui_node(
        1,
        "UNETLoader",
        ["stale_inner_value.safetensors", "default"],
        inputs=[
            {"name": "unet_name", "widget": {"name": "unet_name"}, "link": 7},
            {"name": "weight_dtype", "widget": {"name": "weight_dtype"}},
        ],
    )
    nested_def = {
        "id": NESTED_ID,
        "inputs": [{"name": "unet_name", "linkIds": [7]}],
        "nodes": [inner_loader],
        "links": [{"id": 7, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0}],
    }
    if use_proxies:
        nested_instance = ui_node(
            4, NESTED_ID, ["stale_middle_value.safetensors"], props={"proxyWidgets": [["1", "unet_name"]]}
        )
        nested_def["inputs"] = []
        outer_def = {"id": SUBGRAPH_ID, "inputs": [], "nodes": [nested_instance], "links": []}
        instance = ui_node(
            9, SUBGRAPH_ID, ["chosen_outside.safetensors"], props={"proxyWidgets": [["4", "unet_name"]]}
        )
    else:
        nested_instance = ui_node(
            4,
            NESTED_ID,
            ["stale_middle_value.safetensors"],
            inputs=[{"name": "unet_name", "widget": {"name": "unet_name"}, "link": 8}],
        )
        outer_def = {
            "id": SUBGRAPH_ID,
            "inputs": [{"name": "unet_name", "linkIds": [8]}],
            "nodes": [nested_instance],
            "links": [{"id": 8, "origin_id": -10, "origin_slot": 0, "target_id": 4, "target_slot": 0}],
        }
        instance = ui_node(
            9,
            SUBGRAPH_ID,
            ["chosen_outside.safetensors"],
            inputs=[{"name": "unet_name", "widget": {"name": "unet_name"}}],
        )
    return ui_workflow(instance, definitions={"subgraphs": [outer_def, nested_def]})


@pytest.mark.parametrize("use_proxies", [False, True], ids=["linked-inputs", "proxy-widgets"])
def test_nested_subgraph_gets_value_from_outermost_instance(
    small_index: KnowledgeIndex, use_proxies: bool
) -> None:
    workflow = _nested_subgraph_workflow(use_proxies)
    manifest = analyze_data(workflow, "wf", "wf.json", index=small_index)
    assert [(m.filename, m.folder, m.node_ids) for m in manifest.models] == [
        ("chosen_outside.safetensors", "diffusion_models", ["9:4:1"])
    ]


def test_nested_subgraph_keeps_middle_value_when_outer_sets_nothing(small_index: KnowledgeIndex) -> None:
    workflow = _nested_subgraph_workflow(use_proxies=False)
    workflow["nodes"][0]["widgets_values"] = []
    workflow["nodes"][0]["inputs"] = []
    manifest = analyze_data(workflow, "wf", "wf.json", index=small_index)
    assert [m.filename for m in manifest.models] == ["stale_middle_value.safetensors"]
