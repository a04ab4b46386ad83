"""Facts answered by the host-side scripts (hostside/): their tagged JSON lines, and staged files' hashes."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from pyinfra.api import FactBase, StringCommand

from comfyfleet.shell import script

__all__ = ["HostsideJson", "StagedFiles", "parse_tagged"]


class HostsideJson(FactBase[dict[str, Any]]):
    """Run a host-side script read-only and parse its ``WORD {json}`` lines into {WORD: value}."""

    @staticmethod
    def default() -> dict[str, Any]:
        return {}

    def command(self, argv: tuple[str, ...]) -> StringCommand:
        # A failing script still answers (its error lines are kept under "error").
        return script('"$@" 2>&1 || true', *argv)

    def process(self, output: list[str]) -> dict[str, Any]:
        return parse_tagged(output)


def parse_tagged(lines: list[str]) -> dict[str, Any]:
    """``WORD {json}`` lines → {WORD: parsed}; ``error: ...`` lines → {"error": [...]}."""
    out: dict[str, Any] = {}
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.isupper() and rest[:1] in "[{":
            try:
                out[word] = json.loads(rest)
            except ValueError:
                continue
        elif line.startswith("error: "):
            out.setdefault("error", []).append(line[7:])
    return out


class StagedFiles(FactBase[dict[str, Any]]):
    """sha256 of the given files that exist, then the output of read-only probe commands.

    One round trip answers both "are the scripts and plans current?" and, when they
    are, what the tier checks would say (a no-op deploy then needs no further trip).
    Result: ``{"hashes": {path: sha256}, "probes": {argv: [lines]}}``.
    """

    @staticmethod
    def default() -> dict[str, Any]:
        return {"hashes": {}, "probes": {}}

    def command(self, paths: tuple[str, ...], probes: tuple[tuple[str, ...], ...] = ()) -> StringCommand:
        body = 'for f in "$@"; do [ -f "$f" ] && sha256sum "$f"; done\n'
        for i, argv in enumerate(probes):
            body += f"echo '@@probe {i}@@'; {shlex.join(argv)} 2>&1 || true\n"
        return script(body + "true\n", *paths)

    def process(self, output: list[str]) -> dict[str, Any]:
        hashes: dict[str, str] = {}
        probes: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in output:
            if line.startswith("@@probe ") and line.endswith("@@"):
                current = probes.setdefault(line[8:-2], [])
            elif current is not None:
                current.append(line)
            elif re.match(r"^[0-9a-f]{64}\s", line):
                digest, path = line.split(None, 1)
                hashes[path.strip()] = digest
        return {"hashes": hashes, "probes": probes}
