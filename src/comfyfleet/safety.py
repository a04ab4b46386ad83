"""Checks on untrusted strings (workflow values, host data) before they become paths.

Model filenames come straight from workflow JSON. They end up as paths under the
models folder on a host and as arguments of commands, so anything that could leave
the folder or mean something to a shell is refused here, once, for every tier.
"""

from __future__ import annotations

import re

# Letters, digits and the punctuation real model files use. No shell metacharacters
# ($ ` ; | & < > ( ) { } * ? ! ' " \ and whitespace other than plain space).
_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 ._+@,=~%#\[\]-]*$")


def normalize_model_name(name: str) -> str:
    """Windows separators become '/', as ComfyUI itself accepts both."""
    return name.replace("\\", "/")


def unsafe_model_name_reason(name: str) -> str | None:
    """Why a model filename may not become an install target, or None when it is safe.

    Accepts relative paths with subfolders ("sdxl/model.safetensors", also written
    with backslashes). Refuses absolute paths, "..", control characters and shell
    metacharacters.
    """
    if not isinstance(name, str) or not name:
        return "empty model name"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains control characters"
    norm = normalize_model_name(name)
    if norm.startswith("/") or re.match(r"^[A-Za-z]:/", norm):
        return "is an absolute path"
    parts = norm.split("/")
    if any(p in ("..", ".") for p in parts):
        return "contains '..' or '.' path segments"
    if any(p == "" for p in parts):
        return "contains an empty path segment"
    for p in parts:
        if not _SAFE_PART.match(p):
            return "contains shell metacharacters or characters not allowed in a model filename"
    if len(norm) > 255:
        return "is longer than 255 characters"
    return None


def is_safe_model_name(name: str) -> bool:
    return unsafe_model_name_reason(name) is None
