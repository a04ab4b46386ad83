"""`comfyfleet analyze` and `comfyfleet index refresh`: thin wrappers over comfyfleet.analysis."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from comfyfleet.analysis import analyze_paths
from comfyfleet.analysis.analyzer import AnalysisResult
from comfyfleet.analysis.index_build import DEFAULT_INDEX_PATH, refresh
from comfyfleet.errors import BadInput
from comfyfleet.manifest import MANIFEST_SCHEMA_VERSION, Manifest

out_console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class OutputFormat(str, Enum):
    table = "table"
    yaml = "yaml"
    json = "json"


def register(app: typer.Typer) -> None:
    """Add `analyze` and the `index` group to the main app."""
    app.command("analyze")(analyze)
    index_app = typer.Typer(help="The offline knowledge index analysis uses.", no_args_is_help=True)
    index_app.command("refresh")(index_refresh)
    app.add_typer(index_app, name="index")


def analyze(
    paths: Annotated[
        list[Path], typer.Argument(help="Workflow JSON files or directories (searched recursively).")
    ],
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table (for people), yaml or json.")
    ] = OutputFormat.table,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Also write the manifest/lock to this file (json if --format json, else yaml).",
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when any node or model is unresolved.")
    ] = False,
) -> None:
    """Work out the custom node packs and model files workflows need.

    Example: comfyfleet analyze workflows/ --format yaml --out workflows/comfyfleet.lock.yaml

    Exit codes: 0 ok, 1 unresolved dependencies with --strict, 2 a file could not be analyzed.
    """
    result = analyze_paths(paths)
    single = len(paths) == 1 and paths[0].is_file()
    document = _document(result, single)
    if fmt is OutputFormat.table:
        for manifest in result.manifests:
            out_console.print(_table(manifest))
        if len(result.manifests) > 1 and result.lock.conflicts:
            for conflict in result.lock.conflicts:
                asked = "; ".join(f"{v}: {', '.join(w)}" for v, w in conflict.versions.items())
                out_console.print(f"[yellow]conflict[/] {conflict.repo} pinned differently ({asked})")
    elif document is not None:
        sys.stdout.write(_render(document, fmt))
    if out is not None and document is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            _render(document, OutputFormat.json if fmt is OutputFormat.json else OutputFormat.yaml)
        )
    for line in result.errors:
        err_console.print(f"error: {line}", markup=False, soft_wrap=True)
    if result.errors:
        raise typer.Exit(2)
    unresolved = any(m.unresolved for m in result.manifests)
    if strict and unresolved:
        err_console.print("unresolved dependencies (see above); failing because of --strict", markup=False)
        raise typer.Exit(1)


def _document(result: AnalysisResult, single: bool) -> dict[str, Any] | None:
    """Single file: its manifest. Otherwise the lock plus every manifest by workflow name."""
    if single:
        return result.manifests[0].model_dump(mode="json") if result.manifests else None
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "lock": result.lock.model_dump(mode="json"),
        "manifests": {m.workflow: m.model_dump(mode="json") for m in result.manifests},
    }


def _render(document: dict[str, Any], fmt: OutputFormat) -> str:
    if fmt is OutputFormat.json:
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _table(manifest: Manifest) -> Table:
    """One workflow: packs, models, unresolved items with reasons, skipped nodes."""
    table = Table(
        title=f"{manifest.workflow} ({manifest.format} format, {manifest.source})",
        title_justify="left",
        expand=False,
    )
    table.add_column("kind", style="bold")
    table.add_column("name", overflow="fold")
    table.add_column("where / why", overflow="fold")
    table.add_column("resolved by")
    for pack in manifest.custom_nodes:
        version = pack.version or "latest"
        table.add_row(
            "pack",
            pack.id,
            f"{pack.repo} @ {version}\nprovides: {', '.join(pack.provides)}",
            pack.resolved_by,
        )
    for model in manifest.models:
        table.add_row(
            "model", model.filename, f"models/{model.folder}/\n{model.url or '(no url)'}", model.source
        )
    for node in manifest.unresolved.nodes:
        table.add_row(
            "[red]unresolved node[/]", node.class_type, f"nodes {', '.join(node.node_ids)}: {node.reason}", ""
        )
    for item in manifest.unresolved.models:
        table.add_row(
            "[red]unresolved model[/]", item.filename, f"nodes {', '.join(item.node_ids)}: {item.reason}", ""
        )
    for skipped in manifest.skipped_nodes:
        table.add_row("[dim]skipped[/]", skipped.class_type, f"node {skipped.node_id}: {skipped.reason}", "")
    if manifest.core_classes:
        table.caption = f"{len(manifest.core_classes)} ComfyUI core class types (no pack needed)"
    return table


def index_refresh(
    manager_version: Annotated[
        str | None, typer.Option(help="comfyui-manager version (default: newest on PyPI).")
    ] = None,
    templates_version: Annotated[
        str | None, typer.Option(help="comfyui-workflow-templates-json version (default: newest).")
    ] = None,
    comfyui_src: Annotated[
        Path | None, typer.Option(help="ComfyUI checkout or bare git dir to read core class names from.")
    ] = None,
    wheel_dir: Annotated[
        Path | None, typer.Option(help="Use wheels already downloaded here instead of PyPI.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where to write the index.")] = DEFAULT_INDEX_PATH,
) -> None:
    """Rebuild the offline index from the comfyui-manager and templates wheels on PyPI.

    Example: comfyfleet index refresh --manager-version 4.3
    """
    try:
        index = refresh(out, manager_version, templates_version, comfyui_src, wheel_dir)
    except (OSError, RuntimeError, ValueError) as exc:
        raise BadInput(f"index refresh failed: {exc}") from None
    except Exception as exc:  # pip failures surface as CalledProcessError
        raise BadInput(f"index refresh failed: {type(exc).__name__}: {exc}") from None
    sources = index["sources"]
    out_console.print(
        f"wrote {out}: {len(index['core_classes'])} core classes, {len(index['classes'])} pack classes, "
        f"{len(index['models'])} models (comfyui-manager {sources.get('comfyui-manager')}, "
        f"templates {sources.get('comfyui-workflow-templates-json')})",
        markup=False,
    )
