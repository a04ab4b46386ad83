"""Entry point: assembles the command groups and turns user errors into exit code 2."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from comfyfleet.cli import analyze, call, deployments, gateway, hosts, modal, ship
from comfyfleet.errors import BadInput

app = typer.Typer(
    name="comfyfleet",
    help="ComfyUI workflows to pinned, verified deployments on GPU hosts and Modal.\n\n"
    "Example: comfyfleet analyze workflows/",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for module in (analyze, hosts, modal, deployments, ship, call, gateway):
    module.register(app)

err = Console(stderr=True, highlight=False)


def main() -> None:
    try:
        app()
    except BadInput as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
