"""Consoles and the print-then-exit helper shared by the CLI modules."""

from __future__ import annotations

import logging
from typing import NoReturn

import typer
from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1, *, soft_wrap: bool = False) -> NoReturn:
    """Print a plain line (never read as rich markup) to stderr and exit with code.

    + message: what failed and, where the user can act, what to do next
    + code: 1 when something failed on a host, 2 for bad input
    + soft_wrap: keep a long line whole instead of folding it to the terminal width

    Example: ``fail(f"error: {exc}")`` inside ``except HostFailure as exc``.
    """
    err.print(message, markup=False, soft_wrap=soft_wrap)
    # The cause was just printed; chaining would only repeat it.
    raise typer.Exit(code) from None


class _ProgressLines(logging.Handler):
    """Live progress lines (``comfyfleet.progress``: model downloads) on stderr, as they come."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(record.getMessage(), markup=False, highlight=False, soft_wrap=True)


def show_progress() -> None:
    """Show the tiers' live progress lines (every download stream, each second) while a run lasts."""
    log = logging.getLogger("comfyfleet.progress")
    if not any(isinstance(h, _ProgressLines) for h in log.handlers):
        log.addHandler(_ProgressLines())
    log.setLevel(logging.INFO)
    log.propagate = False
