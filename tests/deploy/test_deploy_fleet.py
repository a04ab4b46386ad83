"""Bootstrap, runtime and day-to-day tasks over real SSH on the local test fleet (docker hosts, loop device).

Everything runs through the real `comfyfleet` CLI in a subprocess, as an operator would
run it; assertions look at the hosts themselves (ComfyUI over HTTP, mounts, files, git).
Docker's and NVIDIA's repositories are not reachable here: those paths are covered by
test_deploy_operations_command_level.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.fleet

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "comfyfleet.cli.main"]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    print(res.stdout[-4000:], res.stderr[-4000:])
    return res


def row(output: str, host: str) -> str:
    """The results-table line of one host."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 2 and cells[1] == host:
            return line
    raise AssertionError(f"no result row for {host} in:\n{output}")


def system_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def inventory(
    fleet: Any,
    fleet_hosts: dict[str, Any],
    start_host: Callable[..., Any],
    write_inventory: Callable[..., Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """lambda1 + dc1 (block volume) + a third host whose SSH port has nothing listening."""
    ghost = start_host(name="ghost1", provider="lambda", unreachable=True)
    path = tmp_path_factory.mktemp("inv") / "fleet.py"
    return write_inventory([fleet_hosts["lambda1"], fleet_hosts["dc1"], ghost], path)


@pytest.fixture(scope="module")
def bootstrapped(inventory: Path, fleet_hosts: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cli("bootstrap", str(inventory))


def test_fleet_bootstrap_two_providers_unreachable_third_exit_1(
    bootstrapped: subprocess.CompletedProcess[str], fleet_hosts: dict[str, Any]
) -> None:
    res = bootstrapped
    assert res.returncode == 1, res.stderr
    assert "changed" in row(res.stdout, "lambda1") and "changed" in row(res.stdout, "dc1")
    assert "unreachable" in row(res.stdout, "ghost1")
    for name in ("lambda1", "dc1"):
        host = fleet_hosts[name]
        stats = system_stats(host.comfyui_port)
        assert stats["system"]["comfyui_version"]
        # ComfyUI runs in its container with the data root folders mounted at the same paths.
        mounts = subprocess.run(
            [
                "docker",
                "inspect",
                "-f",
                "{{range .Mounts}}{{.Source}} {{end}}",
                f"{host.container_prefix}comfyui",
            ],
            capture_output=True,
            text=True,
        ).stdout
        for folder in ("models", "custom_nodes", "input", "output", "user", "venv"):
            assert f"{host.data_root}/{folder}" in mounts
        # ComfyUI's database (<checkout>/user/comfyui.db) and settings share the data root's user/.
        link = host.exec(f"readlink {host.data_root}/ComfyUI/user", user="root").stdout.strip()
        assert link == f"{host.data_root}/user"
        logs = subprocess.run(
            ["docker", "logs", f"{host.container_prefix}comfyui"], capture_output=True, text=True
        )
        assert "Failed to initialize database" not in logs.stdout + logs.stderr


def test_fleet_datacrunch_volume_mounted_by_uuid_with_nofail(
    bootstrapped: subprocess.CompletedProcess[str], fleet_hosts: dict[str, Any]
) -> None:
    dc1 = fleet_hosts["dc1"]
    fstab = dc1.exec("cat /etc/fstab", user="root").stdout
    line = next(ln for ln in fstab.splitlines() if f" {dc1.block_mount} " in ln)
    assert line.startswith("UUID=") and "nofail" in line and " ext4 " in line
    mounts = dc1.exec("cat /proc/mounts", user="root").stdout
    assert f"{dc1.volume.device} {dc1.block_mount} ext4" in mounts
    # The data root really is on the volume (a file written there shows up in the filesystem).
    df = dc1.exec(f"df -P {dc1.data_root} | tail -n 1", user="root").stdout
    assert df.split()[0] == dc1.volume.device


def test_fleet_rerun_reports_no_change(
    bootstrapped: subprocess.CompletedProcess[str], inventory: Path
) -> None:
    res = cli("bootstrap", f"{inventory}:lambda1")
    assert res.returncode == 0
    assert "no change" in row(res.stdout, "lambda1")
    res = cli("bootstrap", f"{inventory}:dc1")
    assert res.returncode == 0 and "no change" in row(res.stdout, "dc1")


def load_image_choices(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/object_info/LoadImage", timeout=5) as resp:
        return list(json.loads(resp.read())["LoadImage"]["input"]["required"]["image"][0])


def test_fleet_runtime_seeds_comfyui_inputs_without_overwriting(
    bootstrapped: subprocess.CompletedProcess[str], inventory: Path, fleet_hosts: dict[str, Any]
) -> None:
    """The data root's input/ (mounted over the checkout's) gets the files ComfyUI ships there."""
    for host in (fleet_hosts["lambda1"], fleet_hosts["dc1"]):
        shipped, seeded = f"{host.data_root}/ComfyUI/input/example.png", f"{host.data_root}/input/example.png"
        assert host.exec(f"cmp {shipped} {seeded}", user="root", check=False).returncode == 0
        assert "example.png" in load_image_choices(host.comfyui_port)  # LoadImage's default exists
    host = fleet_hosts["lambda1"]
    seeded = f"{host.data_root}/input/example.png"
    # The operator's own file under that name stays through a re-run, which changes nothing.
    host.exec(f"printf 'my own picture' > {seeded}", user="root")
    res = cli("bootstrap", f"{inventory}:lambda1")
    assert res.returncode == 0 and "no change" in row(res.stdout, "lambda1")
    assert host.exec(f"cat {seeded}", user="root").stdout == "my own picture"
    # A missing one is seeded again, and only that changes.
    host.exec(f"rm {seeded}", user="root")
    res = cli("bootstrap", f"{inventory}:lambda1")
    assert res.returncode == 0
    assert "changed" in row(res.stdout, "lambda1") and "ComfyUI example inputs" in row(res.stdout, "lambda1")
    assert host.exec(f"cmp {host.data_root}/ComfyUI/input/example.png {seeded}", user="root").returncode == 0


def test_fleet_volume_with_files_survives_second_bootstrap(
    bootstrapped: subprocess.CompletedProcess[str], inventory: Path, fleet_hosts: dict[str, Any]
) -> None:
    dc1 = fleet_hosts["dc1"]
    keep = f"{dc1.data_root}/models/checkpoints/keep.safetensors"
    dc1.exec(
        f"mkdir -p {Path(keep).parent} && head -c 4096 /dev/urandom > {keep} && sha256sum {keep}", user="root"
    )
    before = dc1.exec(f"sha256sum {keep}", user="root").stdout
    uuid_before = dc1.exec(f"blkid -p -s UUID -o value {dc1.volume.device}", user="root").stdout
    res = cli("bootstrap", f"{inventory}:dc1")
    assert res.returncode == 0
    assert dc1.exec(f"sha256sum {keep}", user="root").stdout == before
    assert dc1.exec(f"blkid -p -s UUID -o value {dc1.volume.device}", user="root").stdout == uuid_before


def test_fleet_preformatted_volume_holding_data_is_never_reformatted(
    fleet: Any, start_host: Callable[..., Any], write_inventory: Callable[..., Path], tmp_path: Path
) -> None:
    """A volume re-attached with data on it: bootstrap mounts it and keeps every file."""
    host = start_host(name="dc2", provider="datacrunch", volume=True)
    try:
        dev = host.volume.device
        staging = tmp_path / "staging"
        staging.mkdir()
        subprocess.run(["mkfs.ext4", "-q", "-L", "olddata", dev], check=True)
        subprocess.run(["mount", dev, str(staging)], check=True)
        try:
            (staging / "comfyfleet" / "output").mkdir(parents=True)
            (staging / "comfyfleet" / "output" / "render.png").write_text("precious render")
        finally:
            subprocess.run(["umount", str(staging)], check=True)
        uuid = subprocess.run(
            ["blkid", "-p", "-s", "UUID", "-o", "value", dev], capture_output=True, text=True
        ).stdout
        inv = write_inventory([host], tmp_path / "dc2.py")
        res = cli("bootstrap", str(inv))
        assert res.returncode == 0, res.stdout
        assert host.exec(f"cat {host.data_root}/output/render.png", user="root").stdout == "precious render"
        assert (
            subprocess.run(
                ["blkid", "-p", "-s", "UUID", "-o", "value", dev], capture_output=True, text=True
            ).stdout
            == uuid
        )
        label = subprocess.run(
            ["blkid", "-p", "-s", "LABEL", "-o", "value", dev], capture_output=True, text=True
        ).stdout
        assert label.strip() == "olddata"
        system_stats(host.comfyui_port)
    finally:
        fleet.remove_host("dc2")


def test_fleet_status_and_logs_show_both_hosts(
    bootstrapped: subprocess.CompletedProcess[str], inventory: Path, tmp_path: Path
) -> None:
    res = cli("common", str(inventory), "--status")
    assert res.returncode == 1  # ghost1 is unreachable; the others report
    for name in ("lambda1", "dc1"):
        assert "no change" in row(res.stdout, name)
        assert f"── {name} ──" in res.stdout.replace("─" * 3, "──")
    assert res.stdout.count("healthy") >= 2 and "version 0." in res.stdout
    assert "no NVIDIA GPU" in res.stdout and "data root" in res.stdout
    export = tmp_path / "logs"
    res = cli("common", str(inventory), "--logs", "--export", str(export))
    assert res.returncode == 1
    for name in ("lambda1", "dc1"):
        text = (export / f"{name}.log").read_text()
        assert "comfyui (last" in text and "Starting server" in text
    assert not (export / "ghost1.log").exists()


def test_fleet_restart_comfyui_waits_until_healthy(
    bootstrapped: subprocess.CompletedProcess[str], inventory: Path, fleet_hosts: dict[str, Any]
) -> None:
    host = fleet_hosts["lambda1"]
    name = f"{host.container_prefix}comfyui"
    started = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.StartedAt}}", name], capture_output=True, text=True
    ).stdout
    res = cli("common", f"{inventory}:lambda1", "--restart", "comfyui")
    assert res.returncode == 0 and "changed" in row(res.stdout, "lambda1")
    system_stats(host.comfyui_port)  # answered when the command returned
    assert (
        subprocess.run(
            ["docker", "inspect", "-f", "{{.State.StartedAt}}", name], capture_output=True, text=True
        ).stdout
        != started
    )


def test_fleet_update_core_then_bad_ref_rolls_back(
    bootstrapped: subprocess.CompletedProcess[str], inventory: Path, fleet: Any, fleet_hosts: dict[str, Any]
) -> None:
    host = fleet_hosts["lambda1"]
    up = fleet.comfyui
    res = cli("common", f"{inventory}:lambda1", "--update-comfyui-core", up.old_ref)
    assert res.returncode == 0 and "changed" in row(res.stdout, "lambda1")
    assert system_stats(host.comfyui_port)["system"]["comfyui_version"] == up.versions[up.old_ref]

    res = cli(
        "common",
        f"{inventory}:lambda1",
        "--update-comfyui-core",
        up.broken_ref,
        "--inventory-data",
        "health_timeout=20",
    )
    assert res.returncode == 1
    assert "rolled back" in row(res.stdout, "lambda1") or "rolled back" in res.stdout
    assert system_stats(host.comfyui_port)["system"]["comfyui_version"] == up.versions[up.old_ref]
    head = host.exec(f"git -C {host.data_root}/ComfyUI describe --tags", user="root").stdout.strip()
    assert head == up.old_ref

    res = cli("common", f"{inventory}:lambda1", "--update-comfyui-core", "no-such-ref")
    assert res.returncode == 1 and "not found" in res.stdout
    assert system_stats(host.comfyui_port)["system"]["comfyui_version"] == up.versions[up.old_ref]

    res = cli("common", f"{inventory}:lambda1", "--update-comfyui-core")  # back to the inventory's pin
    assert res.returncode == 0
    assert system_stats(host.comfyui_port)["system"]["comfyui_version"] == up.versions[up.default_ref]


def test_fleet_dry_run_changes_nothing(
    bootstrapped: subprocess.CompletedProcess[str], inventory: Path, fleet: Any, fleet_hosts: dict[str, Any]
) -> None:
    host = fleet_hosts["dc1"]
    res = cli(
        "bootstrap",
        f"{inventory}:dc1",
        "--dry-run",
        "--inventory-data",
        f"comfyui_ref={fleet.comfyui.old_ref}",
    )
    assert res.returncode == 0 and "would change" in row(res.stdout, "dc1")
    assert "ComfyUI core checkout" in row(res.stdout, "dc1")
    time.sleep(0.5)
    assert (
        system_stats(host.comfyui_port)["system"]["comfyui_version"]
        == fleet.comfyui.versions[fleet.comfyui.default_ref]
    )


def test_fleet_rolling_stops_at_failed_batch(
    bootstrapped: subprocess.CompletedProcess[str],
    fleet_hosts: dict[str, Any],
    start_host: Callable[..., Any],
    write_inventory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    ghost = start_host(name="ghost2", provider="lambda", unreachable=True)
    inv = write_inventory([ghost, fleet_hosts["lambda1"]], tmp_path / "rolling.py")
    res = cli("common", str(inv), "--status", "--rolling", "1")
    assert res.returncode == 1
    assert "unreachable" in row(res.stdout, "ghost2")
    assert "skipped" in row(res.stdout, "lambda1")


def test_fleet_pyinfra_cli_door(
    bootstrapped: subprocess.CompletedProcess[str],
    fleet_hosts: dict[str, Any],
    write_inventory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """`pyinfra INVENTORY deploy/common.py --data task=status` works as pyinfra users expect."""
    inv = write_inventory([fleet_hosts["lambda1"], fleet_hosts["dc1"]], tmp_path / "door.py")
    res = subprocess.run(
        [
            str(Path(sys.executable).parent / "pyinfra"),
            str(inv),
            "deploy/common.py",
            "--data",
            "task=status",
            "-y",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[lambda1] health: ComfyUI | healthy" in res.stdout + res.stderr
    assert "[dc1] health: ComfyUI | healthy" in res.stdout + res.stderr


def test_fleet_fail_percent_stops_the_run(
    bootstrapped: subprocess.CompletedProcess[str],
    fleet_hosts: dict[str, Any],
    start_host: Callable[..., Any],
    write_inventory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    ghost = start_host(name="ghost3", provider="lambda", unreachable=True)
    inv = write_inventory([ghost, fleet_hosts["lambda1"]], tmp_path / "pct.py")
    res = cli("common", str(inv), "--status", "--fail-percent", "0")
    assert res.returncode == 1
    assert "unreachable" in row(res.stdout, "ghost3") and "skipped" in row(res.stdout, "lambda1")
    assert "Over 0% of hosts failed" in res.stdout
    res = cli("common", str(inv), "--status", "--fail-percent", "60")
    assert res.returncode == 1 and "no change" in row(res.stdout, "lambda1")
