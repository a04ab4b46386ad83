"""Model references: detection, folder and URL evidence, unsafe names."""

from __future__ import annotations

import pytest

from analysis.helpers import ui_node, ui_workflow
from comfyfleet.analysis import Overrides, analyze_data
from comfyfleet.analysis.index import KnowledgeIndex


def one_node(ctype: str, **inputs) -> dict:
    return {"1": {"class_type": ctype, "inputs": inputs}}


@pytest.mark.parametrize(
    ("input_name", "folder"),
    [
        ("ckpt_name", "checkpoints"),
        ("lora_name", "loras"),
        ("unet_name", "diffusion_models"),
        ("vae_name", "vae"),
        ("clip_name", "text_encoders"),
        ("clip_name3", "text_encoders"),
        ("control_net_name", "controlnet"),
        ("style_model_name", "style_models"),
        ("upscale_model", "upscale_models"),
        ("ipadapter_file", "ipadapter"),
        ("lora_02", "loras"),
        ("lora_1_name", "loras"),
        ("hires_ckpt_name", "checkpoints"),
        ("controlnet_2", "controlnet"),
    ],
)
def test_input_names_give_the_folder(small_index: KnowledgeIndex, input_name: str, folder: str) -> None:
    manifest = analyze_data(
        one_node("SomeCustomLoader", **{input_name: "file.safetensors"}), "wf", "wf", index=small_index
    )
    assert [(m.filename, m.folder) for m in manifest.models] == [("file.safetensors", folder)]


def test_class_specific_knowledge_beats_generic_names(small_index: KnowledgeIndex) -> None:
    wf = {
        "1": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x_foo.pth"}},
        "2": {"class_type": "WanVideoVAELoader", "inputs": {"model_name": "wan_vae.safetensors"}},
        "3": {"class_type": "UNETLoader", "inputs": {"unet_name": "u.gguf"}},
        "4": {"class_type": "ADE_AnimateDiffLoaderGen1", "inputs": {"model_name": "mm_sd_v15_v2.ckpt"}},
        "5": {"class_type": "SUPIR_model_loader_v2", "inputs": {"supir_model": "SUPIR-v0Q.ckpt"}},
        "6": {"class_type": "easy samLoaderPipe", "inputs": {"model_name": "sam_vit_b_01ec64.pth"}},
        "7": {
            "class_type": "NunchakuZImageDiTLoader",
            "inputs": {"model_name": "svdq-int4-zimage.safetensors"},
        },
    }
    folders = {m.filename: m.folder for m in analyze_data(wf, "wf", "wf", index=small_index).models}
    assert folders == {
        "4x_foo.pth": "upscale_models",
        "wan_vae.safetensors": "vae",
        "u.gguf": "diffusion_models",
        "mm_sd_v15_v2.ckpt": "animatediff_models",
        "SUPIR-v0Q.ckpt": "checkpoints",
        "sam_vit_b_01ec64.pth": "sams",
        "svdq-int4-zimage.safetensors": "diffusion_models",
    }


def test_any_value_with_a_model_extension_counts(small_index: KnowledgeIndex) -> None:
    wf = one_node(
        "MysteryNode",
        weights="deep\\sub\\thing.pth",
        text="a prompt about x.safetensors",
        negative_hint="embedding:EasyNegative.safetensors",
        image="photo.png",
    )
    manifest = analyze_data(wf, "wf", "wf", index=small_index)
    assert [m.filename for m in manifest.models + manifest.unresolved.models] == ["deep/sub/thing.pth"]


def test_index_gives_folder_and_url_and_fixes_hugging_face_blob_links(small_index: KnowledgeIndex) -> None:
    wf = one_node("MysteryNode", a="known_ckpt.safetensors", b="RealESRGAN_x2.pth")
    models = {m.filename: m for m in analyze_data(wf, "wf", "wf", index=small_index).models}
    # Manager save_path "checkpoints/SD1.5": ComfyUI searches checkpoints/ recursively.
    assert (models["known_ckpt.safetensors"].folder, models["known_ckpt.safetensors"].source) == (
        "checkpoints",
        "index",
    )
    assert models["RealESRGAN_x2.pth"].folder == "upscale_models"
    assert models["RealESRGAN_x2.pth"].url == "https://huggingface.co/x/y/resolve/main/RealESRGAN_x2.pth"


def test_generic_diffusers_names_are_not_looked_up_by_name(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(
        one_node("MysteryNode", a="diffusion_pytorch_model.safetensors"), "wf", "wf", index=small_index
    )
    assert manifest.models == []
    assert manifest.unresolved.models[0].folder is None


def test_node_properties_beat_the_index_and_overrides_beat_both(small_index: KnowledgeIndex) -> None:
    declared = {
        "models": [
            {
                "name": "known_ckpt.safetensors",
                "url": "https://mirror.example/known.safetensors",
                "directory": "diffusion_models",
            }
        ]
    }
    wf = ui_workflow(ui_node(1, "MysteryNode", ["known_ckpt.safetensors"], props=declared))
    [model] = analyze_data(wf, "wf", "wf", index=small_index).models
    assert (model.folder, model.url, model.source) == (
        "diffusion_models",
        "https://mirror.example/known.safetensors",
        "node_properties",
    )

    sha = "a" * 64
    overrides = Overrides.model_validate(
        {
            "models": {
                "known_ckpt.safetensors": {
                    "folder": "loras",
                    "url": "https://mine.example/k.safetensors",
                    "sha256": sha,
                }
            }
        }
    )
    [model] = analyze_data(wf, "wf", "wf", overrides, index=small_index).models
    assert (model.folder, model.url, model.sha256, model.source) == (
        "loras",
        "https://mine.example/k.safetensors",
        sha,
        "override",
    )


def test_links_in_notes_supply_urls(small_index: KnowledgeIndex) -> None:
    wf = ui_workflow(
        ui_node(
            1,
            "MarkdownNote",
            ["Get [it](https://huggingface.co/o/r/resolve/main/split/my_vae.safetensors?download=true)."],
        ),
        ui_node(
            2,
            "VAELoader",
            ["my_vae.safetensors"],
            inputs=[{"name": "vae_name", "widget": {"name": "vae_name"}}],
        ),
    )
    [model] = analyze_data(wf, "wf", "wf", index=small_index).models
    assert (model.folder, model.url) == (
        "vae",
        "https://huggingface.co/o/r/resolve/main/split/my_vae.safetensors",
    )


def test_model_without_url_is_listed_and_flagged(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(
        one_node("CheckpointLoaderSimple", ckpt_name="private.safetensors"), "wf", "wf", index=small_index
    )
    assert [(m.filename, m.folder, m.url) for m in manifest.models] == [
        ("private.safetensors", "checkpoints", None)
    ]
    [flag] = manifest.unresolved.models
    assert flag.folder == "checkpoints" and "no download URL" in flag.reason


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd.safetensors",
        "../../escape.safetensors",
        "a/../../b.ckpt",
        "x;rm -rf ~.safetensors",
        "$(id).pt",
        "C:\\models\\x.safetensors",
        "ok\nname.pt",
    ],
)
def test_unsafe_names_are_reported_never_installed(small_index: KnowledgeIndex, name: str) -> None:
    manifest = analyze_data(one_node("CheckpointLoaderSimple", ckpt_name=name), "wf", "wf", index=small_index)
    assert manifest.models == []
    if "\n" in name:
        # Multi-line values are prose, not file names: nothing to install either way.
        return
    [item] = manifest.unresolved.models
    assert item.filename == name and item.reason.startswith("unsafe model name") and item.node_ids == ["1"]


def test_same_file_from_two_nodes_is_one_entry(small_index: KnowledgeIndex) -> None:
    wf = {
        "1": {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors"}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": "style.safetensors"}},
    }
    [model] = analyze_data(wf, "wf", "wf", index=small_index).models
    assert model.node_ids == ["1", "2"]


def test_weights_a_pack_downloads_itself_are_not_install_targets() -> None:
    """comfyui_controlnet_aux fetches its own annotator weights; they are not models/ files."""
    from comfyfleet.analysis.index import default_index

    wf = {
        "1": {
            "class_type": "DepthAnythingPreprocessor",
            "inputs": {"ckpt_name": "depth_anything_vitl14.pth"},
        },
        "2": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "control_depth.safetensors"}},
    }
    manifest = analyze_data(wf, "wf", "wf", index=default_index())
    assert [m.filename for m in manifest.models] == ["control_depth.safetensors"]
    assert [p.repo for p in manifest.custom_nodes] == ["https://github.com/Fannovel16/comfyui_controlnet_aux"]


def test_pipeline_loaders_without_names_use_file_names_then_checkpoints(small_index: KnowledgeIndex) -> None:
    node = ui_node(
        1,
        "Efficient Loader",
        ["dreamy_mix_v3.safetensors", "Baked VAE", -1, "add_detail_lora.safetensors", 1, 1],
    )
    folders = {
        m.filename: m.folder for m in analyze_data(ui_workflow(node), "wf", "wf", index=small_index).models
    }
    assert folders == {"dreamy_mix_v3.safetensors": "checkpoints", "add_detail_lora.safetensors": "loras"}


@pytest.mark.parametrize(
    ("ctype", "input_name", "filename", "folder"),
    [
        # Folders these packs register themselves (add_model_folder_path in their nodes.py).
        ("CogVideoLoraSelect", "lora", "orbit_left_lora.safetensors", "CogVideo/loras"),
        ("MMAudioModelLoader", "mmaudio_model", "mmaudio_large_44k.safetensors", "mmaudio"),
        ("MMAudioFeatureUtilsLoader", "vae_model", "mmaudio_vae_44k_fp16.safetensors", "mmaudio"),
        ("OnnxDetectionModelLoader", "vitpose_model", "vitpose-l-wholebody.onnx", "detection"),
        # WanVideoWrapper loads its CLIP text encoder from text_encoders.
        ("LoadWanVideoClipTextEncoder", "model_name", "open-clip-xlm-roberta.safetensors", "text_encoders"),
    ],
)
def test_pack_specific_folders_with_or_without_input_names(
    small_index: KnowledgeIndex, ctype: str, input_name: str, filename: str, folder: str
) -> None:
    named = analyze_data(one_node(ctype, **{input_name: filename}), "wf", "wf", index=small_index)
    unnamed = analyze_data(ui_workflow(ui_node(1, ctype, [filename])), "wf", "wf", index=small_index)
    assert [(m.filename, m.folder) for m in named.models] == [(filename, folder)]
    assert [(m.filename, m.folder) for m in unnamed.models] == [(filename, folder)]


@pytest.mark.parametrize(
    ("class_type", "inputs", "expected"),
    [
        # Acly/comfyui-inpaint-nodes registers models/inpaint, .patch included.
        (
            "INPAINT_LoadFooocusInpaint",
            {"head": "fooocus_inpaint_head.pth", "patch": "inpaint_v26.fooocus.patch"},
            {("fooocus_inpaint_head.pth", "inpaint"), ("inpaint_v26.fooocus.patch", "inpaint")},
        ),
        ("INPAINT_LoadInpaintModel", {"model_name": "big-lama.pt"}, {("big-lama.pt", "inpaint")}),
        # Depth-Anything TensorRT reads models/tensorrt/depth-anything.
        (
            "DepthAnythingTensorrt",
            {"engine": "v2_depth_anything_vitl-fp16.engine"},
            {("v2_depth_anything_vitl-fp16.engine", "tensorrt/depth-anything")},
        ),
        # ReActor: swap model in insightface, restorer in facerestore_models.
        (
            "ReActorFaceSwap",
            {"swap_model": "inswapper_128.onnx", "face_restore_model": "codeformer-v0.1.0.pth"},
            {("inswapper_128.onnx", "insightface"), ("codeformer-v0.1.0.pth", "facerestore_models")},
        ),
        # A YOLO name's bbox/ prefix is models/ultralytics/bbox: the folder is ultralytics.
        (
            "UltralyticsDetectorProvider",
            {"model_name": "bbox/face_yolov8m.pt"},
            {("bbox/face_yolov8m.pt", "ultralytics")},
        ),
        (
            "ReActorMaskHelper",
            {"bbox_model_name": "segm/person_yolov8m-seg.pt"},
            {("segm/person_yolov8m-seg.pt", "ultralytics")},
        ),
    ],
)
def test_loader_packs_folders_from_their_own_source(
    small_index: KnowledgeIndex, class_type: str, inputs: dict, expected: set
) -> None:
    manifest = analyze_data(one_node(class_type, **inputs), "wf", "wf", index=small_index)
    assert {(m.filename, m.folder) for m in manifest.models} == expected
    assert not [u for u in manifest.unresolved.models if u.folder is None]


def test_engines_and_onnx_graphs_are_never_placed_by_name_guess(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(
        one_node("SomeTensorrtUpscaler", engine="realesrgan_x4-lora-fp16.engine"),
        "wf",
        "wf",
        index=small_index,
    )
    assert manifest.models == []
    [entry] = manifest.unresolved.models
    assert entry.filename == "realesrgan_x4-lora-fp16.engine" and "which models folder" in entry.reason


def test_index_folder_with_the_value_subfolder_is_not_doubled() -> None:
    """The Manager's model list says ultralytics/bbox for face_yolov8m.pt; the value is bbox/face_yolov8m.pt."""
    from comfyfleet.analysis.index import default_index

    manifest = analyze_data(
        one_node("SomeDetectorLoader", model_name="bbox/face_yolov8m.pt"), "wf", "wf", index=default_index()
    )
    assert [(m.filename, m.folder) for m in manifest.models] == [("bbox/face_yolov8m.pt", "ultralytics")]


def test_a_folder_guessed_from_names_is_never_silent(small_index: KnowledgeIndex) -> None:
    """The file is listed where the guess puts it, and flagged so --strict fails until a person confirms."""
    manifest = analyze_data(
        one_node("SomeOddLoader", weights="my_style_lora_v2.safetensors"), "wf", "wf", index=small_index
    )
    assert [(m.filename, m.folder, m.source) for m in manifest.models] == [
        ("my_style_lora_v2.safetensors", "loras", "heuristic")
    ]
    [entry] = manifest.unresolved.models
    assert entry.folder == "loras" and "is a guess" in entry.reason and "no download URL" in entry.reason
    confirmed = Overrides.model_validate(
        {
            "models": {
                "my_style_lora_v2.safetensors": {
                    "folder": "loras",
                    "url": "https://example.org/x.safetensors",
                }
            }
        }
    )
    again = analyze_data(
        one_node("SomeOddLoader", weights="my_style_lora_v2.safetensors"),
        "wf",
        "wf",
        confirmed,
        index=small_index,
    )
    assert again.models[0].source == "override" and not again.unresolved.models
