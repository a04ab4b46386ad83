"""Whether a deployment's hosts serve its workflow: the host side of `deployments stop/start`.

The marker ``<data_root>/api/disabled/<workflow>`` is what stops a workflow: the API
service (started with ``--disabled-dir``) checks that folder on every request, answers
404 "stopped" for a marked workflow and leaves it out of /openapi.json, and
``verify-endpoints`` reports it as stopped, so a ``deploy-all`` or ``--update-binary``
run by hand does not serve it again. A soft stop also parks the workflow's files in
``<data_root>/api/stopped/`` and restarts only the API container (needed for hosts whose
API predates the markers); every other workflow keeps being served, ComfyUI and the
models stay as they are, and nothing is deleted. ``start`` removes the marker and moves
the files back.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from comfyui_api.names import is_workflow_name
from pyinfra import host
from pyinfra.api import FactBase, QuoteString, StringCommand, deploy, operation

from comfyfleet.errors import BadInput
from comfyfleet.registry.store import Deployment

SUFFIXES = (".json", ".api.yaml")

ServingResult = tuple[bool, str | None, float]
"""(ok, cause when not ok, seconds) for one host."""


class ServingFiles(FactBase):
    """Which of a workflow's files are live, parked, and whether its stop marker exists."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, api_dir: str, workflow: str) -> StringCommand:
        paths = [f"{d}/{workflow}{s}" for d in ("workflows", "stopped") for s in SUFFIXES]
        paths.append(f"disabled/{workflow}")
        return StringCommand(
            "sh", "-c", QuoteString('cd "$1" 2>/dev/null || exit 0; shift; for p; do [ -e "$p" ] && echo "$p"; done; true'),
            "comfyfleet", QuoteString(api_dir), *(QuoteString(p) for p in paths),
        )

    def process(self, output: list[str]) -> list[str]:
        return [line.strip() for line in output if line.strip()]


class LiveStoppedFiles(FactBase):
    """Files in the API's workflows/ folder that belong to workflows marked stopped."""

    @staticmethod
    def default() -> list[str]:
        return []

    def command(self, api_dir: str) -> StringCommand:
        body = ('cd "$1/disabled" 2>/dev/null || exit 0; for n in *; do [ -f "$n" ] || continue; '
                'for s in .json .api.yaml; do [ -e "../workflows/$n$s" ] && echo "$n$s"; done; done; true')
        return StringCommand("sh", "-c", QuoteString(body), "comfyfleet", QuoteString(api_dir))

    def process(self, output: list[str]) -> list[str]:
        return sorted(line.strip() for line in output if line.strip())


@operation()
def repark(api_dir: str, keep: str) -> Generator[Any, None, None]:
    """Park again the files of stopped workflows that a re-upload (update-binary) brought back.

    + api_dir: ``<data_root>/api`` on the host
    + keep: the workflow being served now (its marker is being removed)
    """
    back = [f for f in host.get_fact(LiveStoppedFiles, api_dir=api_dir)
            if f not in (f"{keep}{s}" for s in SUFFIXES)]
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
        commands += [StringCommand("mkdir", "-p", QuoteString(f"{api_dir}/disabled")),
                     StringCommand("touch", QuoteString(path))]
    if not stopped:
        if f"disabled/{workflow}" in present:
            commands.append(StringCommand("rm", "-f", QuoteString(path)))
        # A ship re-uploaded the workflow while it was stopped: the live file is the newer one.
        commands += [StringCommand("rm", "-f", QuoteString(f"{api_dir}/stopped/{workflow}{s}"))
                     for s in SUFFIXES if f"workflows/{workflow}{s}" in present and f"stopped/{workflow}{s}" in present]
    if not commands:
        host.noop(f"stop marker of {workflow} {'present' if stopped else 'absent'}")
        return
    yield from commands


def serving_deploy(workflow: str, served: bool) -> Any:
    """A pyinfra deploy that serves or stops one workflow on the current host."""
    if not is_workflow_name(workflow):
        raise BadInput(f"workflow name {workflow!r} is not valid for the API service")

    @deploy(f"{'Serve' if served else 'Stop serving'} {workflow}")
    def switch() -> None:
        from comfyfleet.inventory import host_config
        from comfyfleet.operations import docker

        cfg = host_config(host)
        api_dir = f"{cfg.layout.root}/api"
        moved = parked(name=f"{'Serve' if served else 'Park'} workflow {workflow}", api_dir=api_dir,
                       workflow=workflow, served=served, _sudo=cfg.sudo)
        marker(name=f"Stop marker of {workflow}", api_dir=api_dir, workflow=workflow, stopped=not served,
               _sudo=cfg.sudo)
        # update-binary uploads the whole local workflows folder, stopped workflows included; the
        # API ignores them by marker, and parking them again keeps hosts with an older API right.
        others = repark(name="Keep stopped workflows stopped", api_dir=api_dir, keep=workflow, _sudo=cfg.sudo)

        def changed() -> bool:
            return moved.did_change() or others.did_change()

        # Endpoints are built at start: only the API restarts, and only when files moved.
        docker.restart(name="Restart comfyui-api", container=cfg.layout.api_container, _if=changed,
                       _sudo=cfg.sudo)
        docker.wait_http(name="comfyui-api health", url=f"http://127.0.0.1:{cfg.api_port}/health",
                         container=cfg.layout.api_container, timeout=cfg.health_timeout, _if=changed,
                         _sudo=cfg.sudo)

    switch.__name__ = f"{'serve' if served else 'stop'}-{workflow}"  # type: ignore[attr-defined]
    return switch


def set_serving(deployment: Deployment, served: bool) -> dict[str, ServingResult]:
    """Serve or stop a deployment's workflow on each of its hosts; per-host outcome."""
    from comfyfleet import runner
    from comfyfleet.ship import MODAL

    if deployment.target == MODAL:
        return {MODAL: _modal_serving(deployment, served)}

    wanted = {e.host for e in deployment.endpoints}
    specs = [(n, d) for n, d in runner.prepare_hosts(deployment.target) if n in wanted]
    missing = wanted - {n for n, _ in specs}
    started = time.monotonic()
    results: dict[str, ServingResult] = {
        n: (False, f"no longer in target {deployment.target}", 0.0) for n in sorted(missing)
    }
    if specs:
        run = runner.run(specs, serving_deploy(deployment.workflow, served))
        seconds = time.monotonic() - started
        for h in run.hosts:
            results[h.host] = (h.ok, None if h.ok else (h.reason or h.status), seconds)
    return results


def _modal_serving(deployment: Deployment, served: bool) -> ServingResult:
    """A Modal deployment is its own app: stop it (`modal app stop`), or deploy its app file again."""
    from comfyfleet.errors import HostFailure
    from comfyfleet.modal_target import deploy as modal_deploy
    from comfyfleet.modal_target.modal_cli import ModalCli
    from comfyfleet.ship import modal_app_file, modal_app_name

    started = time.monotonic()
    try:
        if served:
            modal_deploy.deploy_app(modal_deploy.read_app_facts(modal_app_file(deployment.name,
                                                                               deployment.environment)), ModalCli())
        else:
            modal_deploy.stop_app(modal_app_name(deployment.name, deployment.environment), ModalCli())
    except (BadInput, HostFailure) as exc:
        return False, str(exc), time.monotonic() - started
    return True, None, time.monotonic() - started
