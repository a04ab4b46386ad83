"""`comfyfleet bootstrap` / `common` refuse bad input with one line and exit 2, before connecting anywhere.

Each case runs the real CLI in a subprocess, as an operator would. Inventory hosts point
at 127.0.0.1 on a port nothing listens on, so a case that wrongly got as far as
connecting would show up as exit 1 (unreachable), never as traffic off this machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "comfyfleet.cli.main"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-input")
    port = closed_port()
    (root / "inv.py").write_text(f'gpu = [("box1", {{"ssh_hostname": "127.0.0.1", "ssh_port": {port}}})]\n')
    (root / "syntax.py").write_text('gpu = ["127.0.0.1"\n')
    (root / "badport.py").write_text('gpu = [("box1", {"ssh_hostname": "127.0.0.1", "ssh_port": "22x"})]\n')
    (root / "badip.py").write_text('gpu = [("box1", {"ssh_hostname": "300.1.1.1"})]\n')
    (root / "notahost.py").write_text("gpu = [42]\n")
    (root / "workflows").mkdir()
    return root


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def assert_one_line_exit_2(res: subprocess.CompletedProcess[str], expected: str) -> None:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert expected in lines[0], lines[0]


CASES = {
    "missing-inventory": (["bootstrap", "nope/lambda.py"], "inventory file nope/lambda.py not found"),
    "missing-inventory-group": (["common", "nope.py:gpu", "--status"], "inventory file nope.py not found"),
    "syntax-error-inventory": (["bootstrap", "syntax.py"], "syntax.py: SyntaxError: '[' was never closed"),
    "inventory-entry-not-a-host": (["bootstrap", "notahost.py"], "group gpu: 42 is not a host name"),
    "unknown-group": (["common", "inv.py:cpu", "--status"], "no group or host 'cpu' (groups: gpu)"),
    "ip-five-numbers": (
        ["bootstrap", "1.2.3.4.5", "--provider", "lambda"],
        "'1.2.3.4.5' is not a valid IPv4",
    ),
    "ip-out-of-range": (["common", "999.1.1.1", "--status"], "'999.1.1.1' is not a valid IPv4 address"),
    "ipv6-garbage": (["common", "::zz", "--status"], "'::zz' is not a valid IPv6 address"),
    "shell-in-target": (
        ["common", "a;reboot", "--status"],
        "'a;reboot' is not a host name, IP or inventory file",
    ),
    "inventory-bad-ip": (
        ["bootstrap", "badip.py"],
        "host box1: ssh_hostname '300.1.1.1' is not a valid IPv4",
    ),
    "inventory-bad-port": (["bootstrap", "badport.py"], "host box1: ssh_port must be a whole number"),
    "data-bad-port": (["common", "inv.py", "--status", "--inventory-data", "ssh_port=0"], "ssh_port must be"),
    "parallel-zero": (["common", "inv.py", "--status", "--parallel", "0"], "--parallel must be 1 or more"),
    "parallel-word": (["bootstrap", "inv.py", "--parallel", "two"], "--parallel 'two': give a whole number"),
    "rolling-negative": (["common", "inv.py", "--status", "--rolling", "-1"], "--rolling must be 1 or more"),
    "rolling-fraction": (
        ["common", "inv.py", "--status", "--rolling", "0.5"],
        "--rolling '0.5': give a whole",
    ),
    "fail-percent-range": (["common", "inv.py", "--status", "--fail-percent", "150"], "between 0 and 100"),
    "serial-with-parallel": (
        ["common", "inv.py", "--status", "--serial", "--parallel", "2"],
        "--serial and --parallel contradict each other",
    ),
    "bootstrap-serial-with-parallel": (
        ["bootstrap", "inv.py", "--serial", "--parallel", "3"],
        "--serial and --parallel contradict each other",
    ),
    "no-action": (["common", "inv.py"], "give exactly one action flag (got none)"),
    "two-actions": (
        ["common", "inv.py", "--status", "--logs"],
        "give exactly one action flag (got --status, --logs)",
    ),
    "unknown-provider": (
        ["bootstrap", "inv.py", "--provider", "aws"],
        "--provider 'aws': use lambda or datacrunch",
    ),
    "restart-what": (["common", "inv.py", "--restart", "gpu"], "--restart 'gpu': use comfyui, api or all"),
    "update-what": (
        ["common", "inv.py", "--update", "torch"],
        "--update 'torch': use comfyui, nodes, manager or api",
    ),
    "export-without-logs": (
        ["common", "inv.py", "--status", "--export", "out"],
        "--export only goes with --logs",
    ),
    "target-is-a-folder": (
        ["bootstrap", "workflows"],
        "target workflows is a folder: give the inventory file",
    ),
    "install-nodes-missing-workflow": (
        ["common", "inv.py", "--install-nodes", "nope.json"],
        "--install-nodes nope.json: workflow file not found",
    ),
    "download-models-missing-workflow": (
        ["common", "inv.py", "--download-models", "w/nope.json"],
        "--download-models w/nope.json: workflow file not found",
    ),
    "export-not-a-folder": (
        ["common", "inv.py", "--logs", "--export", "inv.py"],
        "--export inv.py: File exists",
    ),
    "export-impossible": (
        ["common", "inv.py", "--logs", "--export", "/proc/comfyfleet-logs"],
        "--export /proc/comfyfleet-logs: No such file or directory",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_cli_bad_input_is_one_line_exit_2(files: Path, case: str) -> None:
    args, expected = CASES[case]
    assert_one_line_exit_2(cli(files, *args), expected)


def test_cli_unsafe_model_name_refused_before_any_host_is_touched(files: Path) -> None:
    """`--download-models` on a workflow whose model name carries `;` or `../`: exit 2, nothing on the host."""
    data_root = files / "data"
    for node_id, name, why in (
        ("4", "a;touch pwned.safetensors", "contains shell metacharacters"),
        ("7", "../../escape.safetensors", "contains '..'"),
    ):
        wf = files / "workflows" / "x.json"
        wf.write_text(
            json.dumps(
                {
                    node_id: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
                    "9": {
                        "class_type": "SaveImage",
                        "inputs": {"images": [node_id, 0], "filename_prefix": "x"},
                    },
                }
            )
        )
        res = cli(
            files,
            "common",
            "@local",
            "--download-models",
            "workflows/x.json",
            "--inventory-data",
            f"data_root={data_root}",
            "--inventory-data",
            f"workflows_dir={files / 'workflows'}",
        )
        assert_one_line_exit_2(res, f"workflows/x.json: node {node_id}: model name {name!r} {why}")
        assert not data_root.exists()  # no folder, no plan, no script reached the host
        assert not (files / "pwned.safetensors").exists()


def test_cli_update_nodes_reaches_the_update_task(files: Path) -> None:
    """`--update nodes` is accepted by host data validation and runs the update task (which then
    looks for the workflows); it used to be refused as an invalid restart `component`."""
    empty = files / "no-workflows"
    res = cli(
        files,
        "common",
        "@local",
        "--update",
        "nodes",
        "--inventory-data",
        f"workflows_dir={empty}",
        "--inventory-data",
        f"data_root={files / 'data'}",
    )
    assert_one_line_exit_2(res, f"{empty}: no such workflow file or folder")
    assert "component" not in res.stderr


@pytest.mark.parametrize("command", ["bootstrap", "common"])
def test_cli_help_shows_examples(command: str) -> None:
    res = cli(Path.cwd(), command, "--help")
    assert res.returncode == 0
    examples = [ln.strip() for ln in res.stdout.splitlines() if ln.strip().startswith("Example: comfyfleet")]
    assert len(examples) == 2, res.stdout
    assert all(e.startswith(f"Example: comfyfleet {command} ") for e in examples)
