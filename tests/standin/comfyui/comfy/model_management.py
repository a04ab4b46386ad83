"""Interrupt handling with ComfyUI's names, so nodes and the executor can poll it."""

from __future__ import annotations

import threading
import time


class InterruptProcessingException(Exception):
    pass


_interrupt = threading.Event()


def interrupt_current_processing(value: bool = True) -> None:
    if value:
        _interrupt.set()
    else:
        _interrupt.clear()


def processing_interrupted() -> bool:
    return _interrupt.is_set()


def throw_exception_if_processing_interrupted() -> None:
    if _interrupt.is_set():
        _interrupt.clear()
        raise InterruptProcessingException()


def interruptible_sleep(seconds: float) -> None:
    """Sleep in short slices so /interrupt ends a slow stand-in node promptly."""
    end = time.monotonic() + seconds
    while True:
        throw_exception_if_processing_interrupted()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.02))
