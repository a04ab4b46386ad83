"""Where the stand-in keeps models, inputs and outputs; the same names as ComfyUI's folder_paths.

Custom node packs import this module as they would in real ComfyUI, so the public
functions (get_filename_list, get_full_path, get_output_directory, ...) keep their names.
"""

from __future__ import annotations

import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

base_path = os.path.dirname(os.path.realpath(__file__))
models_dir = os.path.join(base_path, "models")
output_directory = os.path.join(base_path, "output")
temp_directory = os.path.join(base_path, "temp")
input_directory = os.path.join(base_path, "input")
user_directory = os.path.join(base_path, "user")

folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}

# Folders and the extensions ComfyUI lists in them (empty set = every file).
_FOLDERS: list[tuple[str, list[str], set[str]]] = [
    ("checkpoints", ["checkpoints"], supported_pt_extensions),
    ("configs", ["configs"], {".yaml"}),
    ("loras", ["loras"], supported_pt_extensions),
    ("vae", ["vae"], supported_pt_extensions),
    ("text_encoders", ["text_encoders", "clip"], supported_pt_extensions),
    ("diffusion_models", ["unet", "diffusion_models"], supported_pt_extensions),
    ("clip_vision", ["clip_vision"], supported_pt_extensions),
    ("style_models", ["style_models"], supported_pt_extensions),
    ("embeddings", ["embeddings"], supported_pt_extensions),
    ("diffusers", ["diffusers"], {"folder"}),
    ("vae_approx", ["vae_approx"], supported_pt_extensions),
    ("controlnet", ["controlnet", "t2i_adapter"], supported_pt_extensions),
    ("gligen", ["gligen"], supported_pt_extensions),
    ("upscale_models", ["upscale_models"], supported_pt_extensions),
    ("latent_upscale_models", ["latent_upscale_models"], supported_pt_extensions),
    ("hypernetworks", ["hypernetworks"], supported_pt_extensions),
    ("photomaker", ["photomaker"], supported_pt_extensions),
    ("classifiers", ["classifiers"], {""}),
    ("model_patches", ["model_patches"], supported_pt_extensions),
    ("audio_encoders", ["audio_encoders"], supported_pt_extensions),
]

_LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}


def set_base_path(path: str) -> None:
    """Point models, custom_nodes, input, output, temp and user at one base directory."""
    global base_path, models_dir, output_directory, temp_directory, input_directory, user_directory
    base_path = os.path.abspath(path)
    models_dir = os.path.join(base_path, "models")
    output_directory = os.path.join(base_path, "output")
    temp_directory = os.path.join(base_path, "temp")
    input_directory = os.path.join(base_path, "input")
    user_directory = os.path.join(base_path, "user")
    _init_folders()


def _init_folders() -> None:
    folder_names_and_paths.clear()
    for name, subdirs, exts in _FOLDERS:
        folder_names_and_paths[name] = ([os.path.join(models_dir, d) for d in subdirs], set(exts))
    folder_names_and_paths["custom_nodes"] = ([os.path.join(base_path, "custom_nodes")], set())


_init_folders()


def map_legacy(folder_name: str) -> str:
    """Old folder names ("clip", "unet") mean the new ones."""
    return _LEGACY.get(folder_name, folder_name)


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    """Add a search path for a folder, as extra_model_paths.yaml does."""
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([], supported_pt_extensions)
    paths = folder_names_and_paths[folder_name][0]
    if full_folder_path in paths:
        paths.remove(full_folder_path)
    if is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[map_legacy(folder_name)][0][:]


def set_output_directory(path: str) -> None:
    global output_directory
    output_directory = path


def set_input_directory(path: str) -> None:
    global input_directory
    input_directory = path


def set_temp_directory(path: str) -> None:
    global temp_directory
    temp_directory = path


def set_user_directory(path: str) -> None:
    global user_directory
    user_directory = path


def get_output_directory() -> str:
    return output_directory


def get_input_directory() -> str:
    return input_directory


def get_temp_directory() -> str:
    return temp_directory


def get_user_directory() -> str:
    return user_directory


def get_directory_by_type(type_name: str) -> str | None:
    return {"output": output_directory, "temp": temp_directory, "input": input_directory}.get(type_name)


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """Split 'sub/x.png [output]' into the name and the directory it points at."""
    if name.endswith("[output]"):
        return name[:-9], get_output_directory()
    if name.endswith("[input]"):
        return name[:-8], get_input_directory()
    if name.endswith("[temp]"):
        return name[:-7], get_temp_directory()
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    name, base_dir = annotated_filepath(name)
    if base_dir is None:
        base_dir = default_dir if default_dir is not None else get_input_directory()
    return os.path.join(base_dir, name)


def exists_annotated_filepath(name: str) -> bool:
    name, base_dir = annotated_filepath(name)
    if base_dir is None:
        base_dir = get_input_directory()
    filepath = os.path.join(base_dir, name)
    return os.path.exists(filepath)


def _walk(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    found = []
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True, topdown=True):
        subdirs[:] = [d for d in subdirs if d != ".git"]
        for f in filenames:
            rel = os.path.relpath(os.path.join(dirpath, f), directory)
            found.append(rel.replace(os.sep, "/"))
    return found


def filter_files_extensions(files: list[str], extensions: set[str]) -> list[str]:
    return sorted(f for f in files if not extensions or os.path.splitext(f)[-1].lower() in extensions)


def get_filename_list(folder_name: str) -> list[str]:
    """Files in every search path of a model folder, relative to it, sorted."""
    folder_name = map_legacy(folder_name)
    paths, exts = folder_names_and_paths[folder_name]
    out: set[str] = set()
    for p in paths:
        out.update(filter_files_extensions(_walk(p), exts))
    return sorted(out)


def get_full_path(folder_name: str, filename: str) -> str | None:
    """Absolute path of a model file, or None when absent or escaping its folder."""
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for p in folder_names_and_paths[folder_name][0]:
        full = os.path.join(p, filename)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full


def filter_files_content_types(files: list[str], content_types: list[str]) -> list[str]:
    import mimetypes

    result = []
    for f in files:
        mime = mimetypes.guess_type(f, strict=False)[0] or ""
        if mime.split("/")[0] in content_types:
            result.append(f)
    return result


def get_save_image_path(
    filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0
) -> tuple[str, str, int, str, str]:
    """ComfyUI's naming: '<prefix>_<counter:05>_.png' with the next free counter."""
    import re

    filename_prefix = filename_prefix.replace("%width%", str(image_width)).replace(
        "%height%", str(image_height)
    )
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(full_output_folder)}\n         output_dir: {output_dir}"
        )
    pattern = re.compile(re.escape(filename) + r"_(\d+)_")
    counter = 1
    try:
        for existing in os.listdir(full_output_folder):
            m = pattern.match(existing)
            if m:
                counter = max(counter, int(m.group(1)) + 1)
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
    return full_output_folder, filename, counter, subfolder, filename_prefix
