"""Data for every host (the defaults are in src/comfyfleet/inventory.py; values here override them)."""

# ComfyUI core: repository and the ref every host is pinned to.
comfyui_repo = "https://github.com/comfyanonymous/ComfyUI.git"
comfyui_ref = "v0.8.0"

# Image ComfyUI runs in (python3 + torch); its requirements go into a venv on the data root.
runtime_image = "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime"

# ComfyUI binds loopback only; the API service (api_port) is what users reach.
comfyui_listen = "127.0.0.1"
comfyui_port = 8188
api_port = 3000

# "auto": use the GPU when nvidia-smi is present; false forces ComfyUI's --cpu.
gpu = "auto"

# Pinned nvidia-container-toolkit from NVIDIA's repository.
nvidia_toolkit_version = "1.18.2-1"
