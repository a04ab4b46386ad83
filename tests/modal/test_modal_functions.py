"""The Python the generated app runs on Modal, called here: installs, model fetching, ComfyUI, the API.

Image build steps (install_comfyui, install_node_pack) run in a throw-away virtualenv
that sees this project's packages through a .pth file, against local bare git repos
(GitHub stand-ins) and a local wheel folder (no index): the same code the Modal builder
runs, on the machine's real git and pip. fetch_models runs comfyfleet's host downloader
against the local Hugging Face / CivitAI stand-ins; start_comfyui and create_api run the
ComfyUI stand-in and the real comfyui-api.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from modal_helpers import GOLDEN, REPO, import_app

from comfyfleet.devkit.standin import copy_checkout, free_port
from comfyfleet.devkit.upstreams.model_servers import Upstreams

FETCH_MODELS = REPO / "src" / "comfyfleet" / "hostside" / "fetch_models.py"
INSTALL_NODES = REPO / "src" / "comfyfleet" / "hostside" / "install_nodes.py"


def pack_entry(pack_id: str, repo: str, version: str | None, directory: str) -> dict[str, Any]:
    """A NODE_PACKS entry as the generator writes it."""
    commit = bool(version) and len(version or "") >= 7 and all(c in "0123456789abcdef" for c in version or "")
    return {
        "id": pack_id,
        "repo": repo,
        "version": version,
        "dir": directory,
        "registry": bool(version) and not commit,
        "provides": [],
    }


# -- local upstreams --------------------------------------------------------------------


def git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def bare_repo(work: Path, bare: Path) -> str:
    """Publish work/ as a bare repo that, like GitHub, lets clients fetch any reachable commit."""
    git("clone", "-q", "--bare", str(work), str(bare), cwd=work.parent)
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
    return f"file://{bare}"


def commit_all(work: Path, message: str) -> str:
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel (installable with pip --no-index)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{dist}/RECORD", "")
    return path


@pytest.fixture(scope="module")
def build_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A virtualenv standing in for the image's Python: 'torch' 1.0 installed, 2.0 available."""
    root = tmp_path_factory.mktemp("build-env")
    venv = root / "venv"
    # No ensurepip: pip itself comes from the project environment through the .pth file.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # modal, aiohttp, ... come from the project's environment; installs land in this venv.
    Path(site, "_project.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheels = root / "wheels"
    wheels.mkdir()
    for name, version in (("torch", "1.0"), ("torch", "2.0"), ("tinypkg", "1.5"), ("tinypkg", "2.0")):
        wheel(wheels, name, version)
    env = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==1.0"], env=env, check=True)
    return {"python": python, "env": env, "root": root}


def run_in_build_env(
    build_env: dict[str, Any],
    app: Path,
    calls: list[tuple[str, dict[str, Any]]],
    constraints: Path,
    models_dir: Path,
) -> subprocess.CompletedProcess[str]:
    """Import the generated app in the build env and call its functions, as Modal's builder does."""
    driver = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('app', {str(app)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"m.CONSTRAINTS = {str(constraints)!r}; m.MODELS_DIR = {str(models_dir)!r}\n"
        f"for name, kwargs in json.loads({json.dumps(calls)!r}):\n"
        "    getattr(m, name)(**kwargs)\n"
    )
    return subprocess.run(
        [str(build_env["python"]), "-c", driver],
        env=build_env["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def installed_version(build_env: dict[str, Any], name: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    return subprocess.run(
        [str(build_env["python"]), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def upstream_repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("repos")
    comfy = copy_checkout(root / "ComfyUI")
    git("init", "-q", "-b", "master", cwd=comfy)
    tagged = commit_all(comfy, "ComfyUI v0.3.75")
    git("tag", "v0.3.75", cwd=comfy)
    (comfy / "AFTER_TAG").write_text("newer than the pinned ref\n")
    commit_all(comfy, "later work")

    pack = root / "ComfyUI-TestPack"
    pack.mkdir()
    git("init", "-q", "-b", "main", cwd=pack)
    (pack / "__init__.py").write_text(
        "class TestPackNode:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {}}\n"
        "    RETURN_TYPES = ()\n"
        "    FUNCTION = 'run'\n"
        "    OUTPUT_NODE = True\n"
        "    CATEGORY = 'test'\n"
        "    def run(self):\n"
        "        return ()\n"
        "NODE_CLASS_MAPPINGS = {'TestPackNode': TestPackNode}\n"
    )
    # A pack asking for torch (unpinned) and a helper library: torch must stay as the image has it.
    (pack / "requirements.txt").write_text("torch\ntinypkg\n")
    (pack / "install.py").write_text("open('installed.txt', 'w').write('install.py ran')\n")
    pack_tag = commit_all(pack, "release 1.1.7")
    git("tag", "v1.1.7", cwd=pack)
    (pack / "__init__.py").write_text("raise ImportError('unreleased work')\n")
    commit_all(pack, "unreleased")

    other = root / "PackB"
    other.mkdir()
    git("init", "-q", "-b", "main", cwd=other)
    (other / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    pinned = commit_all(other, "pinned commit")
    (other / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}  # later\n")
    commit_all(other, "later")
    return {
        "comfy": bare_repo(comfy, root / "ComfyUI.git"),
        "comfy_tag_commit": tagged,
        "pack": bare_repo(pack, root / "ComfyUI-TestPack.git"),
        "pack_tag_commit": pack_tag,
        "other": bare_repo(other, root / "PackB.git"),
        "other_commit": pinned,
    }


# -- image build steps ------------------------------------------------------------------


def test_image_build_steps_install_pinned_comfyui_and_packs_and_comfyui_serves_the_volume(
    tmp_path: Path, build_env: dict[str, Any], upstream_repos: dict[str, Any]
) -> None:
    comfyui_dir = tmp_path / "root" / "comfy" / "ComfyUI"
    models_dir = tmp_path / "models-volume"
    constraints = tmp_path / "constraints.txt"
    calls = [
        (
            "install_comfyui",
            {"repo": upstream_repos["comfy"], "ref": "v0.3.75", "comfyui_dir": str(comfyui_dir)},
        ),
        (
            "install_node_packs",
            {
                "packs": [pack_entry("testpack", upstream_repos["pack"], "1.1.7", "ComfyUI-TestPack")],
                "comfyui_dir": str(comfyui_dir),
                "installer": str(INSTALL_NODES),
            },
        ),
        (
            "install_node_packs",
            {
                "packs": [
                    pack_entry("packb", upstream_repos["other"], upstream_repos["other_commit"], "PackB")
                ],
                "comfyui_dir": str(comfyui_dir),
                "installer": str(INSTALL_NODES),
            },
        ),
    ]
    done = run_in_build_env(build_env, GOLDEN, calls, constraints, models_dir)
    assert done.returncode == 0, done.stdout + done.stderr

    assert git("rev-parse", "HEAD", cwd=comfyui_dir) == upstream_repos["comfy_tag_commit"]
    assert not (comfyui_dir / "AFTER_TAG").exists()
    pack = comfyui_dir / "custom_nodes" / "ComfyUI-TestPack"
    assert git("rev-parse", "HEAD", cwd=pack) == upstream_repos["pack_tag_commit"]
    assert (
        git("rev-parse", "HEAD", cwd=comfyui_dir / "custom_nodes" / "PackB") == upstream_repos["other_commit"]
    )
    assert (pack / "installed.txt").read_text() == "install.py ran"
    # The pack's requirements went in under the constraints: torch stayed, tinypkg arrived.
    assert installed_version(build_env, "torch") == "1.0"
    assert installed_version(build_env, "tinypkg") == "2.0"
    assert "torch==1.0" in constraints.read_text().split()
    # ComfyUI's models folder is the volume, as models/ on the hosts' data root.
    assert (comfyui_dir / "models").is_symlink()
    assert os.readlink(comfyui_dir / "models") == str(models_dir)

    # ComfyUI (the stand-in checkout) started by the container's start hook sees the volume and the pack.
    (models_dir / "checkpoints").mkdir(parents=True)
    (models_dir / "checkpoints" / "v1-5-pruned-emaonly-fp16.safetensors").write_bytes(b"x")
    app = import_app(GOLDEN)
    port = free_port()
    process = app.start_comfyui(comfyui_dir=str(comfyui_dir), port=port, timeout=60)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/models/checkpoints").json() == ["v1-5-pruned-emaonly-fp16.safetensors"]
        assert "TestPackNode" in httpx.get(f"{base}/object_info").json()
    finally:
        process.terminate()
        process.wait(10)


def test_pack_version_without_tag_fails_the_build_as_hosts_do(
    tmp_path: Path, build_env: dict[str, Any], upstream_repos: dict[str, Any]
) -> None:
    """The host installer's rule, on Modal too: a pinned version with no git tag fails, never the clone's HEAD."""
    comfyui_dir = tmp_path / "ComfyUI"
    calls = [
        (
            "install_node_packs",
            {
                "packs": [pack_entry("packb", upstream_repos["other"], "9.9.9", "PackB")],
                "comfyui_dir": str(comfyui_dir),
                "installer": str(INSTALL_NODES),
            },
        )
    ]
    done = run_in_build_env(build_env, GOLDEN, calls, tmp_path / "c.txt", tmp_path / "m")
    assert done.returncode != 0
    assert "version 9.9.9 of" in done.stderr and "has no git tag v9.9.9 or 9.9.9" in done.stderr


def test_unknown_pack_commit_fails_the_build(
    tmp_path: Path, build_env: dict[str, Any], upstream_repos: dict[str, Any]
) -> None:
    calls = [
        (
            "install_node_packs",
            {
                "packs": [pack_entry("packb", upstream_repos["other"], "f" * 40, "PackB")],
                "comfyui_dir": str(tmp_path / "ComfyUI"),
                "installer": str(INSTALL_NODES),
            },
        )
    ]
    done = run_in_build_env(build_env, GOLDEN, calls, tmp_path / "c.txt", tmp_path / "m")
    assert done.returncode != 0
    assert f"commit {'f' * 40} is not in" in done.stderr


def test_start_comfyui_reports_a_crash(tmp_path: Path) -> None:
    broken = tmp_path / "ComfyUI"
    broken.mkdir()
    (broken / "main.py").write_text("import sys; sys.exit(3)\n")
    with pytest.raises(RuntimeError, match="exited with status 3"):
        import_app(GOLDEN).start_comfyui(comfyui_dir=str(broken), port=free_port(), timeout=30)


# -- the download function --------------------------------------------------------------


@pytest.fixture
def upstreams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with Upstreams(tmp_path / "upstream") as up:
        monkeypatch.setenv("HF_ENDPOINT", up.hf_url)
        monkeypatch.setenv("CIVITAI_ENDPOINT", up.civitai_url)
        yield up


def test_fetch_models_uses_the_host_downloader(
    tmp_path: Path, upstreams: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF through HF_ENDPOINT, CivitAI with the token the Modal secret provides; verified, then kept."""
    hf = upstreams.add_hf("Comfy-Org/test-repo", "model.safetensors", 300_000)
    civ = upstreams.add_civitai(4242, "lora.safetensors", 120_000)
    monkeypatch.setenv("CIVITAI_API_TOKEN", upstreams.civitai_token)
    models = [
        {
            "folder": "checkpoints",
            "filename": "model.safetensors",
            "url": upstreams.hf_resolve_url("Comfy-Org/test-repo", "model.safetensors"),
            "sha256": hf.sha256,
            "size": None,
        },
        {
            "folder": "loras",
            "filename": "sub/lora.safetensors",
            "url": "https://civitai.com/api/download/models/4242",
            "sha256": None,
            "size": None,
        },
    ]
    app = import_app(GOLDEN)
    volume = tmp_path / "volume"
    results = app.fetch_models(models, models_dir=str(volume), fetcher=str(FETCH_MODELS))
    assert sorted(r["status"] for r in results) == ["downloaded", "downloaded"]
    got = volume / "checkpoints" / "model.safetensors"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == hf.sha256
    lora = volume / "loras" / "sub" / "lora.safetensors"
    assert hashlib.sha256(lora.read_bytes()).hexdigest() == civ.sha256
    sent = sum(upstreams.stats.bytes_sent.values())
    again = app.fetch_models(models, models_dir=str(volume), fetcher=str(FETCH_MODELS))
    assert [r["status"] for r in again] == ["present", "present"]
    assert sum(upstreams.stats.bytes_sent.values()) == sent, "a warm volume fetches nothing"


def test_fetch_models_refuses_a_wrong_hash(tmp_path: Path, upstreams: Any) -> None:
    upstreams.add_hf("Comfy-Org/test-repo", "bad.safetensors", 50_000)
    models = [
        {
            "folder": "checkpoints",
            "filename": "bad.safetensors",
            "url": upstreams.hf_resolve_url("Comfy-Org/test-repo", "bad.safetensors"),
            "sha256": "0" * 64,
            "size": None,
        }
    ]
    volume = tmp_path / "volume"
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        import_app(GOLDEN).fetch_models(models, models_dir=str(volume), fetcher=str(FETCH_MODELS))
    assert not (volume / "checkpoints" / "bad.safetensors").exists()


def test_fetch_models_names_the_missing_civitai_token(
    tmp_path: Path, upstreams: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstreams.add_civitai(777, "gated.safetensors", 10_000)
    monkeypatch.delenv("CIVITAI_API_TOKEN", raising=False)
    models = [
        {
            "folder": "loras",
            "filename": "gated.safetensors",
            "url": "https://civitai.com/api/download/models/777",
            "sha256": None,
            "size": None,
        }
    ]
    with pytest.raises(RuntimeError, match="CIVITAI_API_TOKEN"):
        import_app(GOLDEN).fetch_models(models, models_dir=str(tmp_path / "v"), fetcher=str(FETCH_MODELS))


# -- the API service --------------------------------------------------------------------


def test_create_api_serves_the_workflows_with_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app's create_api: the real comfyui-api in front of a ComfyUI stand-in, Bearer keys required."""
    from starlette.testclient import TestClient

    from comfyfleet.devkit.standin import Standin

    key = "modal-test-key-0123456789"
    monkeypatch.setenv("COMFYUI_API_KEYS", key)
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    shutil.copy(REPO / "workflows" / "txt2img.json", workflows / "txt2img.json")
    app = import_app(GOLDEN)
    with Standin(tmp_path / "comfy") as comfy:
        (comfy.models("checkpoints") / "v1-5-pruned-emaonly-fp16.safetensors").write_bytes(b"weights")
        api = app.create_api(comfyui_url=comfy.url, workflows_dir=str(workflows))
        with TestClient(api) as client:
            assert client.get("/health").status_code == 200
            for _ in range(100):  # the API connects to ComfyUI's websocket in the background
                if client.get("/ready").status_code == 200:
                    break
                time.sleep(0.1)
            assert client.get("/ready").status_code == 200, client.get("/ready").text
            assert client.post("/workflows/txt2img", json={}).status_code == 401
            resp = client.post("/workflows/txt2img", json={}, headers={"Authorization": f"Bearer {key}"})
            assert resp.status_code == 200, resp.text
            outputs = resp.json()["outputs"]
            assert outputs and base64.b64decode(outputs[0]["base64"]).startswith(b"\x89PNG")
