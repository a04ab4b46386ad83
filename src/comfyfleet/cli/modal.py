"""`comfyfleet modal generate | deploy | stop | status`: the workflows served on Modal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from comfyfleet.cli.output import err, fail, out
from comfyfleet.errors import HostFailure
from comfyfleet.modal_target import deploy as modal_deploy
from comfyfleet.modal_target.generate import DEFAULT_OUT, generate_app
from comfyfleet.modal_target.options import DEFAULT_APP_NAME, DEFAULT_GPU, ModalOptions

modal_app = typer.Typer(
    name="modal",
    help="Serve the workflows on Modal: one generated app file, deployed and verified.\n\n"
    "Example: comfyfleet modal generate workflows/ && comfyfleet modal deploy",
    no_args_is_help=True,
)

_defaults = ModalOptions()


@modal_app.command("generate")
def generate(
    workflows: Annotated[list[Path], typer.Argument(help="workflow JSON files or folders")],
    app: Annotated[
        str, typer.Option("--app", help="Modal app name (also the endpoint's label)")
    ] = DEFAULT_APP_NAME,
    gpu: Annotated[
        str, typer.Option("--gpu", help="Modal GPU type, e.g. L40S, A100-80GB, H100")
    ] = DEFAULT_GPU,
    out_file: Annotated[Path, typer.Option("--out", help="where to write the app file")] = DEFAULT_OUT,
    base_image: Annotated[
        str, typer.Option(help="pinned base image (the hosts' runtime image)")
    ] = _defaults.base_image,
    comfyui_repo: Annotated[str, typer.Option(help="ComfyUI git repository")] = _defaults.comfyui_repo,
    comfyui_ref: Annotated[str, typer.Option(help="ComfyUI tag, branch or commit")] = _defaults.comfyui_ref,
    scaledown_window: Annotated[
        int, typer.Option(help="seconds an idle container stays up")
    ] = _defaults.scaledown_window,
    max_containers: Annotated[
        int, typer.Option(help="most GPU containers at once")
    ] = _defaults.max_containers,
    concurrency: Annotated[
        int, typer.Option(help="requests one container takes at once")
    ] = _defaults.max_concurrent_requests,
    timeout: Annotated[int, typer.Option(help="seconds one request may run")] = _defaults.request_timeout,
    memory_snapshot: Annotated[
        bool, typer.Option(help="start ComfyUI before a (GPU) memory snapshot: faster cold starts, alpha")
    ] = False,
    volume: Annotated[str | None, typer.Option(help="models volume name [default: <app>-models]")] = None,
    api_secret: Annotated[str, typer.Option(help="Modal secret holding the API keys")] = _defaults.api_secret,
    civitai_secret: Annotated[
        str, typer.Option(help="Modal secret holding CIVITAI_API_TOKEN")
    ] = _defaults.civitai_secret,
    hf_secret: Annotated[
        str | None, typer.Option(help="Modal secret holding HF_TOKEN (for gated repos)")
    ] = None,
    api_source: Annotated[
        Path | None, typer.Option(help="comfyui-api source folder [default: this checkout's]")
    ] = None,
    allow_unresolved: Annotated[
        bool, typer.Option(help="write the app even when a node or model is unresolved")
    ] = False,
) -> None:
    """Write one readable Modal app file for the workflows (image, model volume, API service).

    Example: comfyfleet modal generate workflows/ --gpu A100-80GB --out deploy/modal_app.py
    """
    options = ModalOptions(
        app_name=app,
        gpu=gpu,
        base_image=base_image,
        comfyui_repo=comfyui_repo,
        comfyui_ref=comfyui_ref,
        scaledown_window=scaledown_window,
        max_containers=max_containers,
        max_concurrent_requests=concurrency,
        request_timeout=timeout,
        memory_snapshot=memory_snapshot,
        volume_name=volume,
        api_secret=api_secret,
        civitai_secret=civitai_secret,
        hf_secret=hf_secret,
    )
    generated = generate_app(
        workflows, options, out_file, api_source=api_source, allow_unresolved=allow_unresolved
    )
    out.print(f"wrote {generated.path} (app {generated.app_name}: {', '.join(generated.workflows)})")
    out.print(f"next: comfyfleet modal deploy {generated.path}")


@modal_app.command("deploy")
def deploy(
    app_file: Annotated[Path, typer.Argument(help="app file from `comfyfleet modal generate`")] = DEFAULT_OUT,
    models: Annotated[
        bool, typer.Option(help="fill the models volume (modal run FILE::download_models)")
    ] = True,
    verify: Annotated[bool, typer.Option(help="check /health and run one generation per workflow")] = True,
    health_timeout: Annotated[
        float, typer.Option(help="seconds to wait for the first /health (cold start)")
    ] = 900,
) -> None:
    """Deploy the app with `modal deploy`, fill its model volume, then verify the endpoint.

    Example: COMFYFLEET_API_KEY=... comfyfleet modal deploy deploy/modal_app.py
    """
    try:
        report = modal_deploy.deploy(
            app_file,
            echo=lambda line: err.print(line, markup=False),
            models=models,
            verify=verify,
            health_timeout=health_timeout,
        )
    except HostFailure as exc:
        fail(f"error: {exc}")
    table = Table(title=f"Modal app {report.facts.app_name}")
    table.add_column("step")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    table.add_row("endpoint", report.url or "-", "")
    if report.dashboard_url:
        table.add_row("dashboard", report.dashboard_url, "")
    for check in report.checks:
        table.add_row(check.name, ("ok: " if check.ok else "FAILED: ") + check.detail, f"{check.seconds:.1f}")
    out.print(table)
    if not report.ok:
        raise typer.Exit(1)


def _app_name(app_file: Path, app: str | None) -> str:
    return app or modal_deploy.read_app_facts(app_file).app_name


@modal_app.command("stop")
def stop(
    app_file: Annotated[Path, typer.Argument(help="app file (its APP_NAME is stopped)")] = DEFAULT_OUT,
    app: Annotated[
        str | None, typer.Option("--app", help="app name instead of reading it from the file")
    ] = None,
) -> None:
    """Stop the deployed app (`modal app stop`): its containers end, the model volume stays.

    Example: comfyfleet modal stop --app comfyfleet
    """
    try:
        out.print(modal_deploy.stop_app(_app_name(app_file, app)))
    except HostFailure as exc:
        fail(f"error: {exc}")


@modal_app.command("status")
def status(
    app_file: Annotated[Path, typer.Argument(help="app file (its APP_NAME is shown)")] = DEFAULT_OUT,
    app: Annotated[
        str | None, typer.Option("--app", help="app name instead of reading it from the file")
    ] = None,
) -> None:
    """Show the app's deployments as Modal lists them (`modal app list`).

    Example: comfyfleet modal status deploy/modal_app.py
    """
    name = _app_name(app_file, app)
    try:
        rows = modal_deploy.app_status(name)
    except HostFailure as exc:
        fail(f"error: {exc}")
    if not rows:
        out.print(f"no Modal app named {name} (deploy it with: comfyfleet modal deploy)")
        raise typer.Exit(1)
    table = Table(title=f"Modal app {name}")
    for column in ("app id", "state", "containers", "created", "stopped"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.app_id, row.state, row.tasks, row.created_at, row.stopped_at or "-")
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add the `modal` command group to the main app."""
    app.add_typer(modal_app, name="modal")
