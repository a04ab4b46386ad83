"""Host-side scripts and plans on a host: upload them (one operation), and read their answers.

``hostside/*.py`` run on the host with its ``python3``; their JSON plans sit in
``<state>/plans``. :func:`sync_files` uploads what changed and, when nothing did, runs the
read-only probes it was given in the same round trip; :func:`probed_or_fact` hands an
operation that probe's answer (or asks the host now).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Generator
from io import BytesIO
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation

from comfyfleet.context import host_run
from comfyfleet.facts import prefetch
from comfyfleet.facts.hostside import HostsideJson, StagedFiles, parse_tagged

NODES_CHECK = ("check", "--verify")
MODELS_CHECK = ("--check",)


def probed_or_fact(argv: tuple[str, ...]) -> dict[str, Any]:
    """What ``argv`` answered in this run's staging probe, else run it now (one round trip)."""
    answer = host_run(host).probes.pop(argv, None)
    if answer is not None:
        return answer
    return host.get_fact(HostsideJson, argv=argv)


@operation()
def sync_files(
    files: dict[str, bytes], probes: list[tuple[str, ...]] | None = None
) -> Generator[Any, None, None]:
    """Make each remote path hold these bytes (mode 644); no change when all already do.

    + files: remote path -> content (host-side scripts and JSON plans, nothing secret)
    + probes: read-only commands answered in the same round trip when nothing is stale
    """
    probe_list = tuple(tuple(p) for p in probes or [])
    # Prefetched with the runtime's facts by deploy-all (valid while nothing changed), else read now.
    state = prefetch.fact(StagedFiles, paths=tuple(sorted(files)), probes=probe_list)
    remote = state["hashes"]
    stale = {p: data for p, data in files.items() if remote.get(p) != hashlib.sha256(data).hexdigest()}
    if not stale:
        host_run(host).probes = {
            argv: parse_tagged(state["probes"].get(str(i), [])) for i, argv in enumerate(probe_list)
        }
        host.noop(f"{len(files)} file(s) up to date")
        return
    host_run(host).probes = {}
    yield StringCommand("mkdir", "-p", *sorted({QuoteString(posixpath.dirname(p)) for p in stale}, key=str))
    for path, data in sorted(stale.items()):
        yield FileUploadCommand(BytesIO(data), path, remote_temp_filename=host.get_temp_filename(path))
    yield StringCommand("chmod", "644", *(QuoteString(p) for p in sorted(stale)))
