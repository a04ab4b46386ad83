"""Tier 2: custom node packs from the workflows' manifests, pinned, installed, restarted, proven.

The work on the host is done by ``hostside/install_nodes.py`` (uploaded to
``<data_root>/.comfyfleet/bin``), driven by a JSON plan written next to it. Each pack is
installed through ComfyUI-Manager's ``cm-cli`` when the runtime has it and the pack is
pinned to a registry version, by git otherwise (the report says which and why). Its
requirements go into the persistent venv with the runtime's torch, torchvision,
torchaudio and numpy pinned by a constraints file (lines naming them are skipped), and
``install.py`` runs once per commit. ComfyUI is restarted only when something changed;
then every class type the workflows need must appear in ``/object_info``, and packs that
failed to import are reported with the error from the ComfyUI log.

Host data: ``workflow``, ``workflows_dir``, ``git_mirrors``, ``pip_index_url``,
``node_install_via`` (:mod:`comfyfleet.inventory` documents and validates every key). The
operations are in :mod:`comfyfleet.operations.packs` and :mod:`comfyfleet.operations.hostside`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.operation import OperationMeta

from comfyfleet.analysis import analyze_paths
from comfyfleet.deploys.tasks import task
from comfyfleet.errors import BadInput
from comfyfleet.facts import prefetch
from comfyfleet.facts.hostside import StagedFiles
from comfyfleet.inventory import HostConfig, host_config
from comfyfleet.manifest import Manifest, NodePack
from comfyfleet.operations import comfyui, docker
from comfyfleet.operations.downloads import job_status_argv
from comfyfleet.operations.hostside import MODELS_CHECK, NODES_CHECK, sync_files
from comfyfleet.operations.packs import list_packs, node_packs, report_packs, verify_classes

HOSTSIDE = Path(__file__).resolve().parents[1] / "hostside"
PROTECTED = ("torch", "torchvision", "torchaudio", "numpy")
# cm-cli installs into ComfyUI's folder_paths "custom_nodes"[0], which without ComfyUI's own
# argument parsing is COMFYUI_PATH/custom_nodes; the runtime starts ComfyUI with
# --base-directory <data root>, so it loads <data root>/custom_nodes. This launcher points
# folder_paths at that folder (argv[1]) before cm-cli's own code imports it.
CM_CLI_LAUNCHER = (
    "import os, runpy, sys; "
    "sys.path.insert(0, os.environ['COMFYUI_PATH']); "
    "import folder_paths; "
    "folder_paths.folder_names_and_paths['custom_nodes'] = ([sys.argv.pop(1)], set()); "
    "sys.argv[0] = 'cm-cli'; "
    "runpy.run_module('cm_cli', run_name='__main__', alter_sys=True)"
)
_DIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")


F = TypeVar("F", bound=Callable[..., Any])


def tier_deploy(name: str) -> Callable[[F], F]:
    """pyinfra's ``@deploy`` keeping the function's own signature for type checkers."""

    def wrap(fn: F) -> F:
        return cast(F, deploy(name)(fn))

    return wrap


# --- manifests on the operator's machine --------------------------------------------------

_ANALYSIS_CACHE: dict[tuple[str, ...], tuple[list[Manifest], list[str]]] = {}


def load_manifests(workflow: str | None, workflows_dir: str = "workflows") -> list[Manifest]:
    """Manifests of one workflow file, or of every workflow in ``workflows_dir`` (BadInput on bad files)."""
    target = workflow or workflows_dir
    path = Path(target)
    if not path.exists():
        raise BadInput(
            f"{target}: no such workflow file or folder (give --install-nodes FILE or add workflows/)"
        )
    # Every host of a run asks for the same analysis: keyed by the files' names and mtimes.
    watched = sorted(path.rglob("*")) if path.is_dir() else [path, *sorted(path.parent.glob("*.yaml"))]
    key = (str(path.resolve()), *(f"{p}:{p.stat().st_mtime_ns}" for p in watched if p.is_file()))
    if key not in _ANALYSIS_CACHE:
        result = analyze_paths([path])
        _ANALYSIS_CACHE[key] = (result.manifests, result.errors)
    manifests, errors = _ANALYSIS_CACHE[key]
    if errors:
        raise BadInput(errors[0])
    if not manifests:
        raise BadInput(f"{target}: no workflow found")
    return manifests


def needed_packs(manifests: list[Manifest]) -> tuple[list[NodePack], list[str]]:
    """Packs (deduplicated by repo, class lists merged) and the core classes of the manifests."""
    by_repo: dict[str, NodePack] = {}
    core: set[str] = set()
    for m in manifests:
        core.update(m.core_classes)
        for pack in m.custom_nodes:
            have = by_repo.get(pack.repo)
            if have is None:
                by_repo[pack.repo] = pack.model_copy(deep=True)
            else:
                if pack.version and have.version and pack.version != have.version:
                    raise BadInput(
                        f"{m.source}: pack {pack.repo} pinned to {pack.version}, another workflow pins "
                        f"{have.version}: align the versions in workflows/overrides.yaml"
                    )
                have.version = have.version or pack.version
                have.provides = sorted(set(have.provides) | set(pack.provides))
    folders: dict[str, str] = {}
    for pack in by_repo.values():
        other = folders.setdefault(pack_dir(pack).lower(), pack.repo)
        if other != pack.repo:
            raise BadInput(
                f"packs {other} and {pack.repo} would both be custom_nodes/{pack_dir(pack)} (a fork and its "
                "original?): keep one, naming it for every class under nodes: in workflows/overrides.yaml"
            )
    for m in manifests:
        for un in m.unresolved.nodes:
            raise BadInput(
                f"{m.source}: node {', '.join(un.node_ids) or '?'} class {un.class_type}: {un.reason} "
                "(add it under nodes: in workflows/overrides.yaml)"
            )
    return sorted(by_repo.values(), key=lambda p: p.repo), sorted(core)


def pack_dir(pack: NodePack) -> str:
    """Folder name below custom_nodes/: the repo's name, as ComfyUI-Manager names git installs."""
    name = pack.repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    if not _DIR_NAME.match(name) or name in (".", ".."):
        name = pack.id
    if not _DIR_NAME.match(name):
        raise BadInput(f"node pack {pack.id!r} ({pack.repo}): cannot make a safe folder name from it")
    return name


def clone_url(repo: str, mirrors: dict[str, str]) -> str:
    """The URL to clone: mirrors applied (longest prefix first), always ending in .git."""
    url = repo
    for prefix in sorted(mirrors, key=len, reverse=True):
        if repo.startswith(prefix):
            url = mirrors[prefix] + repo[len(prefix) :]
            break
    if not re.match(r"^(https?|ssh|file)://[A-Za-z0-9._~:/?#@%+=,-]+$|^git@[A-Za-z0-9._~:/%+=,-]+$", url):
        raise BadInput(f"node pack repo {repo!r} is not a git URL comfyfleet can clone")
    return url if url.endswith(".git") else url + ".git"


def runtime_python(cfg: HostConfig) -> list[str]:
    """argv prefix running the venv's Python inside the ComfyUI container (paths are identical there)."""
    lay = cfg.layout
    return ["docker", "exec", "-i", lay.comfyui_container, f"{lay.venv}/bin/python"]


def node_plan(cfg: HostConfig, packs: list[NodePack], core: list[str]) -> dict[str, Any]:
    """The JSON plan ``install_nodes.py`` carries out on the host."""
    lay = cfg.layout
    mirrors = cfg.git_mirrors
    pip_args = ["--index-url", cfg.pip_index_url] if cfg.pip_index_url else []
    return {
        "custom_nodes_dir": lay.custom_nodes,
        "state_dir": lay.state,
        "comfyui_dir": lay.comfyui,
        "python": runtime_python(cfg),
        "cm_cli": [
            "docker",
            "exec",
            "-i",
            "-e",
            f"COMFYUI_PATH={lay.comfyui}",
            lay.comfyui_container,
            f"{lay.venv}/bin/python",
            "-c",
            CM_CLI_LAUNCHER,
            lay.custom_nodes,
        ],
        "use_manager": "never" if cfg.node_install_via == "git" else "auto",
        "pip_args": pip_args,
        "protected": list(PROTECTED),
        "object_info_url": f"{cfg.comfyui_url}/object_info",
        "log_command": ["docker", "logs", "--tail", "5000", lay.comfyui_container],
        "core_classes": core,
        "packs": [
            {
                "id": p.id,
                "repo": clone_url(p.repo, mirrors),
                "version": p.version,
                "dir": pack_dir(p),
                "registry": bool(p.version) and not _COMMIT.match(p.version or ""),
                "provides": sorted(p.provides),
            }
            for p in packs
        ],
    }


# --- host-side scripts --------------------------------------------------------------------


def staged_facts(
    cfg: HostConfig, scripts: list[str], plans: dict[str, dict[str, Any]]
) -> prefetch.FactRequest:
    """The fact :func:`stage` reads, with the same arguments, for a caller's :func:`prefetch.prefetch`."""
    files, probes = stage_plan(cfg, scripts, plans)[1:]
    return StagedFiles, {"paths": tuple(sorted(files)), "probes": tuple(tuple(p) for p in probes)}


def stage_plan(
    cfg: HostConfig, scripts: list[str], plans: dict[str, dict[str, Any]]
) -> tuple[dict[str, str], dict[str, bytes], list[tuple[str, ...]]]:
    """What :func:`stage` uploads: remote paths by name, bytes by remote path, the staging probes."""
    state = cfg.layout.state
    paths: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for script_name in scripts:
        paths[script_name] = f"{state}/bin/{script_name}"
        files[paths[script_name]] = (HOSTSIDE / script_name).read_bytes()
    for plan_name, plan in plans.items():
        paths[plan_name] = f"{state}/plans/{plan_name}.json"
        files[paths[plan_name]] = json.dumps(plan, sort_keys=True, indent=1).encode()
    probes: list[tuple[str, ...]] = []
    if "install_nodes.py" in paths and "nodes" in paths:
        probes.append(("python3", paths["install_nodes.py"], "--plan", paths["nodes"], *NODES_CHECK))
    if "fetch_models.py" in paths and "models" in paths:
        probes.append(("python3", paths["fetch_models.py"], "--plan", paths["models"], *MODELS_CHECK))
    if "model_job.py" in paths and "models" in paths:
        probes.append(job_status_argv(cfg))
    return paths, files, probes


def stage(cfg: HostConfig, scripts: list[str], plans: dict[str, dict[str, Any]], name: str) -> dict[str, str]:
    """Upload host-side scripts (``<state>/bin``) and JSON plans (``<state>/plans``) in one operation.

    Returns remote paths by script name and plan name.
    """
    paths, files, probes = stage_plan(cfg, scripts, plans)
    sync_files(name=name, files=files, probes=probes)
    return paths


# --- deploys ------------------------------------------------------------------------------


def restart_and_wait(cfg: HostConfig, when: OperationMeta) -> None:
    """Restart ComfyUI (and wait for health) only when ``when`` changed something."""
    lay = cfg.layout
    docker.restart(
        name="Restart ComfyUI for new nodes",
        container=lay.comfyui_container,
        _if=when.did_change,
    )
    comfyui.wait_healthy(
        name="ComfyUI health after restart",
        url=cfg.comfyui_url,
        container=lay.comfyui_container,
        timeout=cfg.health_timeout,
        _if=when.did_change,
    )


def verify_nodes(cfg: HostConfig, install: OperationMeta | None = None) -> None:
    """Check /object_info against the plan uploaded by :func:`install_nodes` (same run)."""
    verify_classes(
        name="Verify node classes",
        script_path=f"{cfg.layout.state}/bin/install_nodes.py",
        plan_path=f"{cfg.layout.state}/plans/nodes.json",
        reuse_check=install,
    )


@tier_deploy("Custom nodes")
def install_nodes(
    manifests: list[Manifest], update: bool = False, finish: bool = True, staged: dict[str, str] | None = None
) -> OperationMeta:
    """Install the manifests' node packs; with ``finish``, restart ComfyUI if needed and prove every class loads.

    ``staged``: paths from a :func:`stage` call that already uploaded the script and the
    ``nodes`` plan (deploy-all stages every tier's files in one operation).
    """
    cfg = host_config(host)
    packs, core = needed_packs(manifests)
    paths = staged or stage(
        cfg, ["install_nodes.py"], {"nodes": node_plan(cfg, packs, core)}, "Node pack scripts and plan"
    )
    inst = node_packs(
        name="Node packs",
        script_path=paths["install_nodes.py"],
        plan_path=paths["nodes"],
        packs=len(packs),
        update=update,
    )
    report_packs(name="Node pack report", install=inst)
    if finish:
        restart_and_wait(cfg, inst)
        verify_nodes(cfg, inst)
    return inst


def _manifests_from_data(all_workflows: bool) -> list[Manifest]:
    cfg = host_config(host)
    workflow = None if all_workflows else cfg.workflow
    if not all_workflows and not workflow:
        raise BadInput("install-nodes needs a workflow: --install-nodes FILE (or --data workflow=FILE)")
    return load_manifests(workflow, cfg.workflows_dir)


@task("install-nodes")
def install_nodes_task() -> None:
    """``--data workflow=FILE``: the node packs of one workflow."""
    install_nodes(_manifests_from_data(all_workflows=False))


@task("install-missing")
def install_missing_task() -> None:
    """The node packs of every workflow in ``workflows_dir`` (default ``workflows/``)."""
    install_nodes(_manifests_from_data(all_workflows=True))


@task("update-nodes")
def update_nodes_task() -> None:
    """Fetch every pack; pinned ones stay at their pins, unpinned ones move to their latest commit."""
    install_nodes(_manifests_from_data(all_workflows=True), update=True)


@task("list-installed-nodes")
def list_installed_nodes_task() -> None:
    """Every pack in custom_nodes/ with its repo, commit, local changes and import state."""
    cfg = host_config(host)
    paths = stage(cfg, ["install_nodes.py"], {"nodes-list": node_plan(cfg, [], [])}, "Node pack scripts")
    list_packs(
        name="List node packs",
        script_path=paths["install_nodes.py"],
        plan_path=paths["nodes-list"],
    )
