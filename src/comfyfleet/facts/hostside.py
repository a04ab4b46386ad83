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


# Runs host-side scripts one after the other in this one python3, each as ``__main__`` with its
# own argv (argv: INDEX COUNT SCRIPT ARG... per script, COUNT counting SCRIPT and its ARGs); stderr
# goes to stdout as with ``2>&1``; a script that raises is reported as an ``error:`` line and the
# next one still runs. Each script's bytecode is cached beside it (__pycache__, checked against the
# source's mtime and size as for any import): compiling fetch_models.py and the others from source
# on every no-op cost about a third of this probe's CPU.
# The scripts use the standard library only: the interpreter runs isolated (-I: no PYTHONPATH, no
# user site, and the working directory, wherever sudo left it, cannot shadow a stdlib module) and
# without ``site`` (-S: no site-packages scan nor .pth files, which cost ms on a full Ubuntu image).
_PROBE_RUNNER = """
import sys, types
from importlib.machinery import SourceFileLoader
sys.stderr = sys.stdout
sys.dont_write_bytecode = False  # the cache is the point (PYTHONDONTWRITEBYTECODE in a login env)
main = sys.modules["__main__"]
rest = sys.argv[1:]
while rest:
    index, count, rest = rest[0], int(rest[1]), rest[2:]
    argv, rest = rest[:count], rest[count:]
    print("@@probe %s@@" % index, flush=True)
    sys.argv = argv
    module = types.ModuleType("__main__")
    module.__file__ = argv[0]
    sys.modules["__main__"] = module
    try:
        exec(SourceFileLoader("__main__", argv[0]).get_code("__main__"), module.__dict__)
    except SystemExit:
        pass
    except BaseException as exc:
        import traceback
        traceback.print_exc(file=sys.stdout)
        print("error: %s failed: %r" % (argv[0], exc))
    finally:
        sys.modules["__main__"] = main
    sys.stdout.flush()
"""


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
        scripts = [
            (i, argv)
            for i, argv in enumerate(probes)
            if len(argv) > 1 and argv[0] == "python3" and argv[1].endswith(".py") and argv[1][:1] != "-"
        ]
        if len(scripts) > 1:
            # One interpreter for every host-side script probe (the stdlib modules they share
            # are imported once): about half the host CPU of one python3 each.
            args = [str(x) for i, argv in scripts for x in (i, len(argv) - 1, *argv[1:])]
            body += f"python3 -I -S -c {shlex.quote(_PROBE_RUNNER)} {shlex.join(args)} 2>&1 || true\n"
        else:
            scripts = []
        batched = {i for i, _ in scripts}
        for i, argv in enumerate(probes):
            if i not in batched:
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
