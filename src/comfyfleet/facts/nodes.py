"""Facts about the node pack folders of a ComfyUI install."""

from __future__ import annotations

from pyinfra.api import FactBase, StringCommand

from comfyfleet.shell import script


class NodeFolders(FactBase[list[str]]):
    """Names of the folders directly in a custom_nodes/ folder (empty when it is missing)."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, path: str) -> StringCommand:
        return script('find "$1" -mindepth 1 -maxdepth 1 -type d -printf "%f\\n" 2>/dev/null || true', path)

    def process(self, output: list[str]) -> list[str]:
        return sorted(line.strip() for line in output if line.strip())
