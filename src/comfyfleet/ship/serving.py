"""`deployments stop/start`: whether a deployment's hosts (or its Modal app) serve its workflow.

On hosts the switch is :func:`comfyfleet.deploys.serving.serving_deploy` (a stop marker and
the workflow's files parked; only the API container restarts); a Modal deployment is its own
app, stopped with `modal app stop` or deployed again from its app file.
"""

from __future__ import annotations

import time

from comfyfleet import runner
from comfyfleet.deploys.serving import serving_deploy
from comfyfleet.errors import BadInput, HostFailure
from comfyfleet.modal_target import deploy as modal_deploy
from comfyfleet.modal_target.modal_cli import ModalCli
from comfyfleet.registry import Deployment
from comfyfleet.ship.modal import modal_app_file, modal_app_name
from comfyfleet.ship.plan import MODAL

ServingResult = tuple[bool, str | None, float]
"""(ok, cause when not ok, seconds) for one host."""


def set_serving(deployment: Deployment, served: bool) -> dict[str, ServingResult]:
    """Serve or stop a deployment's workflow on each of its hosts; per-host outcome."""
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
    started = time.monotonic()
    try:
        if served:
            modal_deploy.deploy_app(
                modal_deploy.read_app_facts(modal_app_file(deployment.name, deployment.environment)),
                ModalCli(),
            )
        else:
            modal_deploy.stop_app(modal_app_name(deployment.name, deployment.environment), ModalCli())
    except (BadInput, HostFailure) as exc:
        return False, str(exc), time.monotonic() - started
    return True, None, time.monotonic() - started
