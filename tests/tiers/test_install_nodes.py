"""The host-side node-pack installer with real git repos, a real venv and a local package index."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.devkit.fleet.upstreams import node_pack_files
from comfyfleet.devkit.upstreams.pypi import PackageIndex
from tiers.helpers import INSTALL_NODES, write_plan

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path | None = None) -> str:
    import os

    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env={**os.environ, **GIT_ENV}
    ).stdout.strip()


def recording_script(path: Path, body: str) -> None:
    """An executable sh script (a stand-in for a runtime or a recording shim around a real tool)."""
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def local_dirs(tmp_path: Path, nodes: Path) -> dict[str, str]:
    """The plan's folders for a run on this machine."""
    return {
        "custom_nodes_dir": str(nodes),
        "state_dir": str(tmp_path / "state"),
        "comfyui_dir": str(tmp_path / "ComfyUI"),
    }


def make_pack(root: Path, name: str, versions: list[str], **kwargs: Any) -> tuple[str, dict[str, str]]:
    """A bare repo at root/<name>.git with one tagged commit per version; returns (url, {version: commit})."""
    work = root / "work" / name
    work.mkdir(parents=True)
    git("init", "-q", "-b", "master", str(work))
    commits = {}
    for v in versions:
        for rel, text in node_pack_files(
            name,
            kwargs.get("classes", [f"{name}Node"]),
            kwargs.get("requirements"),
            kwargs.get("install_py", False),
            kwargs.get("broken", False),
            v,
        ).items():
            (work / rel).write_text(text)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", v, cwd=work)
        git("tag", f"v{v}", cwd=work)
        commits[v] = git("rev-parse", "HEAD", cwd=work)
    bare = root / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    return f"file://{bare}", commits


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageIndex]:
    idx = PackageIndex(tmp_path_factory.mktemp("wheels")).start()
    idx.add("torch", "2.5.1")
    idx.add("torch", "2.9.0")  # newer: what an unconstrained pip would grab
    idx.add("tinydep", "1.0", requires=["torch"])
    idx.add("greedy", "1.0", requires=["torch>=2.9"])
    try:
        yield idx
    finally:
        idx.stop()


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory: pytest.TempPathFactory, index: PackageIndex) -> Path:
    """A venv standing in for the runtime's persistent env, with 'torch' 2.5.1 already in it."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--index-url",
            index.url,
            "torch==2.5.1",
        ],
        check=True,
        timeout=300,
    )
    return py


def installed(py: Path, name: str) -> str | None:
    proc = subprocess.run(
        [str(py), "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def run_plan(tmp_path: Path, plan: dict[str, Any], mode: str) -> tuple[int, dict[str, Any], str]:
    path = write_plan(tmp_path / f"plan-{mode}.json", plan)
    proc = subprocess.run(
        [sys.executable, str(INSTALL_NODES), "--plan", str(path), mode],
        capture_output=True,
        text=True,
        timeout=600,
    )
    tagged = {}
    for line in proc.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word.isupper():
            tagged[word] = json.loads(rest)
    return proc.returncode, tagged, proc.stderr


def base_plan(tmp_path: Path, py: Path, index: PackageIndex, packs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "custom_nodes_dir": str(tmp_path / "custom_nodes"),
        "state_dir": str(tmp_path / "state"),
        "comfyui_dir": str(tmp_path / "ComfyUI"),
        "python": [str(py)],
        "cm_cli": None,
        "pip_args": ["--index-url", index.url],
        "protected": ["torch", "torchvision", "torchaudio", "numpy"],
        "packs": packs,
    }


def test_git_install_pins_version_installs_requirements_without_touching_torch_and_runs_install_py(
    tmp_path: Path, runtime_venv: Path, index: PackageIndex
) -> None:
    url, commits = make_pack(
        tmp_path, "PackReq", ["1.0.0", "1.1.0"], requirements=["torch>=2.6", "tinydep==1.0"], install_py=True
    )
    plan = base_plan(
        tmp_path,
        runtime_venv,
        index,
        [
            {
                "id": "packreq",
                "repo": url,
                "version": "1.0.0",
                "dir": "PackReq",
                "registry": True,
                "provides": ["PackReqNode"],
            },
        ],
    )
    rc, out, err = run_plan(tmp_path, plan, "install")
    assert rc == 0, err
    row = out["RESULT"][0]
    assert row["method"] == "git" and "cm-cli" in row["why"]
    assert row["commit"] == commits["1.0.0"]
    assert installed(runtime_venv, "tinydep") == "1.0"
    assert installed(runtime_venv, "torch") == "2.5.1"
    assert any("kept the runtime's torch (2.5.1)" in w for w in row["warnings"])
    assert (tmp_path / "custom_nodes/PackReq/install-ran").exists()

    rc, out, _ = run_plan(tmp_path, plan, "check")
    assert out["CHECK"] == [{"id": "packreq", "dir": "PackReq", "needs": []}]
    rc, out, _ = run_plan(tmp_path, plan, "install")
    assert rc == 0 and out["RESULT"][0]["status"] == "ok" and out["RESULT"][0]["changed"] == []

    # A new pin moves the checkout; requirements are unchanged, install.py runs for the new commit.
    plan["packs"][0]["version"] = commits["1.1.0"]
    rc, out, _ = run_plan(tmp_path, plan, "check")
    assert out["CHECK"][0]["needs"]
    rc, out, err = run_plan(tmp_path, plan, "install")
    assert rc == 0, err
    assert out["RESULT"][0]["commit"] == commits["1.1.0"]
    assert "ran install.py" in out["RESULT"][0]["changed"]


def test_requirement_that_would_swap_torch_fails_the_pack_and_torch_stays(
    tmp_path: Path, runtime_venv: Path, index: PackageIndex
) -> None:
    url, _ = make_pack(tmp_path, "Greedy", ["1.0.0"], requirements=["greedy==1.0"])
    plan = base_plan(
        tmp_path,
        runtime_venv,
        index,
        [
            {
                "id": "greedy",
                "repo": url,
                "version": None,
                "dir": "Greedy",
                "registry": False,
                "provides": [],
            },
        ],
    )
    rc, out, err = run_plan(tmp_path, plan, "install")
    assert rc == 1
    row = out["RESULT"][0]
    assert row["status"] == "failed" and "pip could not install greedy==1.0" in row["error"]
    assert "error: pack greedy" in err
    assert installed(runtime_venv, "torch") == "2.5.1"
    assert installed(runtime_venv, "greedy") is None


def test_local_modifications_are_never_overwritten(
    tmp_path: Path, runtime_venv: Path, index: PackageIndex
) -> None:
    url, commits = make_pack(tmp_path, "Edited", ["1.0.0", "2.0.0"])
    pack = {
        "id": "edited",
        "repo": url,
        "version": commits["1.0.0"],
        "dir": "Edited",
        "registry": False,
        "provides": [],
    }
    plan = base_plan(tmp_path, runtime_venv, index, [pack])
    assert run_plan(tmp_path, plan, "install")[0] == 0
    init = tmp_path / "custom_nodes/Edited/__init__.py"
    init.write_text(init.read_text() + "\n# operator's hotfix\n")
    pack["version"] = commits["2.0.0"]
    rc, out, _ = run_plan(tmp_path, plan, "install")
    assert rc == 1 and "local modifications" in out["RESULT"][0]["error"]
    assert "operator's hotfix" in init.read_text()
    rc, out, _ = run_plan(tmp_path, plan, "list")
    assert out["LIST"][0]["modified"] is True and out["LIST"][0]["commit"] == commits["1.0.0"]


def test_unknown_commit_fails_with_the_fix(tmp_path: Path, runtime_venv: Path, index: PackageIndex) -> None:
    url, _ = make_pack(tmp_path, "Pinned", ["1.0.0"])
    plan = base_plan(
        tmp_path,
        runtime_venv,
        index,
        [
            {
                "id": "pinned",
                "repo": url,
                "version": "deadbeef" * 5,
                "dir": "Pinned",
                "registry": False,
                "provides": [],
            },
        ],
    )
    rc, out, _ = run_plan(tmp_path, plan, "install")
    assert rc == 1 and "is not in" in out["RESULT"][0]["error"]


def test_cm_cli_path_command_level(tmp_path: Path, runtime_venv: Path, index: PackageIndex) -> None:
    """cm-cli needs the Comfy Registry: here a recording stand-in checks the command we run."""
    record = tmp_path / "cm-cli-argv.json"
    fake = (
        "import json, os, sys\n"
        f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
        "spec = sys.argv[2]; name, ver = spec.split('@')\n"
        f"d = os.path.join({str(tmp_path / 'custom_nodes')!r}, name); os.makedirs(d, exist_ok=True)\n"
        "open(os.path.join(d, 'pyproject.toml'), 'w').write(f'[project]\\nversion = \"{ver}\"\\n')\n"
        "open(os.path.join(d, '.tracking'), 'w').write('')\n"
    )
    cm = tmp_path / "cm" / "cm_cli"
    cm.mkdir(parents=True)
    (cm / "__init__.py").write_text("")
    (cm / "__main__.py").write_text(fake)
    py = [str(runtime_venv)]
    plan = base_plan(
        tmp_path,
        runtime_venv,
        index,
        [
            {
                "id": "comfyui-kjnodes",
                "repo": "file:///nonexistent/ComfyUI-KJNodes.git",
                "version": "1.1.7",
                "dir": "comfyui-kjnodes",
                "registry": True,
                "provides": [],
            },
        ],
    )
    # The runtime's Python, with the cm_cli package importable (PYTHONPATH through env(1)).
    plan["python"] = ["env", f"PYTHONPATH={cm.parent}", *py]
    plan["cm_cli"] = ["env", f"PYTHONPATH={cm.parent}", *py, "-m", "cm_cli"]
    rc, out, err = run_plan(tmp_path, plan, "install")
    assert rc == 0, err
    row = out["RESULT"][0]
    assert row["method"] == "manager" and "registry version 1.1.7 through cm-cli" == row["why"]
    assert json.loads(record.read_text()) == [
        "install",
        "comfyui-kjnodes@1.1.7",
        "--no-deps",
        "--exit-on-fail",
        "--mode",
        "remote",
    ]
    # Already at that registry version: nothing to do, cm-cli is not called again.
    record.unlink()
    rc, out, _ = run_plan(tmp_path, plan, "check")
    assert out["CHECK"][0]["needs"] == []
    # A commit pin goes through git even with cm-cli present, and says why.
    plan["packs"][0]["version"] = "0123456789abcdef0123456789abcdef01234567"
    plan["packs"][0]["registry"] = False
    rc, out, _ = run_plan(tmp_path, plan, "install")
    assert out["RESULT"][0]["method"] == "git" and not record.exists()


class _ObjectInfo(BaseHTTPRequestHandler):
    classes: dict[str, Any] = {}

    def do_GET(self) -> None:
        body = json.dumps(self.classes).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


COMFY_LOG = """\
Traceback (most recent call last):
  File "/data/ComfyUI/nodes.py", line 2131, in load_custom_node
    module_spec.loader.exec_module(module)
  File "/data/custom_nodes/BrokenPack/__init__.py", line 3, in <module>
    import missing_lib
ModuleNotFoundError: No module named 'missing_lib'

Cannot import /data/custom_nodes/BrokenPack module for custom nodes: No module named 'missing_lib'

Import times for custom nodes:
   0.0 seconds: /data/custom_nodes/GoodPack
   0.0 seconds (IMPORT FAILED): /data/custom_nodes/BrokenPack
"""


def test_verify_names_the_failed_pack_with_its_import_error(tmp_path: Path) -> None:
    _ObjectInfo.classes = {
        "KSampler": {"python_module": "nodes"},
        "GoodNode": {"python_module": "custom_nodes.GoodPack"},
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ObjectInfo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        log = tmp_path / "comfyui.log"
        log.write_text(COMFY_LOG)
        plan = {
            "custom_nodes_dir": str(tmp_path),
            "state_dir": str(tmp_path),
            "python": [sys.executable],
            "object_info_url": f"http://127.0.0.1:{server.server_address[1]}/object_info",
            "log_command": ["cat", str(log)],
            "core_classes": ["KSampler"],
            "packs": [
                {"id": "good", "dir": "GoodPack", "provides": ["GoodNode"]},
                {"id": "broken", "dir": "BrokenPack", "provides": ["BrokenNode"]},
            ],
        }
        rc, out, err = run_plan(tmp_path, plan, "verify")
    finally:
        server.shutdown()
        server.server_close()
    assert rc == 1
    packs = {p["id"]: p for p in out["VERIFY"]["packs"]}
    assert packs["good"]["missing"] == []
    assert packs["broken"]["missing"] == ["BrokenNode"]
    assert packs["broken"]["error"] == "ModuleNotFoundError: No module named 'missing_lib'"
    assert "pack broken (BrokenPack) failed to load: ModuleNotFoundError" in err


def test_update_moves_unpinned_packs_to_the_newest_commit_and_then_changes_nothing(
    tmp_path: Path, runtime_venv: Path, index: PackageIndex
) -> None:
    url, commits = make_pack(tmp_path, "Moving", ["1.0.0"])
    plan = base_plan(
        tmp_path,
        runtime_venv,
        index,
        [
            {
                "id": "moving",
                "repo": url,
                "version": None,
                "dir": "Moving",
                "registry": False,
                "provides": [],
            },
        ],
    )
    assert run_plan(tmp_path, plan, "install")[0] == 0
    work = tmp_path / "work" / "Moving"
    (work / "NEWS.md").write_text("2.0\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "2.0", cwd=work)
    git("push", "-q", str(tmp_path / "Moving.git"), "master", cwd=work)
    newest = git("rev-parse", "HEAD", cwd=work)
    # install keeps an unpinned pack where it is; the update check sees the new commit.
    _, out, _ = run_plan(tmp_path, plan, "check")
    assert out["CHECK"][0]["needs"] == []
    path = write_plan(tmp_path / "plan-fetch.json", plan)
    proc = subprocess.run(
        [sys.executable, str(INSTALL_NODES), "--plan", str(path), "check", "--fetch"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout.split("CHECK ", 1)[1])[0]["needs"] == [
        f"at {commits['1.0.0'][:12]}, wants {newest[:12]}"
    ]
    rc, out, err = run_plan(tmp_path, plan, "update")
    assert rc == 0, err
    assert out["RESULT"][0]["commit"] == newest
    proc = subprocess.run(
        [sys.executable, str(INSTALL_NODES), "--plan", str(path), "check", "--fetch"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout.split("CHECK ", 1)[1])[0]["needs"] == []


def test_clone_whose_default_branch_is_missing_fails_at_install_with_the_fix(
    tmp_path: Path, runtime_venv: Path, index: PackageIndex
) -> None:
    """A bare repo whose HEAD names a branch it lacks: git clone exits 0 with an empty folder."""
    url, _ = make_pack(tmp_path, "NoHead", ["1.0.0"])
    git("symbolic-ref", "HEAD", "refs/heads/gone", cwd=tmp_path / "NoHead.git")
    plan = base_plan(
        tmp_path,
        runtime_venv,
        index,
        [
            {
                "id": "nohead",
                "repo": url,
                "version": None,
                "dir": "NoHead",
                "registry": False,
                "provides": ["NoHeadNode"],
            },
        ],
    )
    rc, out, err = run_plan(tmp_path, plan, "install")
    assert rc == 1, err
    row = out["RESULT"][0]
    assert row["status"] != "ok" and "default branch (HEAD) does not exist" in json.dumps(row), row
    assert not (tmp_path / "custom_nodes" / "NoHead").exists()
    # Pinned to its tag, the same repository installs.
    plan["packs"][0]["version"] = "1.0.0"
    rc, out, err = run_plan(tmp_path, plan, "install")
    assert rc == 0 and out["RESULT"][0]["status"] == "changed", (out, err)
    assert (tmp_path / "custom_nodes" / "NoHead" / "__init__.py").exists()


# What comfyui_manager 4.3's cm-cli does with "install <id>@<version>" (glob/manager_core.py,
# UnifiedManager._cnr_install): unpack into get_default_custom_nodes_path()/<id>, where that
# path is ComfyUI's folder_paths.get_folder_paths("custom_nodes")[0]. The registry download is
# what this stand-in leaves out.
CM_CLI_STANDIN = """
import os, sys
import folder_paths

def get_default_custom_nodes_path():
    return folder_paths.get_folder_paths("custom_nodes")[0]

node_id, version = sys.argv[2].split("@")
install_path = os.path.join(get_default_custom_nodes_path(), node_id)
os.makedirs(install_path, exist_ok=True)
with open(os.path.join(install_path, "pyproject.toml"), "w") as f:
    f.write(f'[project]\\nversion = "{version}"\\n')
open(os.path.join(install_path, ".tracking"), "w").close()
"""


def test_cm_cli_installs_land_in_the_base_directory_comfyui_loads(
    tmp_path: Path, runtime_venv: Path, index: PackageIndex
) -> None:
    """The plan's cm-cli command (the launcher the hosts run), with a ComfyUI checkout as COMFYUI_PATH
    and the data root's custom_nodes/ that ``main.py --base-directory <data root>`` loads."""
    import shutil

    from comfyfleet.deploys.nodes import CM_CLI_LAUNCHER

    comfy = tmp_path / "root" / "ComfyUI"
    shutil.copytree(Path(__file__).resolve().parents[1] / "standin" / "comfyui", comfy)
    data_nodes = tmp_path / "root" / "custom_nodes"
    cm = tmp_path / "cm" / "cm_cli"
    cm.mkdir(parents=True)
    (cm / "__init__.py").write_text("")
    (cm / "__main__.py").write_text(CM_CLI_STANDIN)
    plan = base_plan(
        tmp_path,
        runtime_venv,
        index,
        [
            {
                "id": "comfyui-kjnodes",
                "repo": "file:///nonexistent/ComfyUI-KJNodes.git",
                "version": "1.1.7",
                "dir": "ComfyUI-KJNodes",
                "registry": True,
                "provides": [],
            },
        ],
    )
    plan["custom_nodes_dir"] = str(data_nodes)
    env = ["env", f"COMFYUI_PATH={comfy}", f"PYTHONPATH={cm.parent}"]
    plan["python"] = [*env, str(runtime_venv)]
    # As node_plan builds it, with `docker exec -e COMFYUI_PATH=...` replaced by env(1).
    plan["cm_cli"] = [*env, str(runtime_venv), "-c", CM_CLI_LAUNCHER, str(data_nodes)]
    rc, out, err = run_plan(tmp_path, plan, "install")
    assert rc == 0, err
    row = out["RESULT"][0]
    assert row["method"] == "manager" and row["dir"] == "comfyui-kjnodes"
    assert (data_nodes / "comfyui-kjnodes" / ".tracking").is_file()
    assert not (comfy / "custom_nodes" / "comfyui-kjnodes").exists()
    # The folder cm-cli made is the one the next check looks at: nothing more to do.
    rc, out, _ = run_plan(tmp_path, plan, "check")
    assert out["CHECK"] == [{"id": "comfyui-kjnodes", "dir": "comfyui-kjnodes", "needs": []}]


def test_noop_check_starts_no_runtime_python_and_still_sees_registry_drift(tmp_path: Path) -> None:
    """A no-op check decides from disk: a registry pack already a git checkout, or installed by cm-cli
    at the pinned version, does not ask the runtime (a ``docker exec`` on a host) whether cm-cli exists;
    a cm-cli install at another version still asks, and still reports the drift."""
    url, _ = make_pack(tmp_path / "up", "GitPack", ["1.0.0"])
    nodes = tmp_path / "custom_nodes"
    nodes.mkdir()
    git("clone", "-q", url, str(nodes / "GitPack"))
    git("-c", "advice.detachedHead=false", "checkout", "-q", "v1.0.0", cwd=nodes / "GitPack")
    registry = nodes / "reg-pack"
    registry.mkdir()
    (registry / "pyproject.toml").write_text('[project]\nversion = "2.0.0"\n')
    (registry / ".tracking").write_text("")
    asked = tmp_path / "runtime-asked"
    runtime = tmp_path / "runtime-python"
    recording_script(runtime, f"echo asked >> {asked}\nexit 0")
    plan = {
        **local_dirs(tmp_path, nodes),
        "python": [str(runtime)],
        "cm_cli": [str(runtime), "-m", "cm_cli"],
        "use_manager": "auto",
        "packs": [
            {"id": "gitpack", "repo": url, "version": "1.0.0", "dir": "GitPack", "registry": True},
            {"id": "reg-pack", "repo": "", "version": "2.0.0", "dir": "RegPack", "registry": True},
        ],
    }
    rc, out, err = run_plan(tmp_path, plan, "check")
    assert rc == 0, err
    assert [r["needs"] for r in out["CHECK"]] == [[], []]
    assert [r["dir"] for r in out["CHECK"]] == ["GitPack", "reg-pack"]
    assert not asked.exists()
    plan["packs"][1]["version"] = "2.1.0"  # drift: cm-cli holds 2.0.0
    rc, out, err = run_plan(tmp_path, plan, "check")
    assert out["CHECK"][1]["needs"] == ["registry version 2.0.0 installed, wants 2.1.0"]
    assert asked.read_text().count("asked") == 1


@contextmanager
def comfy_object_info(info: dict[str, Any], per_class: bool) -> Iterator[tuple[str, dict[str, int]]]:
    """/object_info served by aiohttp (ComfyUI's server library); with ``per_class`` also
    /object_info/{node_class} answered as ComfyUI v0.8.0's server.py answers it (a stand-in of
    that route: the class, or {} when it is not loaded). Yields the URL and the requests counted."""
    import asyncio

    from aiohttp import web

    counts = {"full": 0, "one": 0}

    async def full(_: web.Request) -> web.Response:
        counts["full"] += 1
        return web.json_response(info)

    async def one(request: web.Request) -> web.Response:
        counts["one"] += 1
        name = request.match_info.get("node_class", "")
        return web.json_response({name: info[name]} if name in info else {})

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.router.add_get("/object_info", full)
    if per_class:
        app.router.add_get("/object_info/{node_class}", one)
    app.router.add_get("/broken", broken)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", counts
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def verify_plan(tmp_path: Path, url: str, core: list[str], packs: list[dict[str, Any]]) -> dict[str, Any]:
    """A verify plan against the ComfyUI at ``url``."""
    return {
        "custom_nodes_dir": str(tmp_path),
        "state_dir": str(tmp_path),
        "python": [sys.executable],
        "object_info_url": f"{url}/object_info",
        "core_classes": core,
        "packs": packs,
    }


def test_verify_reads_a_large_object_info_from_aiohttp_as_comfyui_serves_it(tmp_path: Path) -> None:
    """verify's plain-socket GET against aiohttp: a ~2 MB /object_info arrives whole (a ComfyUI
    without the per-class route), and an error status fails the check instead of passing as an
    empty answer."""
    info = {f"Node{i}": {"python_module": "nodes", "description": "x" * 200} for i in range(8000)}
    info["GoodNode"] = {"python_module": "custom_nodes.GoodPack"}
    with comfy_object_info(info, per_class=False) as (url, counts):
        plan = verify_plan(
            tmp_path, url, ["Node7999"], [{"id": "good", "dir": "GoodPack", "provides": ["GoodNode"]}]
        )
        rc, out, err = run_plan(tmp_path, plan, "verify")
        assert rc == 0, err
        assert out["VERIFY"]["classes"] == len(info) and out["VERIFY"]["missing_core"] == []
        assert counts["full"] == 1
        plan["object_info_url"] = f"{url}/broken"
        rc, out, err = run_plan(tmp_path, plan, "verify")
        assert rc == 1 and "answered 'HTTP/1.0 500" in err


def test_verify_asks_comfyui_for_the_needed_classes_only(tmp_path: Path) -> None:
    """A serving ComfyUI builds the whole /object_info on its event loop (every node's inputs,
    every model folder listed): verify asks /object_info/{class} for the classes the plan needs,
    names quoted as one path segment, and judges them as it judges the whole listing."""
    info = {f"Node{i}": {"python_module": "nodes"} for i in range(2000)}
    info |= {
        "Image Save": {"python_module": "custom_nodes.was-node-suite"},
        "CheckpointLoader|pysssss": {"python_module": "custom_nodes.ComfyUI-Custom-Scripts"},
        "Seed (rgthree)": {"python_module": "custom_nodes.rgthree-comfy"},
        "ÜberNode": {"python_module": "custom_nodes.umlaut"},
    }
    packs = [
        {"id": "was", "dir": "was-node-suite", "provides": ["Image Save"]},
        {"id": "pys", "dir": "ComfyUI-Custom-Scripts", "provides": ["CheckpointLoader|pysssss"]},
        {"id": "rg", "dir": "rgthree-comfy", "provides": ["Seed (rgthree)", "Lost Node (rgthree)"]},
        {"id": "um", "dir": "umlaut", "provides": ["ÜberNode"]},
    ]
    with comfy_object_info(info, per_class=True) as (url, counts):
        plan = verify_plan(tmp_path, url, ["Node3", "KSamplerGone"], packs)
        rc, out, err = run_plan(tmp_path, plan, "verify")
        assert rc == 1 and "pack rg (rgthree-comfy) failed to load" in err, err
        verdict = out["VERIFY"]
        assert counts == {"full": 0, "one": 7}
        assert {p["id"]: p["missing"] for p in verdict["packs"]} == {
            "was": [],
            "pys": [],
            "rg": ["Lost Node (rgthree)"],
            "um": [],
        }
        assert verdict["missing_core"] == ["KSamplerGone"]
        # The same judgement from the whole listing (a name with "/" cannot be one path segment).
        plan["packs"][0]["provides"].append("Odd/Name")
        rc, out, err = run_plan(tmp_path, plan, "verify")
        assert counts["full"] == 1 and rc == 1, err
        assert {p["id"]: p["missing"] for p in out["VERIFY"]["packs"]}["rg"] == ["Lost Node (rgthree)"]
        assert out["VERIFY"]["missing_core"] == ["KSamplerGone"] and out["VERIFY"]["classes"] == len(info)


def test_noop_check_reads_refs_without_git_and_still_sees_head_drift(tmp_path: Path) -> None:
    """A pack at its pinned tag (packed by clone, or loose after a fetch) and an unpinned pack on a
    branch are checked from .git's files alone; a HEAD moved off the tag is still reported."""
    import os

    url, commits = make_pack(tmp_path / "up", "TagPack", ["1.0.0", "1.1.0"])
    url_b, _ = make_pack(tmp_path / "up", "BranchPack", ["0.1.0"])
    nodes = tmp_path / "custom_nodes"
    nodes.mkdir()
    git("clone", "-q", url, str(nodes / "TagPack"))
    git("-c", "advice.detachedHead=false", "checkout", "-q", "v1.0.0", cwd=nodes / "TagPack")
    git("clone", "-q", url_b, str(nodes / "BranchPack"))
    real_git = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True).stdout.strip()
    calls = tmp_path / "git-calls"
    shim = tmp_path / "bin" / "git"
    shim.parent.mkdir()
    recording_script(shim, f'echo "$*" >> {calls}\nexec {real_git} "$@"')
    plan = {
        **local_dirs(tmp_path, nodes),
        "python": [sys.executable],
        "cm_cli": None,
        "packs": [
            {"id": "tagpack", "repo": url, "version": "1.0.0", "dir": "TagPack", "registry": False},
            {"id": "branchpack", "repo": url_b, "version": None, "dir": "BranchPack", "registry": False},
        ],
    }
    path = write_plan(tmp_path / "plan.json", plan)
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}"}

    def check() -> list[list[str]]:
        proc = subprocess.run(
            [sys.executable, str(INSTALL_NODES), "--plan", str(path), "check"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("CHECK "))
        return [r["needs"] for r in json.loads(line[6:])]

    assert check() == [[], []]
    assert not calls.exists()  # packed-refs (clone)
    git("tag", "-d", "v1.0.0", cwd=nodes / "TagPack")
    git("tag", "v1.0.0", commits["1.0.0"], cwd=nodes / "TagPack")  # now a loose ref
    assert check() == [[], []]
    assert not calls.exists()
    git("-c", "advice.detachedHead=false", "checkout", "-q", "v1.1.0", cwd=nodes / "TagPack")  # drift
    assert check()[0] == [f"at {commits['1.1.0'][:12]}, wants {commits['1.0.0'][:12]}"]
