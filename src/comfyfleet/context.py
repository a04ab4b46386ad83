"""The per-run context: what one run keeps for each host, in one place.

A pyinfra run creates its Host objects afresh, so values keyed by the (real) Host live
exactly as long as the run: the host's :class:`HostReport` (what tasks show the operator),
its validated config, the facts prefetched in one round trip, and the answers of host-side
probes. Nothing else in comfyfleet keeps state between operations.

Reports: a task that must show output (status tables, logs, installed nodes, storage)
fills ``report(host)`` from inside an operation, at execution time, and yields no command
when it only reads (so it counts as "no change")::

    @operation()
    def list_nodes(cfg):
        packs = host.get_fact(MyPacksFact, root=cfg.data_root)
        report(host).table("custom nodes", ["pack", "commit"], [[p.name, p.commit] for p in packs])
        host.noop("listed custom nodes")

``table(title, columns, rows)``, ``text(title, text, highlight=regex)`` and ``note(message)``
add to it (a second call with the same title replaces the section). The CLI prints every
section under the results table; under pyinfra's own CLI the same content is logged per host.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from pyinfra.api import Host

from comfyfleet.pyinfra_compat import real_host


@dataclass
class ReportSection:
    """A table (columns + rows) or a block of text shown for one host."""

    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    text: str | None = None
    highlight: str | None = None


@dataclass
class HostReport:
    """What tasks want the operator to see for one host."""

    sections: dict[str, ReportSection] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    host_name: str = ""

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.sections[title] = ReportSection(title, list(columns), [[str(c) for c in r] for r in rows])
        _log(self.host_name, f"{title}: " + "; ".join(" | ".join(str(c) for c in r) for r in rows))

    def text(self, title: str, text: str, highlight: str | None = None) -> None:
        self.sections[title] = ReportSection(title, text=text, highlight=highlight)
        _log(self.host_name, f"{title}:\n{text}")

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
        _log(self.host_name, message)


def _log(host_name: str, message: str) -> None:
    logging.getLogger("pyinfra").info("[%s] %s", host_name, message)


@dataclass
class HostRun:
    """One host's share of the run."""

    report: HostReport
    config: Any = None
    """The host's validated :class:`~comfyfleet.inventory.HostConfig` (set on first use)."""
    facts: Any = None
    """Facts prefetched in one round trip (:mod:`comfyfleet.facts.prefetch`)."""
    probes: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)
    """Answers of host-side probes staged with the files, valid while those files did not change."""
    verified: dict[str, Any] | None = None
    """A no-op install check's verification, for the verify step of the same run."""


_RUNS: WeakKeyDictionary[Host, HostRun] = WeakKeyDictionary()


def host_run(host: Any) -> HostRun:
    """The current run's context of ``host`` (pyinfra's ``host`` proxy or a Host), created on first use."""
    real = real_host(host)
    run = _RUNS.get(real)
    if run is None:
        run = _RUNS[real] = HostRun(report=HostReport(host_name=real.name))
    return run


def report(host: Any) -> HostReport:
    """The report of ``host`` for the current run."""
    return host_run(host).report
