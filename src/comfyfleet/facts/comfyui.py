"""Facts about a ComfyUI install: folders, the git checkout, the Python env, HTTP health."""

from __future__ import annotations

from typing import Any

from pyinfra.api import FactBase, StringCommand

from comfyfleet.shell import script


class MissingDirectories(FactBase[list[str]]):
    """Which of the given folders do not exist yet (one round trip for all of them)."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, paths: tuple[str, ...]) -> StringCommand:
        return script('for p in "$@"; do [ -d "$p" ] || printf "%s\\n" "$p"; done', *paths)

    def process(self, output: list[str]) -> list[str]:
        return [line for line in output if line]


# One git answers for HEAD, the ref and origin's branch of that name (a name it cannot resolve
# comes back as "<name> missing"): run on every host of every deploy, each git counts.
_CHECKOUT_SCRIPT = r"""
[ -d "$1/.git" ] || { echo 'exists='; exit 0; }
echo 'exists=yes'
cd "$1" || exit 1
printf '%s\n' 'HEAD^{commit}' "$2^{commit}" "refs/remotes/origin/$2" |
  git cat-file --batch-check='%(objectname)' 2>/dev/null | {
    read -r head; read -r ref; read -r branch
    case "$head" in *" "*) head=;; esac
    case "$ref" in *" "*) ref=;; esac
    case "$branch" in *" "*|"") branch=;; *) branch=yes;; esac
    printf 'head=%s\nref=%s\nbranch=%s\n' "$head" "$ref" "$branch"
  }
echo "origin=$(git config --get remote.origin.url)"
"""


class GitCheckout(FactBase[dict[str, str]]):
    """A checkout's HEAD, what ``ref`` resolves to locally, and its origin.

    Keys: exists, head, ref (commit or empty), branch (``yes`` when ref is a remote
    branch, which may move), origin.
    """

    @staticmethod
    def default() -> dict[str, str]:
        return {}

    def command(self, path: str, ref: str) -> StringCommand:
        return script(_CHECKOUT_SCRIPT, path, ref)

    def process(self, output: list[str]) -> dict[str, str]:
        return dict(line.partition("=")[::2] for line in output if "=" in line)


_ENV_SCRIPT = r"""
echo "python=$([ -x "$1/bin/python" ] && echo yes)"
echo "marker=$(cat "$1/.comfyfleet-requirements" 2>/dev/null)"
echo "requirements=$( (cat "$2" 2>/dev/null; printf '%s' "$3") | sha256sum | cut -c1-64)"
"""


class PythonEnv(FactBase[dict[str, str]]):
    """The persistent venv: does it exist, which requirements it was built for, what is wanted now.

    ``requirements`` hashes the checkout's requirements.txt plus the runtime image name,
    so a new image or new requirements both rebuild what the venv holds.
    """

    @staticmethod
    def default() -> dict[str, str]:
        return {}

    def command(self, venv: str, requirements: str, image: str) -> StringCommand:
        return script(_ENV_SCRIPT, venv, requirements, image)

    def process(self, output: list[str]) -> dict[str, str]:
        return dict(line.partition("=")[::2] for line in output if "=" in line)


_MISSING_INPUTS_SCRIPT = r"""
[ -d "$1" ] || exit 0
cd "$1" || exit 1
find . -type f ! -name '.*' -print | while IFS= read -r f; do
  f=${f#./}
  [ -e "$2/$f" ] || [ -L "$2/$f" ] || printf '%s\n' "$f"
done
"""


class MissingInputFiles(FactBase[list[str]]):
    """Files under ``source`` (ComfyUI's shipped ``input/``) that ``target`` does not have, relative paths."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, source: str, target: str) -> StringCommand:
        return script(_MISSING_INPUTS_SCRIPT, source, target)

    def process(self, output: list[str]) -> list[str]:
        return sorted(line for line in output if line)


class HttpStatus(FactBase[int]):
    """HTTP status of a GET on the host itself (0 when nothing answers)."""

    @staticmethod
    def default() -> int:
        return 0

    def command(self, url: str) -> StringCommand:
        return script('curl -s -o /dev/null -m 5 -w "%{http_code}" "$1" || true', url)

    def process(self, output: list[str]) -> int:
        try:
            return int("".join(output).strip() or 0)
        except ValueError:
            return 0


def parse_sections(output: list[str]) -> dict[str, list[str]]:
    """Split ``@name`` delimited script output into sections."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output:
        if line.startswith("@@") and line.endswith("@@") and len(line) > 4:
            current = sections.setdefault(line[2:-2], [])
        elif current is not None:
            current.append(line)
    return sections


class ScriptSections(FactBase[dict[str, list[str]]]):
    """Run a constant script with arguments; its output is split on ``@@name@@`` lines.

    Used by read-only tasks (status, logs) that gather several things in one round trip.
    """

    @staticmethod
    def default() -> dict[str, list[str]]:
        return {}

    def command(self, body: str, args: tuple[Any, ...] = ()) -> StringCommand:
        return script(body, *args)

    def process(self, output: list[str]) -> dict[str, list[str]]:
        return parse_sections(output)
