"""scripts/build-binary: one reproducible .pyz that serves with a bare python3 3.10-3.12 (no site-packages)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, TINY, Api, Comfy, write_workflows


def interpreter(version: str) -> str | None:
    """A stock python of this version: on PATH, or a pyenv install."""
    found = shutil.which(f"python{version}")
    candidates = [found] if found else []
    candidates += sorted(
        str(p) for p in Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python{version}")
    )
    for c in candidates:
        ok = subprocess.run(
            [c, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
        )
        if ok.returncode == 0 and ok.stdout.strip() == str(tuple(int(x) for x in version.split("."))):
            return c
    return None


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "comfyui-api.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build-binary"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


def test_artifact_is_one_reproducible_file_without_compiled_code(pyz: Path, tmp_path: Path) -> None:
    names = zipfile.ZipFile(pyz).namelist()
    assert (
        "__main__.py" in names and "comfyui_api/app.py" in names and "comfyui_api/_build_info.json" in names
    )
    assert not [n for n in names if n.endswith((".so", ".pyd", ".pyc"))]
    for dep in (
        "starlette/",
        "uvicorn/",
        "httpx/",
        "websockets/",
        "h11/",
        "anyio/",
        "yaml/",
        "exceptiongroup/",
    ):
        assert any(n.startswith(dep) for n in names), dep
    again = tmp_path / "again.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build-binary"), "--out", str(again)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(pyz.read_bytes()).digest()


@pytest.mark.parametrize("version", ["3.10", "3.11", "3.12"])
def test_artifact_serves_with_a_bare_python(version: str, pyz: Path, comfy: Comfy, tmp_path: Path) -> None:
    python = interpreter(version)
    if python is None:
        pytest.skip(f"no python{version} on this machine")
    # -I -S: no user site, no site-packages — only what the .pyz carries.
    wf = write_workflows(tmp_path / "wf", {"tiny.json": TINY})
    api = Api(comfy.url, wf, tmp_path / "db.sqlite3", python=python, pyz=pyz)
    api.cmd[1:1] = ["-I", "-S"]
    with api:
        health = httpx.get(api.url + "/health").json()
        assert health["python"].startswith(version)
        assert health["build"]["source_sha256"] and health["build"]["dependencies"]["starlette"]
        r = httpx.post(api.url + "/workflows/tiny", json={"input": {"color": 0x123456}}, timeout=30)
        assert r.status_code == 200, r.text
        assert base64.b64decode(r.json()["outputs"][0]["base64"])[:4] == b"\x89PNG"
        # What verify-endpoints runs on a host: the same file's `verify` (the one client, vendored httpx).
        verify = [python, "-I", "-S", str(pyz), "verify", "--port", str(api.port), "--workflows", str(wf)]
        said = subprocess.run(verify, capture_output=True, text=True, timeout=120).stdout
        [row] = json.loads(said.split("VERIFY ", 1)[1])["workflows"]
        assert row["name"] == "tiny" and row["status"] == 200 and row["bytes"] > 0, said
