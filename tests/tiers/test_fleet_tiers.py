"""Tiers 2 and 3 and deploy-all on the SSH test fleet: real pyinfra, real git, pip, HTTP, docker.

Acceptance of the tiers issue: one workflow needing two node packs (one with requirements)
and three models (Hugging Face, gated Hugging Face with a token, CivitAI) is converged on
two hosts by one deploy-all; /object_info lists every class; ComfyUI runs the workflow; a
second run changes nothing; rolling 1 over three hosts stops at a broken one.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from comfyfleet.devkit.fleet import Fleet, Host
from comfyfleet.devkit.upstreams.model_servers import Upstreams
from comfyfleet.devkit.upstreams.pypi import PackageIndex
from comfyfleet.runner import RunOptions, RunResult, run
from tiers.helpers import compact_upscaler_safetensors

pytestmark = pytest.mark.fleet
ROOT = Path(__file__).resolve().parents[2]

PACK_A, PACK_B, BROKEN = "TierPackA", "TierPackB", "TierPackBroken"


UPSCALERS = ("x2-hf.safetensors", "x2-gated.safetensors", "x2-civitai.safetensors")


def workflow(text_nodes: dict[str, str]) -> dict[str, Any]:
    """API-format graph: three real upscale models in a row, the packs' nodes naming the output.

    The models are real RealESRGAN-Compact files (see ``compact_upscaler_safetensors``), so
    real ComfyUI loads each through spandrel and runs it on CPU; the stand-in only lists them.
    The packs' STRING nodes build SaveImage's ``filename_prefix``: their code must run.
    """
    wf: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0x336699},
        },
    }
    image: list[Any] = ["1", 0]
    for i, name in enumerate(UPSCALERS):
        loader, upscale = str(30 + 2 * i), str(31 + 2 * i)
        wf[loader] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": name}}
        wf[upscale] = {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": [loader, 0], "image": image},
        }
        image = [upscale, 0]
    previous: Any = "tiers"
    for cls, node_id in text_nodes.items():
        wf[node_id] = {"class_type": cls, "inputs": {"text": previous}}
        previous = [node_id, 0]
    wf["9"] = {"class_type": "SaveImage", "inputs": {"images": image, "filename_prefix": previous}}
    return wf


def real_world_pack(root: Path, version: str = "1.0.0") -> Path:
    """A node pack laid out like published ones: nodes in a module, a requirement it imports.

    ``__init__`` imports ``.nodes``, which imports ``tierdep`` at import time: when the
    requirement did not reach the runtime's Python, the pack fails to import and its class is
    absent from /object_info. ``torch>=99`` in requirements.txt must not replace the runtime's
    torch; install.py leaves a marker as real packs' install scripts leave downloads.
    """
    work = root / PACK_A
    (work / "web").mkdir(parents=True)
    (work / "__init__.py").write_text(
        "from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS\n\n"
        'WEB_DIRECTORY = "./web"\n__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]\n'
    )
    (work / "nodes.py").write_text(
        "import tierdep\n\n\n"
        "class TierNodeA:\n"
        '    CATEGORY = "text"\n    RETURN_TYPES = ("STRING",)\n    FUNCTION = "run"\n\n'
        "    @classmethod\n    def INPUT_TYPES(cls):\n"
        '        return {"required": {"text": ("STRING", {"default": "", "multiline": True})}}\n\n'
        "    def run(self, text):\n        return (tierdep.tag(text),)\n\n\n"
        'NODE_CLASS_MAPPINGS = {"TierNodeA": TierNodeA}\n'
        'NODE_DISPLAY_NAME_MAPPINGS = {"TierNodeA": "Tier Node A"}\n'
    )
    (work / "web" / "tier.js").write_text('import { app } from "../../scripts/app.js";\n')
    (work / "requirements.txt").write_text("tierdep==1.0\ntorch>=99\n")
    (work / "install.py").write_text(
        "import os\n\nopen(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'install-ran'), 'w').write('ok')\n"
    )
    (work / "pyproject.toml").write_text(
        f'[project]\nname = "{PACK_A.lower()}"\nversion = "{version}"\ndependencies = ["tierdep==1.0"]\n\n'
        f'[tool.comfy]\nPublisherId = "testorg"\nDisplayName = "{PACK_A}"\n'
    )
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "init", "-q", "-b", "master", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(work), "commit", "-q", "-m", f"{PACK_A} {version}"], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "tag", f"v{version}"], check=True)
    return work


GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t.invalid",
}


@pytest.fixture(scope="module")
def tiers(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Upstreams (models, wheels, node packs) and a workflows/ folder using them."""
    root = tmp_path_factory.mktemp("tiers")
    # Child processes: pyinfra's CLI module monkey-patches threading with gevent in this process.
    up = Upstreams(root / "models")
    index = PackageIndex(root / "wheels")
    up.add_hf("org/upscale", UPSCALERS[0], compact_upscaler_safetensors(1))
    up.add_hf("org/gated", UPSCALERS[1], compact_upscaler_safetensors(2), gated=True)
    up.add_civitai(4242, UPSCALERS[2], compact_upscaler_safetensors(3))
    index.add("tierdep", "1.0", code="def tag(text):\n    return text + '-tierdep'\n")
    up.start_process()
    index.start_process()
    try:
        base = fleet.upstreams.base_url
        fleet.upstreams.publish(f"testorg/{PACK_A}.git", real_world_pack(root / "packs"))
        fleet.make_node_pack_repo(PACK_B, classes=["TierNodeB"])
        fleet.make_node_pack_repo(BROKEN, classes=["TierNodeBroken"], broken=True)
        wf = root / "workflows"
        wf.mkdir()
        (wf / "tiered.json").write_text(json.dumps(workflow({"TierNodeA": "20", "TierNodeB": "21"})))
        (wf / "overrides.yaml").write_text(
            yaml.safe_dump(
                {
                    "nodes": {
                        "TierNodeA": {"repo": f"https://github.com/testorg/{PACK_A}", "version": "1.0.0"},
                        "TierNodeB": {"repo": f"https://github.com/testorg/{PACK_B}"},
                        "TierNodeBroken": {"repo": f"https://github.com/testorg/{BROKEN}"},
                    },
                    "models": {
                        UPSCALERS[0]: {
                            "folder": "upscale_models",
                            "url": up.hf_resolve_url("org/upscale", UPSCALERS[0]),
                        },
                        UPSCALERS[1]: {
                            "folder": "upscale_models",
                            "url": up.hf_resolve_url("org/gated", UPSCALERS[1]),
                        },
                        UPSCALERS[2]: {
                            "folder": "upscale_models",
                            "url": "https://civitai.com/models/9?modelVersionId=4242",
                        },
                    },
                }
            )
        )
        broken_wf = root / "broken-workflows"
        broken_wf.mkdir()
        (broken_wf / "broken.json").write_text(json.dumps(workflow({"TierNodeBroken": "20"})))
        (broken_wf / "overrides.yaml").write_text((wf / "overrides.yaml").read_text())
        data = {
            "workflows_dir": str(wf),
            "hf_endpoint": up.hf_url,
            "civitai_endpoint": up.civitai_url,
            "git_mirrors": {"https://github.com/": f"{base}/"},
            "pip_index_url": index.url,
            # The API service has its own fleet tests; here deploy-all stops at ComfyUI.
            "deploy_api": False,
        }
        yield {"up": up, "index": index, "data": data, "wf": wf, "broken_wf": broken_wf, "root": root}
    finally:
        up.stop()
        index.stop()


@pytest.fixture
def tokens(tiers: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", tiers["up"].hf_token)
    monkeypatch.setenv("CIVITAI_API_TOKEN", tiers["up"].civitai_token)


def by_host(result: RunResult) -> dict[str, Any]:
    return {h.host: h for h in result.hosts}


def object_info(host: Host) -> dict[str, Any]:
    return dict(httpx.get(f"http://127.0.0.1:{host.comfyui_port}/object_info", timeout=30).json())


def run_prompt(host: Host, graph: dict[str, Any]) -> dict[str, Any]:
    base = f"http://127.0.0.1:{host.comfyui_port}"
    resp = httpx.post(f"{base}/prompt", json={"prompt": graph}, timeout=30)
    assert resp.status_code == 200, resp.text
    prompt_id = resp.json()["prompt_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        hist = httpx.get(f"{base}/history/{prompt_id}", timeout=30).json()
        if prompt_id in hist and hist[prompt_id]["status"].get("completed") is not None:
            return dict(hist[prompt_id])
        time.sleep(0.5)
    raise AssertionError("prompt did not finish")


def test_deploy_all_converges_two_hosts_runs_the_workflow_and_reruns_as_no_change(
    fleet: Fleet,
    fleet_hosts: dict[str, Host],
    write_inventory: Callable[..., Path],
    tiers: dict[str, Any],
    tokens: None,
    tmp_path: Path,
) -> None:
    inv = write_inventory(list(fleet_hosts.values()), tmp_path / "inventory.py")
    result = run(str(inv), "deploy-all", tiers["data"])
    hosts = by_host(result)
    for name, h in hosts.items():
        assert h.status == "changed", f"{name}: {h.reason}"
        packs = {r[1]: r for r in h.report.sections["node packs"].rows}
        assert packs["TierPackA"][2] == "git" and "cm-cli" in packs["TierPackA"][3]
        assert "kept the runtime's torch" in packs["TierPackA"][6]
        models = {r[0]: r[1] for r in h.report.sections["models"].rows}
        assert models == {f"upscale_models/{m}": "downloaded" for m in UPSCALERS}
    for host in fleet_hosts.values():
        info = object_info(host)
        assert {"TierNodeA", "TierNodeB", "UpscaleModelLoader", "SaveImage"} <= set(info)
        assert info["TierNodeA"]["python_module"] == f"custom_nodes.{PACK_A}"
        assert all(m in json.dumps(info["UpscaleModelLoader"]["input"]) for m in UPSCALERS)
        # The requirement landed in the persistent venv, install.py ran, the tokens file is gone.
        lay_root = host.data_root
        assert (
            host.exec(f"ls {lay_root}/venv/lib/python3*/site-packages | grep -c '^tierdep'").stdout.strip()
            == "2"
        )
        assert host.exec(f"test -f {lay_root}/custom_nodes/{PACK_A}/install-ran", check=False).returncode == 0
        assert host.exec("ls -A ~/.comfyfleet-secrets", check=False).stdout.strip() == ""
        out = run_prompt(host, workflow({"TierNodeA": "20", "TierNodeB": "21"}))
        assert out["status"]["status_str"] == "success", out["status"]
        # Three x2 models ran on the 16 px image; the packs' code (and tierdep's) named the file.
        image = out["outputs"]["9"]["images"][0]
        assert image["filename"].startswith("tiers-tierdep via TierNodeB 1.0.0_"), image
        png = httpx.get(f"http://127.0.0.1:{host.comfyui_port}/view", params=image, timeout=30).content
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (128, 128)
    # Tokens never reached a command line on the hosts, nor the run's reports.
    dump = json.dumps([[s.rows for s in h.report.sections.values()] for h in result.hosts])
    assert tiers["up"].hf_token not in dump and tiers["up"].civitai_token not in dump

    again = run(str(inv), "deploy-all", tiers["data"])
    for name, h in by_host(again).items():
        assert h.status == "no change", f"{name}: {h.changed} {h.reason}"

    listed = by_host(run(str(inv), "list-installed-nodes", tiers["data"]))
    rows = {r[0]: r for r in listed["lambda1"].report.sections["installed node packs"].rows}
    assert rows[PACK_A][3] == "no" and rows[PACK_A][4] == "yes"
    assert rows[PACK_A][1].endswith(f"testorg/{PACK_A}.git")


def test_both_doors_report_nodes_and_storage_without_leaking_tokens(
    fleet_hosts: dict[str, Host],
    write_inventory: Callable[..., Path],
    tiers: dict[str, Any],
    tmp_path: Path,
) -> None:
    """`comfyfleet common` and `pyinfra ... deploy/common.py` on the hosts the acceptance test converged."""
    inv = write_inventory(list(fleet_hosts.values()), tmp_path / "inventory.py", **tiers["data"])
    env = {**os.environ, "HF_TOKEN": tiers["up"].hf_token, "CIVITAI_API_TOKEN": tiers["up"].civitai_token}
    bin_dir = Path(sys.executable).parent
    cli = subprocess.run(
        [str(bin_dir / "comfyfleet"), "common", str(inv), "--list-installed-nodes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert PACK_A in cli.stdout and PACK_B in cli.stdout
    cli = subprocess.run(
        [str(bin_dir / "comfyfleet"), "common", str(inv), "--storage-report"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert cli.returncode == 0 and "free on data root" in cli.stdout, cli.stdout + cli.stderr
    raw = subprocess.run(
        [
            str(bin_dir / "pyinfra"),
            "-y",
            str(inv),
            "deploy/common.py",
            "-v",
            "--data",
            "task=download-models",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert raw.returncode == 0, raw.stdout + raw.stderr
    assert "3 model file(s) in place" in raw.stdout + raw.stderr, raw.stdout + raw.stderr
    for out in (cli.stdout + cli.stderr, raw.stdout + raw.stderr):
        assert tiers["up"].hf_token not in out and tiers["up"].civitai_token not in out


def test_update_nodes_is_a_no_op_until_upstream_moves(
    fleet: Fleet,
    fleet_hosts: dict[str, Host],
    write_inventory: Callable[..., Path],
    tiers: dict[str, Any],
    tokens: None,
    tmp_path: Path,
) -> None:
    host = fleet_hosts["lambda1"]
    inv = write_inventory([host], tmp_path / "inventory.py")
    data = {**tiers["data"], "update": "nodes"}
    first = by_host(run(str(inv), "update", data))["lambda1"]
    assert first.status == "no change", (first.changed, first.reason)
    # A new commit on the unpinned pack's default branch.
    work = tmp_path / "work"
    subprocess.run(
        ["git", "clone", "-q", str(fleet.upstreams.repos / f"testorg/{PACK_B}.git"), str(work)], check=True
    )
    (work / "NEWS.md").write_text("newer\n")
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "-C", str(work), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(work), "commit", "-q", "-m", "newer"], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "HEAD"], check=True)
    newest = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    moved = by_host(run(str(inv), "update", data))["lambda1"]
    assert moved.status == "changed", moved.reason
    rows = {r[1]: r for r in moved.report.sections["node packs"].rows}
    assert rows[PACK_B][4] == newest[:12]
    assert "TierNodeB" in object_info(host)
    assert by_host(run(str(inv), "update", data))["lambda1"].status == "no change"


def test_pack_that_fails_to_import_is_named_with_its_error(
    fleet_hosts: dict[str, Host], write_inventory: Callable[..., Path], tiers: dict[str, Any], tmp_path: Path
) -> None:
    host = fleet_hosts["dc1"]
    inv = write_inventory([host], tmp_path / "inventory.py")
    data = {**tiers["data"], "workflows_dir": str(tiers["broken_wf"])}
    result = run(str(inv), "install-missing", data)
    h = by_host(result)["dc1"]
    assert h.status == "failed" and result.exit_code == 1
    assert f"pack {BROKEN.lower()}" in h.reason.lower() and "broken on purpose" in h.reason
    rows = h.report.sections["node classes in /object_info"].rows
    assert rows[0][2] == "NO" and "RuntimeError: node pack TierPackBroken is broken on purpose" in rows[0][4]


def test_rolling_one_stops_at_a_broken_host_and_leaves_the_next_untouched(
    fleet: Fleet,
    fleet_hosts: dict[str, Host],
    start_host: Callable[..., Host],
    write_inventory: Callable[..., Path],
    tiers: dict[str, Any],
    tokens: None,
    tmp_path: Path,
) -> None:
    assert fleet.comfyui is not None
    broken = start_host(name="tierbroken")
    third = start_host(name="tierthird")
    try:
        inv = write_inventory(
            [fleet_hosts["lambda1"], broken, third],
            tmp_path / "inventory.py",
            host_data={"tierbroken": {"comfyui_ref": fleet.comfyui.broken_ref}},
        )
        result = run(str(inv), "deploy-all", tiers["data"], RunOptions(rolling=1))
        hosts = by_host(result)
        assert hosts["lambda1"].status in ("no change", "changed"), hosts["lambda1"].reason
        assert hosts["tierbroken"].status == "failed"
        assert hosts["tierthird"].status == "skipped"
        assert result.exit_code == 1
        # Untouched: nothing of comfyfleet's on the third host.
        assert (
            third.exec(
                f"test -e {third.data_root}/ComfyUI || test -e {third.data_root}/.comfyfleet", check=False
            ).returncode
            != 0
        )
    finally:
        fleet.remove_host("tierbroken")
        fleet.remove_host("tierthird")


def test_dry_run_of_deploy_all_changes_nothing(
    fleet_hosts: dict[str, Host],
    write_inventory: Callable[..., Path],
    tiers: dict[str, Any],
    tokens: None,
    tmp_path: Path,
) -> None:
    host = fleet_hosts["lambda1"]
    inv = write_inventory([host], tmp_path / "inventory.py")
    before = host.exec(f"ls -R {host.data_root}/custom_nodes {host.data_root}/models").stdout
    result = run(str(inv), "deploy-all", tiers["data"], RunOptions(dry_run=True))
    h = by_host(result)["lambda1"]
    assert h.status in ("no change", "would change"), h.reason
    assert host.exec(f"ls -R {host.data_root}/custom_nodes {host.data_root}/models").stdout == before


PUBLIC_PACK_MIRROR = Path("/work/.mirror/pythongosssss+ComfyUI-Custom-Scripts/repo")


def test_a_public_node_pack_from_the_local_mirror_installs_imports_and_runs(
    fleet: Fleet,
    fleet_hosts: dict[str, Host],
    write_inventory: Callable[..., Path],
    tiers: dict[str, Any],
    tmp_path: Path,
) -> None:
    """pythongosssss/ComfyUI-Custom-Scripts as published, served from the local git upstream."""
    assert fleet.comfyui is not None
    if not fleet.comfyui.real:
        pytest.skip(
            "needs real ComfyUI (COMFYFLEET_TEST_COMFYUI): the pack imports tqdm, which ComfyUI's own"
            " requirements provide and the stand-in's runtime image does not have"
        )
    if not (PUBLIC_PACK_MIRROR / "HEAD").exists():
        pytest.skip(
            f"needs a fetched mirror of pythongosssss/ComfyUI-Custom-Scripts at {PUBLIC_PACK_MIRROR}"
            " (the search tool's fetch); GitHub is unreachable from here"
        )
    work = tmp_path / "ComfyUI-Custom-Scripts"
    work.mkdir()
    archive = subprocess.run(["git", "-C", str(PUBLIC_PACK_MIRROR), "archive", "HEAD"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(
            f"the mirror at {PUBLIC_PACK_MIRROR} lacks files of its HEAD: {archive.stderr.decode()[-200:]}"
        )
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive.stdout, check=True)
    # master: the upstream's bare repositories point HEAD there.
    subprocess.run(["git", "init", "-q", "-b", "master", str(work)], check=True)
    subprocess.run(["git", "-C", str(work), "add", "-A"], check=True)
    subprocess.run(
        ["git", "-C", str(work), "commit", "-q", "-m", "ComfyUI-Custom-Scripts at the mirror's HEAD"],
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    repo_path = "pythongosssss/ComfyUI-Custom-Scripts.git"
    if not (fleet.upstreams.repos / repo_path).exists():
        fleet.upstreams.publish(repo_path, work)
    wf = tmp_path / "workflows"
    wf.mkdir()
    graph = {
        "1": {
            "class_type": "StringFunction|pysssss",
            "inputs": {"action": "append", "tidy_tags": "yes", "text_a": "a lighthouse", "text_b": "at dusk"},
        }
    }
    (wf / "public.json").write_text(json.dumps(graph))
    (wf / "overrides.yaml").write_text(
        yaml.safe_dump(
            {
                "nodes": {
                    "StringFunction|pysssss": {
                        "repo": "https://github.com/pythongosssss/ComfyUI-Custom-Scripts"
                    }
                },
            }
        )
    )
    host = fleet_hosts["lambda1"]
    inv = write_inventory([host], tmp_path / "inventory.py")
    data = {**tiers["data"], "workflows_dir": str(wf)}
    assert run(str(inv), "runtime", data).ok  # a no-op after the acceptance test; needed when run alone
    result = run(str(inv), "install-missing", data)
    h = by_host(result)["lambda1"]
    assert h.ok, h.reason
    rows = {r[1]: r for r in h.report.sections["node packs"].rows}
    assert "ComfyUI-Custom-Scripts" in rows, rows
    info = object_info(host)
    assert info["StringFunction|pysssss"]["python_module"] == "custom_nodes.ComfyUI-Custom-Scripts"
    assert "ShowText|pysssss" in info  # the rest of the pack imported too
    out = run_prompt(host, graph)
    assert out["status"]["status_str"] == "success", out["status"]
    assert out["outputs"]["1"]["text"] == ["a lighthouse, at dusk"]
