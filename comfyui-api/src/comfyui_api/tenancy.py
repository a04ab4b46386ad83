"""Each caller's files: a key's input files live in its own folder of ComfyUI's input folder.

A caller names input files relative to its own folder (`tenants/<key id>/`), so one key
can neither read nor overwrite another's uploads; admin keys and the keyless local
operator use the input folder itself. ComfyUI's `name [output]` / `[temp]` annotations
(which make LoadImage read the output or temp folder) are refused for callers.
"""

from __future__ import annotations

import re

from comfyui_api.security import Caller

_ANNOTATION = re.compile(r"\[[A-Za-z]+\]\s*$")


def input_folder(who: Caller) -> str:
    """The caller's folder inside ComfyUI's input folder ('' for the whole folder)."""
    if who.admin or who.key_id is None:
        return ""
    return f"tenants/{who.key_id}"


def annotated(name: str) -> bool:
    """True when name ends in a ComfyUI folder annotation such as ' [output]'."""
    return _ANNOTATION.search(name) is not None


def to_comfy(who: Caller, name: str) -> str:
    """A caller's input file name as ComfyUI's LoadImage names it."""
    folder = input_folder(who)
    return f"{folder}/{name}" if folder else name


def from_comfy(who: Caller, subfolder: str) -> str:
    """ComfyUI's subfolder of an upload as the caller names it (its own folder removed)."""
    folder = input_folder(who)
    if folder and (subfolder == folder or subfolder.startswith(folder + "/")):
        return subfolder[len(folder) + 1 :]
    return subfolder
