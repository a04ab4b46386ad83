"""Hand-kept knowledge the public data does not carry: which values name model files and where they go.

Everything here is a fallback below the strongest sources (overrides, the node's own
``properties.models``, and what the generated index learned from real workflows). The
tables are written from ComfyUI's folder_paths and the loader inputs of widely used node
packs; keep them small and obvious so a reviewer can check each line.
"""

from __future__ import annotations

import re

# Extensions of files ComfyUI and node packs load from models/<folder>/.
MODEL_EXTENSIONS = (
    ".safetensors",
    ".ckpt",
    ".pt",
    ".pth",
    ".bin",
    ".gguf",
    ".sft",
    ".onnx",
    ".pt2",
    ".pkl",
    ".engine",
    ".patch",  # Fooocus inpaint patches (Acly/comfyui-inpaint-nodes registers .patch for models/inpaint)
)

# TensorRT engines and ONNX graphs live in folders each pack picks itself: only a rule for
# the (class, input) that loads them places them, never a guess from the file's name.
NO_NAME_GUESS_EXTENSIONS = (".engine", ".onnx", ".patch")

# Nodes that exist only in the web frontend: never sent to the server, so never a dependency.
FRONTEND_ONLY = frozenset(
    {
        "Note",
        "MarkdownNote",
        "Reroute",
        "PrimitiveNode",
        "Label",
        "Comfy.GroupNode",
        # KJNodes' Set/Get and rgthree's helpers are virtual: the frontend resolves them away.
        "SetNode",
        "GetNode",
        "Fast Groups Bypasser (rgthree)",
        "Fast Groups Muter (rgthree)",
        "Fast Bypasser (rgthree)",
        "Fast Muter (rgthree)",
        "Fast Actions Button (rgthree)",
        "Bookmark (rgthree)",
        "Label (rgthree)",
        "Reroute (rgthree)",
        "Node Combiner (rgthree)",
        "Note Plus (mtb)",
    }
)

# A subgraph instance's type is the UUID of its definition in definitions.subgraphs.
SUBGRAPH_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

MODE_MUTED = 2
MODE_BYPASSED = 4

# Input names that say which models folder a value belongs in, whatever the node.
INPUT_NAME_FOLDERS: dict[str, str] = {
    "ckpt_name": "checkpoints",
    "checkpoint": "checkpoints",
    "checkpoint_name": "checkpoints",
    "lora_name": "loras",
    "lora": "loras",
    "lora_01": "loras",
    "lora_02": "loras",
    "lora_03": "loras",
    "lora_04": "loras",
    "unet_name": "diffusion_models",
    "diffusion_model": "diffusion_models",
    "vae_name": "vae",
    "vae": "vae",
    "clip_name": "text_encoders",
    "clip_name1": "text_encoders",
    "clip_name2": "text_encoders",
    "clip_name3": "text_encoders",
    "clip_name4": "text_encoders",
    "text_encoder": "text_encoders",
    "text_encoder1": "text_encoders",
    "text_encoder2": "text_encoders",
    "t5_model": "text_encoders",
    "control_net_name": "controlnet",
    "controlnet_name": "controlnet",
    "controlnet_path": "controlnet",
    "style_model_name": "style_models",
    "clip_vision": "clip_vision",
    "clip_vision_name": "clip_vision",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
    "upscale_model": "upscale_models",
    "upscale_model_name": "upscale_models",
    "ipadapter_file": "ipadapter",
    "ipadapter": "ipadapter",
    "embedding": "embeddings",
    "photomaker_model_name": "photomaker",
    "audio_encoder_name": "audio_encoders",
    "model_patch_name": "model_patches",
    "vae_approx": "vae_approx",
    "instantid_file": "instantid",
    "pulid_file": "pulid",
    "sam_model": "sams",
    "sam_model_name": "sams",
    "motion_model": "animatediff_models",
    # Impact Pack / ReActor detectors: "bbox/x.pt" and "segm/x.pt" under models/ultralytics
    "bbox_model_name": "ultralytics",
    "segm_model_name": "ultralytics",
    "face_restore_model": "facerestore_models",
}

# Generic input names ("model_name", "model", "name") get their folder from the node's class.
# Checked in order; first match wins. Patterns are matched against the class type.
CLASS_NAME_FOLDERS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), folder)
    for p, folder in (
        (r"upscal", "upscale_models"),
        (r"animatediff|^ADE_", "animatediff_models"),
        (r"lora", "loras"),
        (r"ipadapter", "ipadapter"),
        (r"controlnet|control_net", "controlnet"),
        (r"clipvision|clip_vision", "clip_vision"),
        (r"vae", "vae"),
        (r"checkpoint|ckpt", "checkpoints"),
        (r"ultralytics|yolo", "ultralytics"),
        (r"(?-i:SAM)(?![a-z])|sam2|samloader|segment_?anything", "sams"),
        (r"insightface", "insightface"),
        (r"clip|textencoder|text_encoder|t5", "text_encoders"),
        (r"gguf", "diffusion_models"),
        (r"unet|diffusion|dit\b|ditloader|modelloader|model_loader", "diffusion_models"),
    )
)

# Loaders of a whole pipeline (checkpoint + vae + lora in one node): when the input name
# is unknown, the file name decides, and a bare name is most likely the checkpoint.
MULTI_MODEL_LOADERS = re.compile(
    r"efficient loader|eff\. loader|^easy \w*loader|pipe ?loader|loader ?pipe", re.IGNORECASE
)

# Custom node packs' loaders whose input names are too generic for the rules above.
# (class type, input name) -> folder. Learned pairs in the index take precedence.
CLASS_INPUT_FOLDERS: dict[tuple[str, str], str] = {
    # kijai/ComfyUI-WanVideoWrapper
    ("WanVideoModelLoader", "model"): "diffusion_models",
    ("WanVideoVAELoader", "model_name"): "vae",
    ("WanVideoTinyVAELoader", "model_name"): "vae_approx",
    ("LoadWanVideoT5TextEncoder", "model_name"): "text_encoders",
    ("LoadWanVideoClipTextEncoder", "model_name"): "text_encoders",
    ("WanVideoLoraSelect", "lora"): "loras",
    ("WanVideoLoraSelectMulti", "lora_0"): "loras",
    ("WanVideoVACEModelSelect", "vace_model"): "diffusion_models",
    ("WanVideoExtraModelSelect", "extra_model"): "diffusion_models",
    # kijai/ComfyUI-HunyuanVideoWrapper, CogVideoX, FramePack, KJNodes
    ("HyVideoModelLoader", "model"): "diffusion_models",
    ("HyVideoVAELoader", "model_name"): "vae",
    ("HyVideoLoraSelect", "lora"): "loras",
    ("LoadFramePackModel", "model"): "diffusion_models",
    ("DiffusionModelLoaderKJ", "model_name"): "diffusion_models",
    ("DiffusionModelSelector", "model_name"): "diffusion_models",
    ("CheckpointLoaderKJ", "ckpt_name"): "checkpoints",
    ("VAELoaderKJ", "vae_name"): "vae",
    ("CLIPLoaderKJ", "clip_name"): "text_encoders",
    # kijai/ComfyUI-CogVideoXWrapper and ComfyUI-MMAudio register folders of their own
    # (add_model_folder_path: models/CogVideo/loras, models/mmaudio).
    ("CogVideoLoraSelect", "lora"): "CogVideo/loras",
    ("MMAudioModelLoader", "mmaudio_model"): "mmaudio",
    ("MMAudioFeatureUtilsLoader", "vae_model"): "mmaudio",
    ("MMAudioFeatureUtilsLoader", "synchformer_model"): "mmaudio",
    ("MMAudioFeatureUtilsLoader", "clip_model"): "mmaudio",
    ("MMAudioVoCoderLoader", "vocoder_model"): "mmaudio",
    # kijai/ComfyUI-WanAnimatePreprocess: ONNX pose/detection models in models/detection
    ("OnnxDetectionModelLoader", "vitpose_model"): "detection",
    ("OnnxDetectionModelLoader", "yolo_model"): "detection",
    # cubiq
    ("IPAdapterModelLoader", "ipadapter_file"): "ipadapter",
    ("InstantIDModelLoader", "instantid_file"): "instantid",
    ("PulidModelLoader", "pulid_file"): "pulid",
    # Kosinkadink
    ("ADE_LoadAnimateDiffModel", "model_name"): "animatediff_models",
    ("ADE_AnimateDiffLoaderGen1", "model_name"): "animatediff_models",
    ("ADE_AnimateDiffLoaderWithContext", "model_name"): "animatediff_models",
    ("AnimateDiffLoaderV1", "model_name"): "animatediff_models",
    ("ADE_AnimateDiffLoRALoader", "name"): "animatediff_motion_lora",
    ("ACN_SparseCtrlLoaderAdvanced", "sparsectrl_name"): "controlnet",
    ("ControlNetLoaderAdvanced", "control_net_name"): "controlnet",
    # Acly/comfyui-inpaint-nodes: _add_folder_path("inpaint", [..., ".patch"])
    ("INPAINT_LoadFooocusInpaint", "head"): "inpaint",
    ("INPAINT_LoadFooocusInpaint", "patch"): "inpaint",
    ("INPAINT_LoadInpaintModel", "model_name"): "inpaint",
    # yuvraj108c/ComfyUI-Depth-Anything-Tensorrt: ENGINE_DIR = models/tensorrt/depth-anything
    ("DepthAnythingTensorrt", "engine"): "tensorrt/depth-anything",
    ("DepthAnythingTensorrtAdvanced", "engine"): "tensorrt/depth-anything",
    # Gourieff/ComfyUI-ReActor: swap models in models/insightface, restorers in
    # models/facerestore_models, face models in models/reactor/faces
    ("ReActorFaceSwap", "swap_model"): "insightface",
    ("ReActorFaceSwapOpt", "swap_model"): "insightface",
    ("ReActorFaceSwap", "face_restore_model"): "facerestore_models",
    ("ReActorFaceSwapOpt", "face_restore_model"): "facerestore_models",
    ("ReActorRestoreFace", "model"): "facerestore_models",
    ("ReActorRestoreFaceAdvanced", "model"): "facerestore_models",
    ("ReActorFaceBoost", "boost_model"): "facerestore_models",
    ("ReActorLoadFaceModel", "face_model"): "reactor/faces",
    ("ReActorMaskHelper", "bbox_model_name"): "ultralytics",
    ("ReActorMaskHelper", "sam_model_name"): "sams",
    # ltdrdata (Impact Subpack): values are "bbox/<file>" or "segm/<file>" under models/ultralytics
    ("UltralyticsDetectorProvider", "model_name"): "ultralytics",
    ("SAMLoader", "model_name"): "sams",
    ("ONNXDetectorProvider", "model_name"): "onnx",
    # city96/ComfyUI-GGUF
    ("UnetLoaderGGUF", "unet_name"): "diffusion_models",
    ("UnetLoaderGGUFAdvanced", "unet_name"): "diffusion_models",
    ("CLIPLoaderGGUF", "clip_name"): "text_encoders",
    ("DualCLIPLoaderGGUF", "clip_name1"): "text_encoders",
    ("DualCLIPLoaderGGUF", "clip_name2"): "text_encoders",
    ("TripleCLIPLoaderGGUF", "clip_name1"): "text_encoders",
    ("TripleCLIPLoaderGGUF", "clip_name2"): "text_encoders",
    ("TripleCLIPLoaderGGUF", "clip_name3"): "text_encoders",
    # XLabs-AI/x-flux-comfyui
    ("LoadFluxControlNet", "controlnet_path"): "xlabs/controlnets",
    ("FluxLoraLoader", "lora_name"): "xlabs/loras",
    ("LoadFluxIPAdapter", "ipadatper"): "xlabs/ipadapters",
    # mit-han-lab/ComfyUI-nunchaku
    ("NunchakuFluxDiTLoader", "model_path"): "diffusion_models",
    ("NunchakuQwenImageDiTLoader", "model_name"): "diffusion_models",
    ("NunchakuTextEncoderLoader", "text_encoder1"): "text_encoders",
    ("NunchakuTextEncoderLoader", "text_encoder2"): "text_encoders",
    ("NunchakuTextEncoderLoaderV2", "text_encoder1"): "text_encoders",
    ("NunchakuTextEncoderLoaderV2", "text_encoder2"): "text_encoders",
    ("NunchakuFluxLoraLoader", "lora_name"): "loras",
    # Lightricks/ComfyUI-LTXVideo
    ("LTXVLoader", "ckpt_name"): "checkpoints",
    ("LTXVLatentUpsamplerModelLoader", "upscale_model"): "upscale_models",
    # rgthree Power Lora Loader rows are dicts {on, lora, strength}
    ("Power Lora Loader (rgthree)", "lora"): "loras",
    ("LoadFluxIPAdapter", "clip_vision"): "clip_vision",
    # numz/ComfyUI-SeedVR2_VideoUpscaler
    ("SeedVR2LoadDiTModel", "model"): "SEEDVR2",
    ("SeedVR2LoadVAEModel", "model"): "SEEDVR2",
    # kijai/ComfyUI-KJNodes GGUF loader
    ("GGUFLoaderKJ", "model_name"): "diffusion_models",
    # kijai/ComfyUI-SUPIR keeps SUPIR weights with the checkpoints
    ("SUPIR_model_loader", "supir_model"): "checkpoints",
    ("SUPIR_model_loader_v2", "supir_model"): "checkpoints",
    ("SUPIR_model_loader_v2_clip", "supir_model"): "checkpoints",
    # Lightricks/ComfyUI-LTXVideo
    ("LTXVGemmaCLIPModelLoader", "gemma_path"): "text_encoders",
    ("LTXVGemmaCLIPModelLoader", "ltxv_path"): "checkpoints",
}

# Packs published only on the Comfy Registry, which ComfyUI-Manager's git-based lists
# (custom-node-list / extension-node-map in its PyPI wheel) do not carry, so no class of
# theirs can be resolved from that data. Kept to widely used packs of the big authors;
# repo -> a nodename_pattern over their class names (read from each repo's
# NODE_CLASS_MAPPINGS). The index builder adds them unless the Manager data knows the repo.
REGISTRY_ONLY_PACKS: dict[str, str] = {
    "https://github.com/kijai/ComfyUI-Hunyuan3DWrapper": (
        r"^(Hy3D|DownloadAndLoadHy3D)|^(CV2InpaintTexture|MESHToTrimesh|TrimeshToMESH)$"
    ),
    "https://github.com/kijai/ComfyUI-MMAudio": r"^MMAudio",
    "https://github.com/kijai/ComfyUI-MochiWrapper": r"^(Mochi|DownloadAndLoadMochiModel$)",
    "https://github.com/kijai/ComfyUI-FramePackWrapper": (
        r"^(FramePack(Sampler|SingleFrameSampler|FindNearestBucket|LoraSelect|TorchCompileSettings)"
        r"|LoadFramePackModel|DownloadAndLoadFramePackModel)$"
    ),
    "https://github.com/kijai/ComfyUI-WanAnimatePreprocess": (
        r"^(DrawViTPose|OnnxDetectionModelLoader|PoseAndFaceDetection|PoseDetectionOneToAllAnimation"
        r"|PoseRetargetPromptHelper)$"
    ),
}

CLASS_FOLDERS: dict[str, set[str]] = {}
for (_class, _input), _folder in CLASS_INPUT_FOLDERS.items():
    CLASS_FOLDERS.setdefault(_class, set()).add(_folder)

# Filename hints, last resort when neither input nor class says anything.
FILENAME_FOLDERS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), folder)
    for p, folder in (
        (r"lora", "loras"),
        (r"controlnet|control_|cn-|union", "controlnet"),
        (r"esrgan|upscal|^\d+x[-_]|_x\d\b|swinir|nmkd", "upscale_models"),
        (r"clip_vision|clipvision|image_encoder|siglip", "clip_vision"),
        (r"(^|[-_/])vae|taesd|[-_]ae\.", "vae"),
        (r"t5|umt5|clip_[lg]|llava|qwen.*vl|text_encoder|gemma|llama", "text_encoders"),
        (r"ip-?adapter", "ipadapter"),
        (r"yolo|face_yolo|person_yolo", "ultralytics"),
        (r"^sam_|sam2", "sams"),
        (r"mm_sd|motion|animatediff", "animatediff_models"),
    )
)


# Old folder names ComfyUI still reads, mapped to the names it writes today.
LEGACY_FOLDERS = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}

# Manager model-list entries with save_path "default" go where their type says.
MANAGER_TYPE_FOLDERS = {
    "checkpoint": "checkpoints",
    "checkpoints": "checkpoints",
    "unclip": "checkpoints",
    "clip": "text_encoders",
    "text_encoders": "text_encoders",
    "vae": "vae",
    "lora": "loras",
    "t2i-adapter": "controlnet",
    "t2i-style": "style_models",
    "controlnet": "controlnet",
    "clip_vision": "clip_vision",
    "gligen": "gligen",
    "upscale": "upscale_models",
    "embedding": "embeddings",
    "embeddings": "embeddings",
    "unet": "diffusion_models",
    "diffusion_model": "diffusion_models",
    "taesd": "vae_approx",
}


# Folders ComfyUI (and the big packs) search recursively: a file in a subfolder of one of
# them is referenced as "sub/name", so the install target is the top folder.
RECURSIVE_ROOTS = frozenset(
    {
        "checkpoints",
        "loras",
        "vae",
        "text_encoders",
        "diffusion_models",
        "controlnet",
        "clip_vision",
        "style_models",
        "embeddings",
        "upscale_models",
        "latent_upscale_models",
        "gligen",
        "hypernetworks",
        "photomaker",
        "model_patches",
        "audio_encoders",
        "vae_approx",
        "ipadapter",
        "animatediff_models",
        "animatediff_motion_lora",
        "sams",
        "ultralytics",
        "configs",
        "instantid",
        "pulid",
        "facerestore_models",
        "inpaint",
    }
)

# Names so common (Hugging Face diffusers layout) that the name alone says nothing.
GENERIC_FILENAMES = re.compile(
    r"^(diffusion_pytorch_model|pytorch_model|model|pytorch_lora_weights|adapter_model|weights)"
    r"([-.]\d+-of-\d+)?(\.fp16|\.bf16)?\.(safetensors|bin|pt|pth|ckpt)$",
    re.IGNORECASE,
)


def install_folder(folder: str) -> str:
    """Where a file goes: the top folder when ComfyUI searches it recursively."""
    folder = canonical_folder(folder)
    head = folder.split("/", 1)[0]
    return head if head in RECURSIVE_ROOTS else folder


def folder_without_name_prefix(folder: str, filename: str) -> str:
    """The folder a value's own subfolder is not repeated in: ("ultralytics/bbox", "bbox/x.pt") -> "ultralytics".

    Impact Pack lists YOLO models as "bbox/x.pt" for the file models/ultralytics/bbox/x.pt; a
    folder that already ends in that subfolder would put it at ultralytics/bbox/bbox/x.pt.
    """
    sub = filename.rsplit("/", 1)[0] if "/" in filename else ""
    if sub and folder.endswith("/" + sub):
        return folder[: -len(sub) - 1]
    return folder


def canonical_folder(folder: str) -> str:
    """Today's name for a models folder ('clip' -> 'text_encoders'), '/' separated."""
    folder = folder.strip("/").replace("\\", "/")
    head, _, rest = folder.partition("/")
    head = LEGACY_FOLDERS.get(head, head)
    return f"{head}/{rest}" if rest else head


# Words inside longer input names ("lora_1_name", "hires_ckpt_name", "controlnet_2").
INPUT_WORD_FOLDERS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), folder)
    for p, folder in (
        (r"lora", "loras"),
        (r"ckpt|checkpoint", "checkpoints"),
        (r"control_?net", "controlnet"),
        (r"upscale_model", "upscale_models"),
        (r"clip_?vision", "clip_vision"),
        (r"clip_name|text_encoder|t5", "text_encoders"),
        (r"vae", "vae"),
        (r"unet|diffusion_model", "diffusion_models"),
        (r"ipadapter", "ipadapter"),
    )
)


def folder_for_input(input_name: str | None) -> str | None:
    """Folder named by an input alone (ckpt_name, lora_name, clip_name2, lora_1_name ...), or None."""
    if not input_name:
        return None
    folder = INPUT_NAME_FOLDERS.get(input_name)
    if folder:
        return folder
    # Stacked loaders name inputs lora_1, lora_name_2, clip_name5 ...
    base = re.sub(r"[_ ]?\d+$", "", input_name)
    if base in INPUT_NAME_FOLDERS:
        return INPUT_NAME_FOLDERS[base]
    for pattern, folder in INPUT_WORD_FOLDERS:
        if pattern.search(input_name):
            return folder
    return None


def folder_for_class(class_type: str) -> str | None:
    """Folder guessed from a loader's class name, for generic input names."""
    for pattern, folder in CLASS_NAME_FOLDERS:
        if pattern.search(class_type):
            return folder
    return None


def folder_for_filename(filename: str) -> str | None:
    """Folder guessed from words in the file name itself (never for engines, ONNX graphs, patches)."""
    if filename.lower().endswith(NO_NAME_GUESS_EXTENSIONS):
        return None
    for pattern, folder in FILENAME_FOLDERS:
        if pattern.search(filename):
            return folder
    return None


def looks_like_model_file(value: str) -> bool:
    """True for strings that end in a model file extension."""
    return len(value) < 1024 and value.lower().endswith(MODEL_EXTENSIONS)


def download_url(url: str) -> str:
    """The direct-download form of a model URL.

    Hugging Face "blob" links are HTML pages; "resolve" links serve the file. The
    "?download=true" query some pages add changes nothing for a downloader.
    """
    url = url.strip()
    if url.startswith(("https://huggingface.co/", "https://hf.co/")):
        url = url.replace("/blob/", "/resolve/", 1)
        base, _, query = url.partition("?")
        kept = [p for p in query.split("&") if p and p != "download=true"]
        url = base + ("?" + "&".join(kept) if kept else "")
    return url
