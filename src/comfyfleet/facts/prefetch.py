"""Many facts in one round trip, reused by later operations while nothing on the host has changed.

pyinfra has no fact cache: every ``host.get_fact`` is a round trip, and a no-op
re-run of bootstrap + runtime would pay seven of them per host. A deploy instead
starts with :func:`prefetch` naming the facts its operations will ask for; they are
read in one shell script, and :func:`fact` hands them out until some operation on
that host has changed something (any completed operation that ran commands, ours or
another tier's), after which every lookup is a fresh ``host.get_fact`` again.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from pyinfra import host as ctx_host_proxy
from pyinfra.api import FactBase, StringCommand, operation

from comfyfleet.context import host_run
from comfyfleet.pyinfra_compat import changes_so_far, real_host

FactRequest = tuple[type[FactBase[Any]], dict[str, Any]]


@dataclass
class _Snapshot:
    changes: int
    values: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = field(default_factory=dict)


def _key(cls: type[FactBase[Any]], kwargs: dict[str, Any]) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return cls.__name__, tuple(sorted(kwargs.items()))


class FactBundle(FactBase[dict[int, tuple[int, list[str]]]]):
    """Several facts' commands run in one script; output per fact with its exit status."""

    @staticmethod
    def default() -> dict[int, tuple[int, list[str]]]:
        return {}

    def command(self, commands: tuple[StringCommand, ...]) -> StringCommand:
        bits: list[Any] = []
        for index, cmd in enumerate(commands):
            bits += [f"echo '@@cf-{index}@@';", "(", cmd, ");", f'echo "@@cf-rc-{index}:$?@@";']
        return StringCommand(*bits)

    def process(self, output: list[str]) -> dict[int, tuple[int, list[str]]]:
        result: dict[int, tuple[int, list[str]]] = {}
        current: list[str] | None = None
        index = -1
        for line in output:
            if "@@cf-rc-" in line and line.endswith("@@"):
                # A command whose output has no final newline (curl -w '%{http_code}') leaves
                # its last line in front of the status marker.
                last, _, marker = line.rpartition("@@cf-rc-")
                if last and current is not None:
                    current.append(last)
                rc = int(marker[:-2].split(":")[1])
                result[index] = (rc, current or [])
                current = None
            elif line.startswith("@@cf-") and line.endswith("@@"):
                index = int(line[len("@@cf-") : -2])
                current = []
            elif current is not None:
                current.append(line)
        return result


@operation()
def prefetch(requests: list[FactRequest]) -> Generator[Any, None, None]:
    """Read the facts later operations need in one round trip (read-only; changes nothing).

    + requests: ``(FactClass, kwargs)`` pairs, the same kwargs the operations will pass
    """
    facts = [cls() for cls, _ in requests]
    commands = tuple(f.command(**kwargs) for f, (_, kwargs) in zip(facts, requests, strict=True))
    bundle = ctx_host_proxy.get_fact(FactBundle, commands=commands)
    snap = _Snapshot(changes=changes_so_far(real_host(ctx_host_proxy)))
    for index, (fact_obj, (cls, kwargs)) in enumerate(zip(facts, requests, strict=True)):
        rc, lines = bundle.get(index, (1, []))
        if rc != 0:
            continue  # asked again for real by the operation, which then reports the error
        snap.values[_key(cls, kwargs)] = fact_obj.process(lines) if lines else fact_obj.default()
    host_run(ctx_host_proxy).facts = snap
    ctx_host_proxy.noop(f"read {len(snap.values)} facts in one round trip")
    yield from ()


def fact(cls: type[FactBase[Any]], **kwargs: Any) -> Any:
    """A fact of the current host: from the prefetched snapshot while it is still true, else read now."""
    run = host_run(ctx_host_proxy)
    snap = run.facts
    key = _key(cls, kwargs)
    if snap is not None and key in snap.values and snap.changes == changes_so_far(real_host(ctx_host_proxy)):
        return snap.values[key]
    return ctx_host_proxy.get_fact(cls, **kwargs)
