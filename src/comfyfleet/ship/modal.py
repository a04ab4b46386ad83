"""A ship to Modal: one app per deployment, generated from the same manifest the hosts get."""

from __future__ import annotations

import re
from pathlib import Path

from comfyfleet.modal_target import deploy as modal_deploy
from comfyfleet.modal_target.generate import generate_app
from comfyfleet.modal_target.modal_cli import ModalCli
from comfyfleet.modal_target.options import ModalOptions
from comfyfleet.registry import Registry, state_dir
from comfyfleet.ship.checks import generate_step, health_step
from comfyfleet.ship.pipeline import ShipContext, Step, each_host
from comfyfleet.ship.plan import AnalyzeFn, analyze_step
from comfyfleet.ship.record import record_step


def modal_app_name(name: str, environment: str) -> str:
    """The Modal app of one deployment (2-40 lower-case letters, digits and dashes)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", f"cf-{environment}-{name}".lower()).strip("-")
    return slug[:40].rstrip("-")


def modal_app_file(name: str, environment: str) -> Path:
    """Where ship writes a deployment's Modal app file (in the user's state directory)."""
    return state_dir() / "modal" / f"{environment}-{name}.py"


def modal_steps(ctx: ShipContext, registry: Registry, *, analyze: AnalyzeFn | None = None) -> list[Step]:
    """Ship to Modal: the app file and model volume, `modal deploy`, then the same checks as hosts.

    One Modal app per deployment (its own image, volume and endpoint), generated from the
    same manifest the hosts get; cold starts make the health budget long.
    """

    def prepare(ctx: ShipContext, host: str) -> None:
        options = ModalOptions(app_name=modal_app_name(ctx.name, ctx.environment)).checked()
        app = generate_app([ctx.workflow_path], options, out_path=modal_app_file(ctx.name, ctx.environment))
        facts = modal_deploy.read_app_facts(app.path)
        cli = ModalCli()
        modal_deploy.sync_secrets(facts, cli)
        modal_deploy.fill_models_volume(facts, cli)
        ctx.data["modal_facts"] = facts

    def deploy(ctx: ShipContext, host: str) -> None:
        deployed = modal_deploy.deploy_app(ctx.data["modal_facts"], ModalCli())
        ctx.endpoints[host] = deployed.url

    return [
        analyze_step(analyze),
        Step("install", each_host(prepare), timeout=6 * 3600),
        Step("api", each_host(deploy), timeout=3600),
        health_step(timeout=900, attempts=12),
        generate_step(timeout=1800),
        record_step(registry),
    ]
