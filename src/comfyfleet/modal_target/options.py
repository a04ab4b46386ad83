"""Options of a generated Modal app: what runs where, with defaults that match the hosts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from comfyfleet.errors import BadInput
from comfyfleet.inventory import DEFAULT_COMFYUI_REF, DEFAULT_COMFYUI_REPO, DEFAULT_RUNTIME_IMAGE

# Modal app names become part of the endpoint's host name (<workspace>--<label>.modal.run),
# so they stay DNS-friendly: lower case, digits and dashes.
_APP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")
# Modal GPU strings: "L40S", "A100-80GB", "H100:2", "any".
_GPU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,20}(:[1-8])?$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_IMAGE_TAG = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$")
_HTTPS_REPO = re.compile(r"^https://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/-]+$")
_GIT_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,99}$")

DEFAULT_APP_NAME = "comfyfleet"
DEFAULT_GPU = "L40S"


@dataclass(frozen=True)
class ModalOptions:
    """How the generated app runs on Modal. Every field is validated by :meth:`checked`."""

    app_name: str = DEFAULT_APP_NAME
    gpu: str = DEFAULT_GPU
    # Same base image, ComfyUI repo and ref as the GPU hosts (comfyfleet.inventory defaults),
    # so a workflow meets the same torch build and ComfyUI on both targets.
    base_image: str = DEFAULT_RUNTIME_IMAGE
    comfyui_repo: str = DEFAULT_COMFYUI_REPO
    comfyui_ref: str = DEFAULT_COMFYUI_REF
    scaledown_window: int = 300
    max_containers: int = 2
    max_concurrent_requests: int = 8
    request_timeout: int = 30 * 60
    memory_snapshot: bool = False
    volume_name: str | None = None
    api_secret: str = "comfyfleet-api"
    civitai_secret: str = "comfyfleet-civitai"
    # Gated Hugging Face repos need HF_TOKEN: name a secret to attach it (off by default).
    hf_secret: str | None = None

    @property
    def models_volume(self) -> str:
        return self.volume_name or f"{self.app_name}-models"

    def checked(self) -> ModalOptions:
        """Return self, or raise BadInput naming the option and what it accepts."""
        if not _APP_NAME.match(self.app_name):
            raise BadInput(
                f"--app {self.app_name!r}: use 2-40 lower-case letters, digits and dashes, starting with a letter"
            )
        if not _GPU.match(self.gpu):
            raise BadInput(f"--gpu {self.gpu!r}: use a Modal GPU type such as L40S, A100-80GB, H100:2 or any")
        if not _IMAGE_TAG.match(self.base_image) or ":" not in self.base_image.split("/")[-1]:
            raise BadInput(
                f"--base-image {self.base_image!r}: use a pinned registry tag such as {DEFAULT_RUNTIME_IMAGE}"
            )
        if not _HTTPS_REPO.match(self.comfyui_repo):
            raise BadInput(f"--comfyui-repo {self.comfyui_repo!r}: use an https git URL")
        if not _GIT_REF.match(self.comfyui_ref) or ".." in self.comfyui_ref:
            raise BadInput(f"--comfyui-ref {self.comfyui_ref!r}: use a tag, branch or commit")
        for flag, value, low, high in (
            ("--scaledown-window", self.scaledown_window, 2, 3600),
            ("--max-containers", self.max_containers, 1, 1000),
            ("--concurrency", self.max_concurrent_requests, 1, 1000),
            ("--timeout", self.request_timeout, 10, 24 * 3600),
        ):
            if not low <= value <= high:
                raise BadInput(f"{flag} {value}: use a number from {low} to {high}")
        for flag, name in (
            ("--volume", self.models_volume),
            ("--api-secret", self.api_secret),
            ("--civitai-secret", self.civitai_secret),
            ("--hf-secret", self.hf_secret),
        ):
            if name is not None and not _SECRET_NAME.match(name):
                raise BadInput(f"{flag} {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
        return self
