"""Core node classes of the stand-in: ComfyUI's inputs and outputs, fake model work, real image files.

Loaders check that their model file exists and hand on a description of it; samplers and
decoders produce solid-colour images whose colour follows the seed, so different inputs
give different files. SaveImage and PreviewImage write real PNGs the way ComfyUI names them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct

import folder_paths
from comfy import model_management
from comfy.samplers import KSampler as _Samplers
from comfy.utils import ProgressBar
from standin_image import Image, decode_png, encode_png

MAX_RESOLUTION = 16384


def _colour_of(*parts: object) -> int:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:3], "big")


def _model(folder: str, name: str) -> dict:
    path = folder_paths.get_full_path_or_raise(folder, name)
    return {"folder": folder, "name": name, "path": path}


class CheckpointLoaderSimple:
    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "ckpt_name": (
                    folder_paths.get_filename_list("checkpoints"),
                    {"tooltip": "The name of the checkpoint (model) to load."},
                ),
            }
        }

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"
    DESCRIPTION = "Loads a diffusion model checkpoint."

    def load_checkpoint(self, ckpt_name):
        m = _model("checkpoints", ckpt_name)
        return ({"model": m}, {"clip": m}, {"vae": m})


class CLIPTextEncode:
    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "text": (
                    "STRING",
                    {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."},
                ),
                "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    def encode(self, clip, text):
        if clip is None:
            raise RuntimeError("ERROR: clip input is invalid: None")
        return ([{"text": text, "clip": clip}],)


class EmptyLatentImage:
    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "width": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                "height": ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent"

    def generate(self, width, height, batch_size=1):
        return (
            {"samples": {"batch": batch_size, "width": width, "height": height, "colours": [0] * batch_size}},
        )


class KSampler:
    STANDIN_OWN_DELAY = True

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "model": ("MODEL",),
                "seed": (
                    "INT",
                    {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True},
                ),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (_Samplers.SAMPLERS,),
                "scheduler": (_Samplers.SCHEDULERS,),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "sampling"

    def sample(
        self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0
    ):
        delay = float(os.environ.get("COMFYUI_STANDIN_NODE_DELAY", "0") or 0)
        pbar = ProgressBar(steps)
        for _ in range(steps):
            if delay:
                model_management.interruptible_sleep(delay / steps)
            else:
                model_management.throw_exception_if_processing_interrupted()
            pbar.update(1)
        s = dict(latent_image["samples"])
        texts = [c.get("text") for c in positive + negative]
        s["colours"] = [
            _colour_of(seed + i, steps, cfg, sampler_name, scheduler, texts, denoise, model["model"]["name"])
            for i in range(s["batch"])
        ]
        return ({"samples": s},)


class VAELoader:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"vae_name": (folder_paths.get_filename_list("vae"),)}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"
    CATEGORY = "loaders"

    def load_vae(self, vae_name):
        return ({"vae": _model("vae", vae_name)},)


class VAEDecode:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "latent"

    def decode(self, vae, samples):
        s = samples["samples"]
        return ([Image.solid(s["width"], s["height"], c) for c in s["colours"]],)


class VAEEncode:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "latent"

    def encode(self, vae, pixels):
        colours = [_colour_of(hashlib.sha256(p.rgb).hexdigest()) for p in pixels]
        return (
            {
                "samples": {
                    "batch": len(pixels),
                    "width": pixels[0].width,
                    "height": pixels[0].height,
                    "colours": colours,
                }
            },
        )


class LoraLoader:
    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "lora_name": (folder_paths.get_filename_list("loras"),),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
                "strength_clip": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "load_lora"
    CATEGORY = "loaders"

    def load_lora(self, model, clip, lora_name, strength_model, strength_clip):
        lora = _model("loras", lora_name)
        return (
            {"model": {**model["model"], "name": model["model"]["name"] + "+" + lora_name}, "lora": lora},
            clip,
        )


class UNETLoader:
    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "unet_name": (folder_paths.get_filename_list("diffusion_models"),),
                "weight_dtype": (["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "advanced/loaders"

    def load_unet(self, unet_name, weight_dtype):
        return ({"model": _model("diffusion_models", unet_name)},)


_CLIP_TYPES = [
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
    "flux2",
    "ovis",
]


class CLIPLoader:
    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "clip_name": (folder_paths.get_filename_list("text_encoders"),),
                "type": (_CLIP_TYPES,),
            },
            "optional": {"device": (["default", "cpu"], {"advanced": True})},
        }

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"

    def load_clip(self, clip_name, type="stable_diffusion", device="default"):
        return ({"clip": _model("text_encoders", clip_name)},)


class DualCLIPLoader:
    @classmethod
    def INPUT_TYPES(s):
        names = folder_paths.get_filename_list("text_encoders")
        return {
            "required": {
                "clip_name1": (names,),
                "clip_name2": (names,),
                "type": (
                    [
                        "sdxl",
                        "sd3",
                        "flux",
                        "hunyuan_video",
                        "hidream",
                        "hunyuan_image",
                        "hunyuan_video_15",
                        "kandinsky5",
                        "kandinsky5_image",
                    ],
                ),
            },
            "optional": {"device": (["default", "cpu"], {"advanced": True})},
        }

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "advanced/loaders"

    def load_clip(self, clip_name1, clip_name2, type, device="default"):
        return ({"clip": [_model("text_encoders", clip_name1), _model("text_encoders", clip_name2)]},)


class UpscaleModelLoader:
    # A newer-style node: its COMBO comes in the ["COMBO", {"options": [...]}] spelling.
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_upscale_model"

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "model_name": (
                    "COMBO",
                    {"multiselect": False, "options": folder_paths.get_filename_list("upscale_models")},
                ),
            }
        }

    RETURN_TYPES = ("UPSCALE_MODEL",)
    FUNCTION = "load_model"
    CATEGORY = "loaders"

    def load_model(self, model_name):
        return ({"upscale_model": _model("upscale_models", model_name), "scale": 2},)


class ImageUpscaleWithModel:
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_upscale_model"

    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"upscale_model": ("UPSCALE_MODEL",), "image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, upscale_model, image):
        k = upscale_model["scale"]
        return ([i.resized(i.width * k, i.height * k) for i in image],)


class EmptyImage:
    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = "image"

    def generate(self, width, height, batch_size=1, color=0):
        img = Image.solid(width, height, color)
        return ([img] * batch_size,)


class ImageScale:
    upscale_methods = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    crop_methods = ["disabled", "center"]

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (s.upscale_methods,),
                "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "crop": (s.crop_methods,),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method, width, height, crop):
        out = []
        for i in image:
            w = width or max(1, round(i.width * height / i.height))
            h = height or max(1, round(i.height * width / i.width))
            out.append(i.resized(w, h))
        return (out,)


class ImageScaleBy:
    upscale_methods = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (s.upscale_methods,),
                "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method, scale_by):
        return (
            [i.resized(max(1, round(i.width * scale_by)), max(1, round(i.height * scale_by))) for i in image],
        )


class ImageInvert:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"
    CATEGORY = "image"

    def invert(self, image):
        return ([i.inverted() for i in image],)


class LoadImage:
    @classmethod
    def INPUT_TYPES(s):
        input_dir = folder_paths.get_input_directory()
        files = (
            [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
            if os.path.isdir(input_dir)
            else []
        )
        files = folder_paths.filter_files_content_types(files, ["image"])
        return {"required": {"image": (sorted(files), {"image_upload": True})}}

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    def load_image(self, image):
        path = folder_paths.get_annotated_filepath(image)
        with open(path, "rb") as f:
            img = decode_png(f.read())
        return ([img], {"mask": (img.width, img.height)})

    @classmethod
    def IS_CHANGED(s, image):
        path = folder_paths.get_annotated_filepath(image)
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    @classmethod
    def VALIDATE_INPUTS(s, image):
        if not folder_paths.exists_annotated_filepath(image):
            return f"Invalid image file: {image}"
        return True


class SaveImage:
    def __init__(self):
        self.output_dir = folder_paths.get_output_directory()
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": (
                    "STRING",
                    {"default": "ComfyUI", "tooltip": "The prefix for the file to save."},
                ),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        filename_prefix += self.prefix_append
        full_output_folder, filename, counter, subfolder, filename_prefix = folder_paths.get_save_image_path(
            filename_prefix, self.output_dir, images[0].width, images[0].height
        )
        results = []
        for batch_number, image in enumerate(images):
            text = {}
            if prompt is not None:
                text["prompt"] = json.dumps(prompt)
            for k, v in (extra_pnginfo or {}).items():
                text[k] = json.dumps(v)
            name = filename.replace("%batch_num%", str(batch_number))
            file = f"{name}_{counter:05}_.png"
            with open(os.path.join(full_output_folder, file), "wb") as f:
                f.write(encode_png(image, text, self.compress_level))
            results.append({"filename": file, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    def __init__(self):
        self.output_dir = folder_paths.get_temp_directory()
        self.type = "temp"
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {"images": ("IMAGE",)},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }


class SaveLatent:
    """Writes a (tiny) .latent safetensors file: an output that is not an image."""

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "samples": ("LATENT",),
                "filename_prefix": ("STRING", {"default": "latents/ComfyUI"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "_for_testing"

    def save(self, samples, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        out_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        file = f"{filename}_{counter:05}_.latent"
        header = json.dumps({"__metadata__": {"samples": json.dumps(samples["samples"])}}).encode()
        with open(os.path.join(folder, file), "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
        return {"ui": {"latents": [{"filename": file, "subfolder": subfolder, "type": "output"}]}}


NODE_CLASS_MAPPINGS = {
    "CheckpointLoaderSimple": CheckpointLoaderSimple,
    "CLIPTextEncode": CLIPTextEncode,
    "EmptyLatentImage": EmptyLatentImage,
    "KSampler": KSampler,
    "VAELoader": VAELoader,
    "VAEDecode": VAEDecode,
    "VAEEncode": VAEEncode,
    "LoraLoader": LoraLoader,
    "UNETLoader": UNETLoader,
    "CLIPLoader": CLIPLoader,
    "DualCLIPLoader": DualCLIPLoader,
    "UpscaleModelLoader": UpscaleModelLoader,
    "ImageUpscaleWithModel": ImageUpscaleWithModel,
    "EmptyImage": EmptyImage,
    "ImageScale": ImageScale,
    "ImageScaleBy": ImageScaleBy,
    "ImageInvert": ImageInvert,
    "LoadImage": LoadImage,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "SaveLatent": SaveLatent,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CheckpointLoaderSimple": "Load Checkpoint",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "EmptyLatentImage": "Empty Latent Image",
    "VAELoader": "Load VAE",
    "VAEDecode": "VAE Decode",
    "VAEEncode": "VAE Encode",
    "LoraLoader": "Load LoRA",
    "UNETLoader": "Load Diffusion Model",
    "CLIPLoader": "Load CLIP",
    "DualCLIPLoader": "DualCLIPLoader",
    "UpscaleModelLoader": "Load Upscale Model",
    "ImageUpscaleWithModel": "Upscale Image (using Model)",
    "EmptyImage": "EmptyImage",
    "ImageScale": "Upscale Image",
    "ImageScaleBy": "Upscale Image By",
    "ImageInvert": "Invert Image",
    "LoadImage": "Load Image",
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
}

EXTENSION_WEB_DIRS: dict[str, str] = {}
LOADED_MODULE_DIRS: dict[str, str] = {}


def load_custom_node(module_path: str, module_parent: str = "custom_nodes") -> bool:
    """Import one custom node pack and merge its NODE_CLASS_MAPPINGS; False (logged) when it fails."""
    import importlib.util
    import logging
    import sys
    import traceback

    module_name = os.path.basename(module_path)
    if os.path.isfile(module_path):
        module_name = os.path.splitext(module_name)[0]
        spec = importlib.util.spec_from_file_location(module_name, module_path)
    else:
        spec = importlib.util.spec_from_file_location(
            module_name, os.path.join(module_path, "__init__.py"), submodule_search_locations=[module_path]
        )
    try:
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        LOADED_MODULE_DIRS[module_name] = os.path.abspath(module_path)
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        if mappings is None:
            logging.warning(
                f"Skip {module_path} module for custom nodes due to the lack of NODE_CLASS_MAPPINGS."
            )
            return False
        for name, cls in mappings.items():
            if name not in NODE_CLASS_MAPPINGS:
                cls.RELATIVE_PYTHON_MODULE = f"{module_parent}.{module_name}"
                NODE_CLASS_MAPPINGS[name] = cls
        NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
        return True
    except Exception as e:
        logging.warning(traceback.format_exc())
        logging.warning(f"Cannot import {module_path} module for custom nodes: {e}")
        return False


def init_external_custom_nodes() -> None:
    """Load every pack in the custom_nodes folders, then log ComfyUI's import-times summary."""
    import logging
    import time

    times = []
    for custom_node_path in folder_paths.get_folder_paths("custom_nodes"):
        if not os.path.isdir(custom_node_path):
            continue
        for possible in sorted(os.listdir(custom_node_path)):
            module_path = os.path.join(custom_node_path, possible)
            if os.path.isfile(module_path) and os.path.splitext(module_path)[1] != ".py":
                continue
            if module_path.endswith(".disabled") or possible == "__pycache__" or possible.startswith("."):
                continue
            if os.path.isdir(module_path) and not os.path.isfile(os.path.join(module_path, "__init__.py")):
                continue
            start = time.perf_counter()
            ok = load_custom_node(module_path)
            times.append((time.perf_counter() - start, module_path, ok))
    if times:
        logging.info("\nImport times for custom nodes:")
        for t, path, ok in sorted(times):
            logging.info("{:6.1f} seconds{}: {}".format(t, "" if ok else " (IMPORT FAILED)", path))
        logging.info("")
