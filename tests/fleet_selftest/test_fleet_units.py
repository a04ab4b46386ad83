"""Fast checks of the fleet's generated files (no engine needed): node packs and inventories."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from comfyfleet.devkit.fleet import Fleet, Host
from comfyfleet.devkit.fleet.upstreams import ComfyUIUpstream, GitUpstreams, _git, node_pack_files


def load_pack(tmp_path: Path, files: dict[str, str]) -> object:
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    spec = importlib.util.spec_from_file_location(f"pack_{tmp_path.name}", tmp_path / "__init__.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_node_pack_maps_its_classes_and_nodes_run(tmp_path: Path) -> None:
    files = node_pack_files("Pack", ["Alpha", "Beta"], ["six==1.16.0"], True, False, "1.2.0")
    pack = load_pack(tmp_path, files)
    mapping = pack.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
    assert sorted(mapping) == ["Alpha", "Beta"]
    node = mapping["Beta"]
    assert node.INPUT_TYPES() == {"required": {"text": ("STRING", {"default": ""})}}
    assert getattr(node(), node.FUNCTION)("hi") == ("hi via Beta 1.2.0",)
    assert files["requirements.txt"] == "six==1.16.0\n"
    assert 'version = "1.2.0"' in files["pyproject.toml"]
    subprocess.run([sys.executable, str(tmp_path / "install.py")], check=True)
    assert (tmp_path / "install-ran").read_text() == "ok"


def test_node_pack_with_own_class_body_and_broken_pack(tmp_path: Path) -> None:
    body = 'RETURN_TYPES = ("INT",)\nFUNCTION = "go"\n\ndef go(self):\n    return (42,)\n'
    (tmp_path / "a").mkdir()
    pack = load_pack(tmp_path / "a", node_pack_files("P", {"Answer": body}, None, False, False, "1"))
    assert pack.NODE_CLASS_MAPPINGS["Answer"]().go() == (42,)  # type: ignore[attr-defined]
    (tmp_path / "b").mkdir()
    with pytest.raises(RuntimeError, match="broken on purpose"):
        load_pack(tmp_path / "b", node_pack_files("Bad", ["X"], None, False, True, "1"))
    with pytest.raises(ValueError, match="identifier"):
        node_pack_files("Bad", ["not-a-class"], None, False, False, "1")


def test_written_inventory_loads_in_pyinfra_with_every_host_key(tmp_path: Path) -> None:
    fleet = Fleet(fleet_id="unit00")
    fleet.comfyui = ComfyUIUpstream(
        "http://127.0.0.1:1/comfyanonymous/ComfyUI.git", "v2", "v1", "v2", "v3-broken", False
    )
    fleet.runtime_image = "comfyfleet-fleet-runtime:abc"
    common = {"ssh_key": tmp_path / "k", "known_hosts": tmp_path / "kh", "container_prefix": "cf-unit00-"}
    hosts = [
        Host(
            "lambda1",
            "lambda",
            "ubuntu",
            2201,
            host_dir=tmp_path / "l",
            data_root="/tmp/x/l/data",
            comfyui_port=8101,
            api_port=3101,
            **common,
        ),  # type: ignore[arg-type]
        Host(
            "dc1",
            "datacrunch",
            "root",
            2202,
            host_dir=tmp_path / "d",
            data_root="/tmp/x/d/mnt/comfyfleet",
            comfyui_port=8102,
            api_port=3102,
            block_mount="/tmp/x/d/mnt",
            **common,
        ),  # type: ignore[arg-type]
    ]
    path = fleet.write_inventory(
        hosts, tmp_path / "inv.py", host_data={"dc1": {"comfyui_ref": "v1"}}, health_timeout=60
    )
    # pyinfra's own CLI reads it (in a subprocess: importing pyinfra_cli monkey-patches with gevent).
    pyinfra = Path(sys.executable).with_name("pyinfra")
    proc = subprocess.run(
        [str(pyinfra), str(path), "debug-inventory"], capture_output=True, text=True, timeout=60
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    got = {
        m.group(1): json.loads(m.group(2))
        for m in re.finditer(r"^\[(\w+)\]\s*\n--> Groups: [^\n]*\n--> Data:\n(\{.*?^\})", out, re.M | re.S)
    }
    assert set(got) == {"lambda1", "dc1"}, out
    lam, dc = got["lambda1"], got["dc1"]
    assert (lam["ssh_port"], lam["ssh_user"], lam["block_device"], lam["gpu"]) == (
        2201,
        "ubuntu",
        "none",
        False,
    )
    assert (dc["ssh_user"], dc["block_mount"], dc["comfyui_ref"], lam["comfyui_ref"]) == (
        "root",
        "/tmp/x/d/mnt",
        "v1",
        "v2",
    )
    assert lam["health_timeout"] == dc["health_timeout"] == 60
    assert lam["runtime_image"] == "comfyfleet-fleet-runtime:abc"
    assert lam["comfyui_repo"].startswith("http://127.0.0.1:")


def _comfyui_checkout(root: Path, releases: list[str]) -> Path:
    """A ComfyUI-shaped repository with one commit per release (untagged, as forks often are)."""

    work = root / "src"
    _git("init", "-q", "-b", "master", str(work))
    for version in releases:
        (work / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
        (work / "main.py").write_text("print('ComfyUI')\n")
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", f"ComfyUI v{version}", cwd=work)
    return work


@pytest.mark.parametrize("shape", ["single-commit", "shallow"])
def test_real_comfyui_upstream_from_a_checkout_without_history(tmp_path: Path, shape: str) -> None:
    """`git describe --tags HEAD^` has nothing to describe: the previous release is made, named as such."""

    if shape == "single-commit":
        checkout = _comfyui_checkout(tmp_path, ["0.8.0"])
    else:
        full = _comfyui_checkout(tmp_path, ["0.7.0", "0.8.0"])
        checkout = tmp_path / "shallow"
        _git("clone", "-q", "--depth", "1", f"file://{full}", str(checkout))
    up = GitUpstreams(tmp_path / "git").make_comfyui_repo(checkout)
    assert (up.new_ref, up.old_ref, up.broken_ref) == ("v0.8.0", "v0.8.0-previous", "v0.8.0-broken")
    assert up.versions == {"v0.8.0": "0.8.0", "v0.8.0-previous": "0.8.0-previous", "v0.8.0-broken": "0.8.0"}
