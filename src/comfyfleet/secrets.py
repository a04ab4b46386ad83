"""Download tokens: read on the operator's machine, handed to a host without leaking.

Tokens (``HF_TOKEN``, ``CIVITAI_API_TOKEN``) come from the operator's environment, or
from a file named by ``COMFYFLEET_SECRETS_FILE`` (``KEY=value`` lines, mode 0600). They are
never put in host data, command lines, environment variables of remote processes or
pyinfra output. A task uploads them as JSON into a 0700 directory owned by the SSH
user, feeds them to the host-side script on standard input and deletes the file in the
same command (see :func:`comfyfleet.deploys.models.download`).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from comfyfleet.errors import BadInput

TOKEN_NAMES = ("HF_TOKEN", "CIVITAI_API_TOKEN")
# huggingface_hub's older spelling, still set on many machines.
_ALIASES = {"HUGGING_FACE_HUB_TOKEN": "HF_TOKEN", "CIVITAI_TOKEN": "CIVITAI_API_TOKEN"}


@dataclass(frozen=True)
class Tokens:
    """The tokens an operator has; repr and str never show the values."""

    values: dict[str, str] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        return f"Tokens({', '.join(sorted(self.values)) or 'none'})"

    __repr__ = __str__

    def __bool__(self) -> bool:
        return bool(self.values)

    def names(self) -> list[str]:
        return sorted(self.values)

    def payload(self) -> str:
        """JSON for the host-side script's standard input."""
        return json.dumps(self.values)

    def redact(self, text: str) -> str:
        """text with every token value replaced by its name (for output from hosts)."""
        for name, value in self.values.items():
            if value:
                text = text.replace(value, f"<{name}>")
        return text


def _read_file(path: Path) -> dict[str, str]:
    try:
        st = path.stat()
    except OSError as exc:
        raise BadInput(f"COMFYFLEET_SECRETS_FILE={path}: cannot read it ({exc.strerror})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInput(f"{path}: readable by other users: run chmod 600 {path}")
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            out[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return out


def load_tokens(environ: dict[str, str] | None = None) -> Tokens:
    """Tokens from the environment, then from COMFYFLEET_SECRETS_FILE for those still missing."""
    env = dict(os.environ if environ is None else environ)
    found: dict[str, str] = {}
    sources = [env]
    if env.get("COMFYFLEET_SECRETS_FILE"):
        sources.append(_read_file(Path(env["COMFYFLEET_SECRETS_FILE"]).expanduser()))
    for source in sources:
        for key, value in source.items():
            name = _ALIASES.get(key, key)
            if name in TOKEN_NAMES and value and name not in found:
                found[name] = value
    return Tokens(found)
