"""Registry of `deploy/common.py` tasks, chosen with `--data task=NAME`.

Each tier module registers its tasks with ``@task("name")``; a task is a plain
pyinfra deploy function taking no arguments that reads what it needs from
``host.data``. ``deploy/common.py`` and the CLI both go through :func:`run_task`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import comfyfleet.deploys as pkg
from comfyfleet.errors import BadInput

TaskFn = Callable[[], None]
TASKS: dict[str, TaskFn] = {}


def task(name: str) -> Callable[[TaskFn], TaskFn]:
    def register(fn: TaskFn) -> TaskFn:
        TASKS[name] = fn
        return fn

    return register


def load_all() -> None:
    """Import every module that registers tasks."""
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")


def run_task(name: str) -> None:
    load_all()
    fn = TASKS.get(name)
    if fn is None:
        known = ", ".join(sorted(TASKS)) or "none"
        raise BadInput(f"unknown task {name!r}: pass --data task=NAME with one of: {known}")
    fn()
