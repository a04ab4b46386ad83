"""comfyui-api: a typed REST endpoint per ComfyUI workflow, in front of one ComfyUI.

Library use (e.g. Modal's @modal.asgi_app): ``create_app(Settings(...))`` returns the ASGI app.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any  # noqa: E402

from comfyui_api.settings import ConfigError, Settings  # noqa: E402


def create_app(settings: Settings) -> Any:
    """The ASGI app for these settings (imported lazily so `import comfyui_api` stays light)."""
    from comfyui_api.app import create_app as _create

    return _create(settings)


__all__ = ["ConfigError", "Settings", "create_app", "__version__"]
