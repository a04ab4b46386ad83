"""Operation cases as data: facts in, commands out (pyinfra's own operation tests work this way).

A case file (YAML) names an operation, its arguments, the facts the host reports and
the commands the operation must yield; ``second_run`` gives the facts after those
commands ran and the commands then expected (normally none: the idempotent re-run).
Facts are keyed by fact class name, or ``Name:value`` when the fact is asked with an
argument (``DockerContainer:comfyui``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from pyinfra.api import StringCommand
from pyinfra.context import ctx_host

CASES = Path(__file__).parent / "cases"


class FakeHost:
    """Just enough of pyinfra's Host for an operation generator: facts from a dict, noops recorded."""

    def __init__(self, facts: dict[str, Any], name: str = "fakehost") -> None:
        self.name = name
        self.facts = facts
        self.noops: list[str] = []
        self.asked: list[str] = []
        self.data: dict[str, Any] = {}

    def get_fact(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        values = [*args, *kwargs.values()]
        for value in values:
            key = f"{cls.__name__}:{value}"
            if key in self.facts:
                self.asked.append(key)
                return self.facts[key]
        if cls.__name__ not in self.facts:
            raise AssertionError(f"case gives no fact {cls.__name__} (asked with {values})")
        self.asked.append(cls.__name__)
        return self.facts[cls.__name__]

    def noop(self, description: str) -> None:
        self.noops.append(description)


def resolve(op_path: str) -> Any:
    """``docker.engine`` -> comfyfleet.operations.docker.engine (the undecorated generator)."""
    module, _, name = op_path.rpartition(".")
    op = getattr(importlib.import_module(f"comfyfleet.operations.{module}"), name)
    return op._inner


def render(command: Any) -> str:
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    return str(command)


def run_op(op_path: str, args: dict[str, Any], facts: dict[str, Any]) -> tuple[list[str], FakeHost]:
    """Commands an operation yields for these facts, and the fake host (noops, facts asked)."""
    fake = FakeHost(facts)
    with ctx_host.use(fake):
        commands = [render(c) for c in resolve(op_path)(**args)]
    return commands, fake


def load_cases() -> list[tuple[str, dict[str, Any]]]:
    return [(p.stem, yaml.safe_load(p.read_text())) for p in sorted(CASES.glob("*.yaml"))]
