"""Helpers for analysis tests: a tiny knowledge index built by the real index builder, node builders."""

from __future__ import annotations

from typing import Any

from comfyfleet.analysis.index_build import build_index

# Manager-shaped data small enough to reason about in a test.
MANAGER: dict[str, Any] = {
    "extension-node-map.json": {
        "https://github.com/comfyanonymous/ComfyUI": [["KSampler", "CheckpointLoaderSimple"], {}],
        "https://github.com/alice/big-pack": [
            ["Shared", "OnlyBig", "Twin", "BigLoader"],
            {"title_aux": "Big"},
        ],
        "https://github.com/bob/small-pack": [["Shared", "OnlySmall", "Twin"], {"title_aux": "Small"}],
        "https://github.com/carol/fork-of-everything": [["Shared", "Twin", "Claimed"], {}],
        "https://github.com/dave/claimer": [["Claimed"], {}],
        "https://github.com/erin/suffix-pack": [["Plain (zz)"], {"nodename_pattern": r" \(zz\)$"}],
        "https://github.com/frank/FancyNodes": [["FancyBlur", "FancySharpen", "FancyResize"], {}],
        "https://github.com/grace/TaggedPack": [["BlurGK", "SharpenGK", "Save Image Plus"], {}],
        "https://github.com/heidi/DenoiseTools": [["DenoiseMore", "DenoiseLess", "DenoiseAll"], {}],
        "https://github.com/ivan/ComfyUI-Widget-Works": [["SomethingElse"], {}],
    },
    "custom-node-list.json": {
        "custom_nodes": [
            {
                "id": "big",
                "reference": "https://github.com/alice/big-pack",
                "files": ["https://github.com/alice/big-pack"],
            },
            {"id": "claimer", "reference": "https://github.com/dave/claimer", "preemptions": ["Claimed"]},
        ]
    },
    "github-stats.json": {
        "https://github.com/alice/big-pack": {"stars": 50},
        "https://github.com/bob/small-pack": {"stars": 900},
        "https://github.com/carol/fork-of-everything": {"stars": 3},
        "https://github.com/dave/claimer": {"stars": 1},
        "https://github.com/frank/FancyNodes": {"stars": 400},
        "https://github.com/heidi/DenoiseTools": {"stars": 5000},
    },
    "model-list.json": {
        "models": [
            {
                "filename": "known_ckpt.safetensors",
                "save_path": "checkpoints/SD1.5",
                "type": "checkpoint",
                "url": "https://example.org/known_ckpt.safetensors",
            },
            {
                "filename": "RealESRGAN_x2.pth",
                "save_path": "default",
                "type": "upscale",
                "url": "https://huggingface.co/x/y/blob/main/RealESRGAN_x2.pth?download=true",
            },
            {
                "filename": "diffusion_pytorch_model.safetensors",
                "save_path": "controlnet/foo",
                "type": "controlnet",
                "url": "https://example.org/generic",
            },
        ]
    },
}

TEMPLATE: dict[str, Any] = {
    "nodes": [
        {
            "id": 1,
            "type": "BigLoader",
            "properties": {
                "cnr_id": "comfy-core",
                "models": [
                    {
                        "name": "big_model.safetensors",
                        "url": "https://example.org/big_model.safetensors",
                        "directory": "diffusion_models",
                    }
                ],
            },
            "widgets_values": ["big_model.safetensors", "fp8"],
            "widgets_values_named": {"weights": "big_model.safetensors", "dtype": "fp8"},
        },
        {
            "id": 2,
            "type": "KSampler",
            "properties": {"cnr_id": "comfy-core"},
            "widgets_values": [1, "fixed", 20, 7, "euler", "normal", 1],
        },
        {"id": 3, "type": "CoreOnlyInTemplates", "properties": {"cnr_id": "comfy-core"}},
    ]
}


def small_index_doc() -> dict[str, Any]:
    """The index document the real builder makes from MANAGER and one template."""
    return build_index(
        MANAGER,
        [TEMPLATE],
        {"comfyui-manager": "test", "comfyui-workflow-templates-json": "test"},
        {"VAELoader", "UNETLoader", "LoraLoader", "SaveImage", "Note"},
        {"UNETLoader": {"unet_name": "diffusion_models"}},
    )


def ui_node(
    node_id: int,
    ctype: str,
    widgets: Any = None,
    mode: int = 0,
    props: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A UI-format node the way the frontend saves it (only the fields analysis reads)."""
    node: dict[str, Any] = {
        "id": node_id,
        "type": ctype,
        "mode": mode,
        "properties": props or {},
        "inputs": [],
        "outputs": [],
    }
    if widgets is not None:
        node["widgets_values"] = widgets
    node.update(extra)
    return node


def ui_workflow(*nodes: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"last_node_id": len(nodes), "nodes": list(nodes), "links": [], "version": 0.4, **extra}
