"""Planning a ship: strict analysis, the target's hosts and where their API answers, one ship per host at a time."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from comfyui_api.names import BadWorkflowName, workflow_name

from comfyfleet import runner
from comfyfleet.analysis import analyze_paths
from comfyfleet.errors import BadInput
from comfyfleet.registry import Registry, check_name, state_dir
from comfyfleet.ship.checks import API_KEY_ENV, api_base_for, api_route_for, read_api_key
from comfyfleet.ship.pipeline import ShipContext, Step, here

MODAL = "modal"
"""The target (and host name) of a ship to Modal."""

AnalyzeFn = Callable[[Path], Any]


def unresolved_message(manifest: Any, path: Path) -> str | None:
    """One line listing what analysis could not resolve, or None when nothing."""
    problems: list[str] = []
    for node in manifest.unresolved.nodes:
        ids = ",".join(node.node_ids) or "?"
        problems.append(f"node {node.class_type} (#{ids}): {node.reason}")
    for model in manifest.unresolved.models:
        ids = ",".join(model.node_ids) or "?"
        problems.append(f"model {model.filename} (#{ids}): {model.reason}")
    if not problems:
        return None
    return (
        f"{path}: {len(problems)} unresolved, nothing was deployed: "
        + "; ".join(problems)
        + f" (add them to {path.parent / 'overrides.yaml'} and ship again)"
    )


def analyze_workflow(path: Path) -> Any:
    """The workflow's manifest, with the overrides.yaml of its folder, as the host tiers see it."""
    result = analyze_paths([path])
    if result.errors:
        raise BadInput(result.errors[0])
    if not result.manifests:
        raise BadInput(f"{path}: not a workflow")
    return result.manifests[0]


def analyze_step(analyze: AnalyzeFn | None = None, timeout: float = 60) -> Step:
    """Strict analysis here: anything unresolved stops the ship before any host is touched."""

    def run(ctx: ShipContext) -> None:
        manifest = (analyze or analyze_workflow)(ctx.workflow_path)
        message = unresolved_message(manifest, ctx.workflow_path)
        if message:
            raise BadInput(message)
        ctx.manifest = manifest

    return Step("analyze", here(run), timeout, local=True)


# -- planning a ship: the target's hosts and where their API answers ------------------

HostSpecs = list[tuple[str, dict[str, Any]]]


def api_key_files(specs: HostSpecs) -> dict[str, str]:
    """Each host's ``api_keys_file`` (the keys update-binary installs there), as absolute paths."""
    return {
        name: str(Path(str(data["api_keys_file"])).resolve())
        for name, data in specs
        if data.get("api_keys_file")
    }


def served_folder(host: str, data: Mapping[str, Any], workflow: Path) -> str:
    """The local workflows folder a host's API serves; the shipped workflow must be in it.

    update-binary mirrors that folder to the host (removing workflows not in it), so a
    ship from another folder would take the host's other endpoints away.
    """
    folder = data.get("workflows_dir")
    if not folder:
        return str(workflow.parent)
    if Path(str(folder)).resolve() != workflow.resolve().parent:
        raise BadInput(
            f"host {host} serves the workflows in {folder} (workflows_dir), and {workflow} is not there: "
            f"copy it into {folder} and ship that file (the API gets the whole folder)"
        )
    return str(folder)


def resolve_target(target: str) -> HostSpecs:
    """The target's hosts with their validated data (BadInput for a bad target or host data)."""
    return runner.prepare_hosts(target)


def prepare_ship(
    workflow: Path,
    target: str,
    environment: str,
    name: str | None,
    registry: Registry,
    *,
    resolve: Callable[[str], HostSpecs] = resolve_target,
) -> ShipContext:
    """Check the request and find the hosts; BadInput before anything runs when it cannot work."""
    path = Path(workflow)
    if not path.is_file():
        raise BadInput(f"{path}: workflow file not found: pass the path of a workflow JSON file")
    try:
        workflow_name(path)
    except BadWorkflowName as exc:
        raise BadInput(str(exc)) from None
    deployment_name = check_name(name or path.stem)
    check_name(environment, "environment")
    existing = registry.find(deployment_name, environment)
    if existing is not None and existing.workflow != path.stem:
        raise BadInput(
            f"deployment {deployment_name} ({environment}) serves workflow {existing.workflow}, not "
            f"{path.stem}: pass another --name, or delete it first"
        )
    if existing is not None and existing.target != target:
        raise BadInput(
            f"deployment {deployment_name} ({environment}) runs on {existing.target}, not {target}: "
            f"ship with --to {existing.target}, pass another --name, or delete it first"
        )
    ctx = ShipContext(workflow_path=path, name=deployment_name, environment=environment, target=target)
    key = os.environ.get(API_KEY_ENV)
    if key:
        ctx.data["api_key"] = key
    if target == MODAL:
        ctx.hosts = [MODAL]
        return ctx
    specs = [(n, {**d, "workflows_dir": served_folder(n, d, path)}) for n, d in resolve(target)]
    ctx.hosts = [n for n, _ in specs]
    ctx.endpoints = {n: api_base_for(n, d) for n, d in specs}
    # The checks reach each host's API through its SSH (an https:// api_url directly).
    routes = {n: api_route_for(n, d) for n, d in specs}
    ctx.data["ssh_routes"] = {n: r for n, r in routes.items() if r is not None}
    ctx.data["specs"] = specs
    ctx.data["api_key_files"] = api_key_files(specs)
    for host, path in ctx.data["api_key_files"].items():
        read_api_key(path, host)  # a missing or empty key file stops the ship before any host is touched
    # Hosts without api_keys_file generate their own key: the api step copies it here over SSH.
    ctx.data["fetched_key_files"] = {
        n: str(fetched_key_file(n)) for n, _ in specs if n not in ctx.data["api_key_files"]
    }
    ctx.data["api_key_files"].update(ctx.data["fetched_key_files"])
    return ctx


def fetched_key_file(host: str) -> Path:
    """Where ship keeps the API key it read from a host (owner-only, in the user's state directory)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", host).strip("._")[:60] or "host"
    digest = hashlib.sha256(host.encode()).hexdigest()[:8]
    return state_dir() / "api-keys" / f"{slug}-{digest}.key"


# -- one change at a time per host ----------------------------------------------------


class HostsBusy(Exception):
    """Another comfyfleet process is changing one of the hosts right now."""


@contextmanager
def hold_hosts(hosts: Sequence[str], what: str) -> Iterator[None]:
    """Hold an exclusive lock per host (in the state directory) while changing the hosts.

    Two ships, or a ship and a stop, on the same host at once would interleave their
    pyinfra operations and restarts. Locks die with the process, so a crash leaves none.
    """
    folder = state_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    held: list[int] = []
    try:
        for host in sorted(set(hosts)):
            path = folder / f"{hashlib.sha256(host.encode()).hexdigest()[:16]}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another comfyfleet process"
                os.close(fd)
                raise HostsBusy(f"host {host} is busy: {holder}; try again when it has finished") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} (pid {os.getpid()})".encode(), 0)
            held.append(fd)
        yield
    finally:
        for fd in held:
            os.close(fd)
