"""ComfyUI's ProgressBar: nodes report steps, the executor turns them into `progress` frames."""

from __future__ import annotations

from collections.abc import Callable

PROGRESS_BAR_HOOK: Callable[[int, int, object, str | None], None] | None = None


def set_progress_bar_global_hook(function: Callable[[int, int, object, str | None], None] | None) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total: int, node_id: str | None = None) -> None:
        self.total = total
        self.current = 0
        self.node_id = node_id
        self.hook = PROGRESS_BAR_HOOK

    def update_absolute(self, value: int, total: int | None = None, preview: object = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if self.hook is not None:
            self.hook(self.current, self.total, preview, self.node_id)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)
