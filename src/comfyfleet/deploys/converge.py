"""Convergence: ``deploy-all`` brings a fresh or drifted host to what the workflows need, as a pipeline.

The workflows' model downloads start first, detached on the host (:mod:`comfyfleet.deploys.model_job`);
meanwhile ComfyUI core at its pinned ref (the runtime deploy), the node packs, the API service
(host data ``deploy_api``: auto | true | false), a restart when nodes changed and the proof
(every class type in ``/object_info``); the run ends by waiting for the downloads. Each step
is idempotent, so a second run changes nothing. ``update`` moves one component.
"""

from __future__ import annotations

from collections.abc import Callable

from pyinfra import host

from comfyfleet.context import report
from comfyfleet.deploys import tasks
from comfyfleet.deploys.api import local_artifact
from comfyfleet.deploys.model_job import SCRIPTS as MODEL_SCRIPTS
from comfyfleet.deploys.model_job import start_models, wait_models
from comfyfleet.deploys.models import model_plan, needed_models
from comfyfleet.deploys.nodes import (
    install_nodes,
    load_manifests,
    needed_packs,
    node_plan,
    restart_and_wait,
    stage,
    staged_facts,
    tier_deploy,
    verify_nodes,
)
from comfyfleet.deploys.ops import update_core
from comfyfleet.deploys.runtime import deploy_runtime, runtime_facts
from comfyfleet.deploys.tasks import task
from comfyfleet.errors import BadInput
from comfyfleet.facts import prefetch
from comfyfleet.inventory import host_config
from comfyfleet.operations import comfyui

UPDATE_COMPONENTS = ("comfyui", "nodes", "manager", "api")


@tier_deploy("Deploy all")
def deploy_all() -> None:
    """ComfyUI core, nodes, models, API, restart, verify: one converging pass."""
    cfg = host_config(host)
    manifests = load_manifests(None, cfg.workflows_dir)
    # Refuse bad input (unsafe model names, unresolved classes) before anything runs.
    packs, core = needed_packs(manifests)
    models = needed_models(manifests)
    scripts = ["install_nodes.py", *MODEL_SCRIPTS]
    plans = {"nodes": node_plan(cfg, packs, core), "models": model_plan(cfg, models)}
    # One round trip reads the runtime's facts and the staged files with the tier checks.
    prefetch.prefetch(
        name="Read host state",
        requests=[*runtime_facts(cfg, cfg.comfyui_ref), staged_facts(cfg, scripts, plans)],
    )
    # The model bytes are the long pole: they start first (detached on the host) and only
    # the end of the run waits for them; ComfyUI, nodes and the API never need them.
    comfyui.directories(name="Data folders", paths=cfg.layout.directories)
    staged = stage(cfg, scripts, plans, "Host scripts and plans")
    start_models(manifests, staged=staged)
    deploy_runtime(prefetched=True)
    nodes = install_nodes(manifests, finish=False, staged=staged)
    api = api_step()
    if api is not None:
        api()
    restart_and_wait(cfg, nodes)
    verify_nodes(cfg, nodes)
    wait_models(manifests)


def api_step() -> Callable[[], None] | None:
    """The API deploy when ``deploy_api`` (auto | true | false) asks for it and it can run.

    ``auto`` deploys the API when its artifact exists (``scripts/build-binary``) and says
    so in the host's report when it does not; ``true`` makes a missing artifact an error.
    """
    tasks.load_all()
    api = tasks.TASKS.get("update-binary")
    cfg = host_config(host)
    if cfg.deploy_api is False or api is None:
        return None
    if cfg.deploy_api == "auto":
        try:
            local_artifact(cfg.api_binary)
        except BadInput as exc:
            report(host).note(f"API service skipped: {exc}")
            return None
    return api


@task("deploy-all")
def deploy_all_task() -> None:
    """Converge the host: ComfyUI core, custom nodes, models, API, restart, verify."""
    deploy_all()


@task("update")
def update_task() -> None:
    """``--data update=comfyui|nodes|manager|api`` moves one component (``component`` works too)."""
    cfg = host_config(host)
    component = cfg.update or (cfg.component if cfg.given("component") else "")
    if component not in UPDATE_COMPONENTS:
        raise BadInput(
            f"host {host.name}: update must be one of {', '.join(UPDATE_COMPONENTS)} (got {component!r})"
        )
    if component == "comfyui":
        update_core(cfg.ref or cfg.comfyui_ref)  # type: ignore[call-arg, arg-type]  # pyinfra's @deploy typing
    elif component in ("nodes", "manager"):
        # ComfyUI-Manager is a node pack (or the pip package pinned by ComfyUI itself): the
        # packs update covers the first, a runtime deploy reinstalls the second.
        install_nodes(load_manifests(None, cfg.workflows_dir), update=True)
    else:
        tasks.load_all()
        api = tasks.TASKS.get("update-binary")
        if api is None:
            raise BadInput("update api: the API service tasks are not installed in this version")
        api()
