"""Serving or stopping one workflow on a host: its files parked or live, its stop marker.

The marker ``<data_root>/api/disabled/<workflow>`` is what stops a workflow: the API service
(started with ``--disabled-dir``) checks that folder on every request, answers 404 "stopped"
for a marked workflow and leaves it out of /openapi.json.

A ship keeps copies of a workflow's serving files before its API step (:func:`keep_serving_files`)
and puts them back when its models fail (:func:`put_back_serving_files`), so a failed ship leaves
the endpoint as it was; the files a ship brought are moved aside, never deleted.
"""

from __future__ import annotations

import posixpath
from collections.abc import Generator, Mapping, MutableMapping
from typing import Any

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation
from pyinfra.facts.files import Sha256File

from comfyfleet.facts.serving import SUFFIXES, LiveStoppedFiles, ServingFiles, serving_paths


@operation()
def repark(api_dir: str, keep: str) -> Generator[Any, None, None]:
    """Park again the files of stopped workflows that a re-upload (update-binary) brought back.

    + api_dir: ``<data_root>/api`` on the host
    + keep: the workflow being served now (its marker is being removed)
    """
    back = [
        f
        for f in host.get_fact(LiveStoppedFiles, api_dir=api_dir)
        if f not in (f"{keep}{s}" for s in SUFFIXES)
    ]
    if not back:
        host.noop("no stopped workflow is back in workflows/")
        return
    yield StringCommand("mkdir", "-p", QuoteString(f"{api_dir}/stopped"))
    for name in back:
        yield _mv(f"{api_dir}/workflows/{name}", f"{api_dir}/stopped/{name}")


def _mv(src: str, dest: str) -> StringCommand:
    return StringCommand("mv", "-f", QuoteString(src), QuoteString(dest))


@operation()
def parked(api_dir: str, workflow: str, served: bool) -> Generator[Any, None, None]:
    """Move a workflow's files into the API's workflows folder (served) or out of it (stopped).

    + api_dir: ``<data_root>/api`` on the host
    + workflow: workflow name (the endpoint's path segment)
    + served: True to serve it, False to park it in ``stopped/``
    """
    present = set(host.get_fact(ServingFiles, api_dir=api_dir, workflow=workflow))
    moves: list[StringCommand] = []
    for suffix in SUFFIXES:
        live, away = f"workflows/{workflow}{suffix}", f"stopped/{workflow}{suffix}"
        if served and away in present and live not in present:
            moves.append(_mv(f"{api_dir}/{away}", f"{api_dir}/{live}"))
        elif not served and live in present:
            moves.append(_mv(f"{api_dir}/{live}", f"{api_dir}/{away}"))
    if not moves:
        host.noop(f"workflow {workflow} already {'served' if served else 'stopped'}")
        return
    if not served:
        yield StringCommand("mkdir", "-p", QuoteString(f"{api_dir}/stopped"))
    yield from moves


@operation()
def marker(api_dir: str, workflow: str, stopped: bool) -> Generator[Any, None, None]:
    """The host-side record that a workflow is stopped (for the API and update-binary to honour).

    + api_dir: ``<data_root>/api`` on the host
    + workflow: workflow name
    + stopped: True to set the marker, False to remove it (and parked copies a ship replaced)
    """
    path = f"{api_dir}/disabled/{workflow}"
    present = set(host.get_fact(ServingFiles, api_dir=api_dir, workflow=workflow))
    commands: list[StringCommand] = []
    if stopped and f"disabled/{workflow}" not in present:
        commands += [
            StringCommand("mkdir", "-p", QuoteString(f"{api_dir}/disabled")),
            StringCommand("touch", QuoteString(path)),
        ]
    if not stopped:
        if f"disabled/{workflow}" in present:
            commands.append(StringCommand("rm", "-f", QuoteString(path)))
        # A ship re-uploaded the workflow while it was stopped: the live file is the newer one.
        commands += [
            StringCommand("rm", "-f", QuoteString(f"{api_dir}/stopped/{workflow}{s}"))
            for s in SUFFIXES
            if f"workflows/{workflow}{s}" in present and f"stopped/{workflow}{s}" in present
        ]
    if not commands:
        host.noop(f"stop marker of {workflow} {'present' if stopped else 'absent'}")
        return
    yield from commands


@operation(is_idempotent=False)
def keep_serving_files(
    api_dir: str, workflow: str, kept: str, store: MutableMapping[str, list[str]]
) -> Generator[Any, None, None]:
    """Copy a workflow's serving files (live, parked, stop marker) into ``kept`` and record in
    ``store[host name]`` which of them exist; a host already in ``store`` keeps its first copy
    (a retried step must not take the half-changed state as the one to put back).

    + api_dir: ``<data_root>/api`` on the host
    + workflow: workflow name
    + kept: folder the copies go to (paths relative to ``api_dir`` kept)
    + store: per host name, the files present before (relative to ``api_dir``)
    """
    if host.name in store:
        host.noop(f"serving files of {workflow} kept by an earlier attempt")
        return
    present = list(host.get_fact(ServingFiles, api_dir=api_dir, workflow=workflow))
    store[host.name] = present
    if not present:
        host.noop(f"{workflow} has no serving files yet")
        return
    dirs = sorted({posixpath.dirname(rel) for rel in present})
    yield StringCommand("mkdir", "-p", *(QuoteString(f"{kept}/{d}") for d in dirs))
    for rel in present:
        yield StringCommand("cp", "-p", QuoteString(f"{api_dir}/{rel}"), QuoteString(f"{kept}/{rel}"))


@operation(is_idempotent=False)
def put_back_serving_files(
    api_dir: str, workflow: str, kept: str, before: Mapping[str, list[str]], stop: bool
) -> Generator[Any, None, None]:
    """Make a workflow's serving files what :func:`keep_serving_files` found, from its copies; files
    that were not there move to ``<kept>/shipped/``. ``stop``: also set the stop marker (a workflow
    that was not served stays unserved even when ``update-binary`` uploads its file again).

    + api_dir: ``<data_root>/api`` on the host
    + workflow: workflow name
    + kept: the folder :func:`keep_serving_files` copied into
    + before: per host name, the files present before
    + stop: set the stop marker
    """
    was = set(before.get(host.name, []))
    now = set(host.get_fact(ServingFiles, api_dir=api_dir, workflow=workflow))
    marker_rel = f"disabled/{workflow}"
    commands: list[StringCommand] = []
    for rel in serving_paths(workflow):
        live, copy = f"{api_dir}/{rel}", f"{kept}/{rel}"
        if rel in was:
            if rel not in now or host.get_fact(Sha256File, path=live) != host.get_fact(Sha256File, path=copy):
                commands.append(StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(live))))
                commands.append(StringCommand("cp", "-p", QuoteString(copy), QuoteString(live)))
        elif rel == marker_rel and stop:
            if rel not in now:
                commands.append(StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(live))))
                commands.append(StringCommand("touch", QuoteString(live)))
        elif rel in now:
            aside = f"{kept}/shipped/{rel}"
            commands.append(StringCommand("mkdir", "-p", QuoteString(posixpath.dirname(aside))))
            commands.append(_mv(live, aside))
    if not commands:
        host.noop(f"serving files of {workflow} as before the ship")
        return
    yield from commands
