"""Host data validation and the CLI's input handling: refused before anything connects, one line, exit 2."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import comfyfleet.inventory as inv
from comfyfleet.errors import BadInput
from comfyfleet.runner import load_target, prepare_hosts

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "comfyfleet.cli.main"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_host_data_key_is_documented_with_its_default() -> None:
    doc = inv.__doc__ or ""
    for key in inv.HostConfig.model_fields:
        assert re.search(rf"^{key}\s", doc, re.MULTILINE), f"{key} missing from the key table"


def test_provider_defaults_apply_and_host_data_wins() -> None:
    lam = inv.validate_host_data("h", {"provider": "lambda"})
    assert (lam.ssh_user, lam.data_root, lam.block_device, lam.sudo) == (
        "ubuntu",
        "/home/ubuntu/comfyfleet",
        None,
        True,
    )
    dc = inv.validate_host_data("h", {"provider": "datacrunch"})
    assert (dc.ssh_user, dc.block_device, dc.data_root, dc.sudo) == (
        "root",
        "auto",
        "/mnt/data/comfyfleet",
        False,
    )
    own = inv.validate_host_data(
        "h", {"provider": "datacrunch", "block_device": "none", "data_root": "/srv/cf"}
    )
    assert own.block_device is None and own.data_root == "/srv/cf"
    assert inv.validate_host_data("h", {"comfyui_port": "8200"}).comfyui_port == 8200


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"comfyui_port": "eighty"}, "host gpu1: comfyui_port: "),
        ({"comfyui_port": 70000}, "host gpu1: comfyui_port: "),
        ({"data_root": "/x;rm -rf /"}, "host gpu1: data_root: path must be an absolute path"),
        ({"data_root": "relative"}, "host gpu1: data_root: "),
        ({"comfyui_ref": "$(reboot)"}, "host gpu1: comfyui_ref: must be a git tag, branch or commit"),
        ({"comfyui_ref": "a..b"}, "host gpu1: comfyui_ref: "),
        ({"comfyui_repo": "https://x/y z"}, "host gpu1: comfyui_repo: must be a git URL"),
        ({"comfyui_listen": "everywhere"}, "host gpu1: comfyui_listen: must be an IP address"),
        ({"runtime_image": "Img With Spaces"}, "host gpu1: runtime_image: "),
        ({"block_device": "/dev/../etc/passwd"}, "host gpu1: block_device: "),
        ({"gpu": "sometimes"}, "host gpu1: gpu: "),
        ({"provider": "aws"}, "host gpu1: provider 'aws' is unknown"),
        ({"comfyui_prot": 8188}, "host gpu1: unknown key 'comfyui_prot'"),
        ({"ssh_user": "root; id"}, "host gpu1: ssh_user: "),
        ({"component": "everything"}, "host gpu1: component: "),
        ({"provider": "datacrunch", "data_root": "/opt/cf"}, "must be under block_mount /mnt/data"),
        ({"api_port": 8188}, "comfyui_port and api_port must differ"),
        ({"models_parallel": 50}, "host gpu1: models_parallel: "),
        ({"models_paralel": 4}, "unknown key 'models_paralel': did you mean models_parallel?"),
        ({"node_install_via": "pip"}, "host gpu1: node_install_via: "),
        ({"pip_index_url": "ftp://mirror;id"}, "host gpu1: pip_index_url: must be an http(s) URL"),
        ({"hf_endpoint": "http://x/$(id)"}, "host gpu1: hf_endpoint: must be an http(s) URL"),
        ({"deploy_api": "sometimes"}, "host gpu1: deploy_api: "),
        ({"update": "everything"}, "host gpu1: update: "),
        ({"yes": "maybe"}, "host gpu1: yes: "),
    ],
)
def test_invalid_host_data_names_host_and_key(data: dict, message: str) -> None:
    with pytest.raises(BadInput) as exc:
        inv.validate_host_data("gpu1", data)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_targets_hosts_files_and_groups() -> None:
    assert load_target("203.0.113.7") == [("203.0.113.7", {})]
    assert [n for n, _ in load_target("a.example,b.example")] == ["a.example", "b.example"]
    hosts = prepare_hosts(str(ROOT / "inventory/datacrunch.py"))
    assert [n for n, _ in hosts] == ["198.51.100.20", "198.51.100.21"]
    assert hosts[1][1]["block_device"] == "/dev/vdb" and hosts[0][1]["ssh_user"] == "root"
    assert [n for n, _ in load_target(str(ROOT / "inventory/lambda.py") + ":gpu")] == [
        "203.0.113.10",
        "203.0.113.11",
    ]
    with pytest.raises(BadInput, match="no group or host 'cpu'"):
        load_target(str(ROOT / "inventory/lambda.py") + ":cpu")
    with pytest.raises(BadInput, match="not found"):
        load_target("inventory/nope.py")
    with pytest.raises(BadInput, match="is not a host name"):
        load_target("host;reboot")


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "--logs"], "give exactly one action flag (got --status, --logs)"),
        ([], "give exactly one action flag (got none)"),
        (["--restart", "database"], "--restart 'database': use comfyui, api or all"),
        (["--update", "kernel"], "--update 'kernel': use comfyui, nodes, manager or api"),
        (["--status", "v0.3.1"], "only --update-comfyui-core takes a REF"),
        (["--status", "--export", "/tmp/x"], "--export only goes with --logs"),
        (["--status", "--inventory-data", "comfyui_port=abc"], "host 127.0.0.1: comfyui_port: "),
        (["--status", "--inventory-data", "noequals"], "use key=value"),
        (["--update-comfyui-core", "$(reboot)"], "host 127.0.0.1: ref: must be a git tag"),
        (["--status", "--parallel", "0"], "--parallel must be 1 or more"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2_before_connecting(args: list[str], message: str) -> None:
    started = time.monotonic()
    res = _cli("common", "127.0.0.1", *args)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert time.monotonic() - started < 30


def test_cli_task_not_available_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    from comfyfleet.deploys import tasks
    from comfyfleet.runner import resolve_task

    tasks.load_all()
    monkeypatch.delitem(tasks.TASKS, "status")
    monkeypatch.setattr(tasks, "load_all", lambda: None)
    with pytest.raises(BadInput, match="task 'status' is not available in this version"):
        resolve_task("status")


def test_cli_unreachable_host_is_exit_1_with_reason() -> None:
    """A host nobody answers for (closed port on loopback) fails alone, named in the table."""
    port = _closed_port()
    res = _cli("common", "127.0.0.1", "--status", "--inventory-data", f"ssh_port={port}")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "unreachable" in res.stdout and "127.0.0.1" in res.stdout
    assert "not ok: 127.0.0.1" in res.stdout.replace("\n", " ")


def test_cli_bootstrap_provider_must_be_known() -> None:
    res = _cli("bootstrap", "127.0.0.1", "--provider", "aws")
    assert res.returncode == 2 and "use lambda or datacrunch" in res.stderr


def test_host_config_cache_is_keyed_by_the_real_host_not_pyinfra_s_proxy() -> None:
    """Tasks call ``host_config(host)`` with pyinfra's context proxy, which hashes as the current host.

    Kept as a weak key, the immortal proxy never expired, so a Host created later at a
    reused address was handed another host's config (seen as one test's ``@local`` run
    using a fleet host's data root and sudo).
    """
    import gc

    from pyinfra import host as host_proxy
    from pyinfra.api import Inventory
    from pyinfra.context import ctx_host

    from comfyfleet import context

    inventory = Inventory(([("@local", {"data_root": "/tmp/cf-a"})], {}))
    (real,) = list(inventory)
    with ctx_host.use(real):
        assert inv.host_config(host_proxy).data_root == "/tmp/cf-a"
    assert not any(key is host_proxy for key in context._RUNS.keys())
    del real, inventory
    gc.collect()
    assert not any(
        getattr(key, "name", None) == "@local" and key.data.get("data_root") == "/tmp/cf-a"
        for key in context._RUNS.keys()
    )


def test_tier_keys_are_parsed_once_into_their_types() -> None:
    cfg = inv.validate_host_data(
        "h",
        {"git_mirrors": "https://github.com/=http://m/,https://gitlab.com/=http://g/", "deploy_api": "false"}
        | {
            "yes": "true",
            "models_parallel": "4",
            "hf_endpoint": "http://127.0.0.1:9000/",
            "workflows_dir": "wf",
        },
    )
    assert cfg.git_mirrors == {"https://github.com/": "http://m/", "https://gitlab.com/": "http://g/"}
    assert cfg.deploy_api is False and cfg.yes is True and cfg.models_parallel == 4
    assert cfg.hf_endpoint == "http://127.0.0.1:9000" and cfg.lock_path == "wf/comfyfleet.lock.yaml"
    defaults = inv.validate_host_data("h", {})
    assert (defaults.deploy_api, defaults.node_install_via, defaults.models_parallel) == ("auto", "auto", 3)
    assert not defaults.given("provider") and inv.validate_host_data("h", {"provider": "lambda"}).given(
        "provider"
    )


def test_a_deploy_for_another_provider_than_the_host_data_names_is_refused() -> None:
    with pytest.raises(
        BadInput, match="host h: provider is 'datacrunch' in the host data but the lambda deploy"
    ):
        inv.validate_host_data("h", {"provider": "datacrunch"}, "lambda")
