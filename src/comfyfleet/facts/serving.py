"""Facts about which workflows a host's API serves: live, parked and stop-marked files."""

from __future__ import annotations

from collections.abc import Iterable

from pyinfra.api import FactBase, QuoteString, StringCommand

SUFFIXES = (".json", ".api.yaml")
"""The file suffixes of one workflow in the API's workflows folder."""


def serving_paths(workflow: str) -> list[str]:
    """Every file that says whether and how the API serves a workflow, relative to ``<data_root>/api``:
    its live files, its parked files and its stop marker."""
    return [f"{d}/{workflow}{s}" for d in ("workflows", "stopped") for s in SUFFIXES] + [
        f"disabled/{workflow}"
    ]


def served(files: Iterable[str], workflow: str) -> bool:
    """Whether the API serves a workflow, given which of its :func:`serving_paths` exist."""
    present = set(files)
    return f"disabled/{workflow}" not in present and any(
        f"workflows/{workflow}{s}" in present for s in SUFFIXES
    )


class ServingFiles(FactBase):
    """Which of a workflow's files are live, parked, and whether its stop marker exists."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, api_dir: str, workflow: str) -> StringCommand:
        paths = serving_paths(workflow)
        return StringCommand(
            "sh",
            "-c",
            QuoteString(
                'cd "$1" 2>/dev/null || exit 0; shift; for p; do [ -e "$p" ] && echo "$p"; done; true'
            ),
            "comfyfleet",
            QuoteString(api_dir),
            *(QuoteString(p) for p in paths),
        )

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class LiveStoppedFiles(FactBase):
    """Files in the API's workflows/ folder that belong to workflows marked stopped."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, api_dir: str) -> StringCommand:
        body = (
            'cd "$1/disabled" 2>/dev/null || exit 0; for n in *; do [ -f "$n" ] || continue; '
            'for s in .json .api.yaml; do [ -e "../workflows/$n$s" ] && echo "$n$s"; done; done; true'
        )
        return StringCommand("sh", "-c", QuoteString(body), "comfyfleet", QuoteString(api_dir))

    def process(self, output: list[str]) -> list[str]:
        return sorted(line.strip() for line in output if line.strip())
