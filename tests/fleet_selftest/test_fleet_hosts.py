"""The test fleet itself: real SSH, real pyinfra, the engine through the socket, loop volumes, upstreams."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from comfyfleet.devkit.fleet import Fleet, Host, down_all, list_fleets
from comfyfleet.devkit.fleet.engine import docker, run
from comfyfleet.devkit.fleet.hosts import free_port

pytestmark = pytest.mark.fleet

PYINFRA = Path(sys.executable).with_name("pyinfra")


def pyinfra(inventory: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the installed pyinfra CLI as a person would."""
    return subprocess.run(
        [str(PYINFRA), "-y", str(inventory), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def said(out: str, host: str) -> list[str]:
    """What pyinfra printed for one host (its output lines, padding removed)."""
    return [line.split("]", 1)[1].strip() for line in out.splitlines() if line.startswith(f"[{host}]")]


def test_pyinfra_reaches_both_hosts_over_ssh_with_the_inventory(
    fleet_hosts: dict[str, Host], write_inventory: Callable[..., Path], tmp_path: Path
) -> None:
    inv = write_inventory(list(fleet_hosts.values()), tmp_path / "inventory.py")
    proc = pyinfra(inv, "exec", "--", "id -un; hostname")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert said(out, "lambda1") == ["ubuntu", "lambda1"], out
    assert said(out, "dc1") == ["root", "dc1"], out
    # The Lambda-style user gets root through passwordless sudo, as pyinfra's _sudo needs.
    proc = pyinfra(inv, "--limit", "lambda1", "exec", "--sudo", "--", "id -un")
    assert proc.returncode == 0 and said(proc.stdout + proc.stderr, "lambda1") == ["root"], proc.stderr


def test_inventory_data_is_valid_comfyfleet_host_data(
    fleet: Fleet, fleet_hosts: dict[str, Host], write_inventory: Callable[..., Path], tmp_path: Path
) -> None:
    from comfyfleet.inventory import validate_host_data

    inv = write_inventory(
        list(fleet_hosts.values()), tmp_path / "inventory.py", comfyui_ref=fleet.comfyui.old_ref
    )
    namespace: dict[str, object] = {}
    exec(compile(inv.read_text(), str(inv), "exec"), namespace)  # noqa: S102 - our own generated file
    hosts = dict(namespace["fleet"])  # type: ignore[call-overload]
    lam = validate_host_data("lambda1", hosts["lambda1"])
    dc = validate_host_data("dc1", hosts["dc1"])
    assert (lam.ssh_user, lam.block_device, lam.gpu) == ("ubuntu", None, False)
    assert (dc.ssh_user, dc.block_device) == ("root", fleet_hosts["dc1"].block_device)
    assert dc.data_root.startswith(dc.block_mount + "/")
    assert lam.comfyui_ref == dc.comfyui_ref == fleet.comfyui.old_ref
    # Hosts share one engine: container names and ports must not collide.
    assert lam.layout.comfyui_container != dc.layout.comfyui_container
    assert len({lam.comfyui_port, lam.api_port, dc.comfyui_port, dc.api_port}) == 4


def test_host_drives_the_engine_with_data_paths_identical_inside_and_out(
    fleet: Fleet, fleet_hosts: dict[str, Host]
) -> None:
    host = fleet_hosts["lambda1"]
    names = host.ssh("sudo docker ps --format '{{.Names}}'").stdout.split()
    assert host.container in names
    root = host.data_root
    name = f"{host.container_prefix}selftest"
    # The host asks the engine for a bind mount of its data root; the file written by that
    # container must appear at the same path inside the host and on the machine.
    host.ssh(
        f"sudo mkdir -p {root}/probe && sudo docker run --rm --name {name} --network host "
        f"-v {root}/probe:{root}/probe {fleet.runtime_image} "
        f"python3 -c \"import aiohttp, yaml, venv; open('{root}/probe/from-runtime', 'w').write('ok')\""
    )
    assert host.ssh(f"cat {root}/probe/from-runtime").stdout == "ok"
    assert Path(root, "probe", "from-runtime").read_text() == "ok"


@pytest.mark.loopdev
def test_block_volume_mounted_inside_a_host_is_seen_by_the_engine(
    fleet: Fleet, start_host: Callable[..., Host]
) -> None:
    host = start_host("voltest", provider="datacrunch", volume=True)
    try:
        dev, mnt = host.block_device, host.block_mount
        assert dev and mnt and dev.startswith("/dev/loop")
        assert host.ssh(f"blkid {dev}", check=False).returncode == 2  # a fresh volume: no filesystem
        host.ssh(
            f"mkfs.ext4 -q {dev} && mkdir -p {mnt} && mount UUID=$(blkid -s UUID -o value {dev}) {mnt}"
            f" && echo kept > {mnt}/marker"
        )
        assert host.ssh(f"findmnt -n -o SOURCE {mnt}").stdout.strip() == dev
        # On the machine: the mount made inside the host propagated to the same path ...
        assert run(["findmnt", "-n", "-o", "SOURCE", mnt]).stdout.strip() == dev
        assert Path(mnt, "marker").read_text() == "kept\n"
        # ... so a container the host starts through the engine sees the volume's files.
        out = host.ssh(f"docker run --rm -v {mnt}:{mnt}:ro {fleet.runtime_image} cat {mnt}/marker").stdout
        assert out == "kept\n"
        # After a reboot the fstab entry (by UUID, nofail) mounts the volume again.
        host.ssh(f"echo UUID=$(blkid -s UUID -o value {dev}) {mnt} ext4 defaults,nofail 0 2 >> /etc/fstab")
        fleet.reboot_host("voltest")
        assert run(["findmnt", "-n", "-o", "SOURCE", mnt]).stdout.strip() == dev
        assert host.ssh(f"cat {mnt}/marker").stdout == "kept\n"
    finally:
        fleet.remove_host("voltest")
    assert not any(dev in line for line in run(["losetup", "-a"]).stdout.splitlines() if "voltest" in line)
    assert run(["findmnt", mnt], check=False).returncode != 0


def test_hosts_and_runtime_containers_clone_the_local_upstreams(
    fleet: Fleet, fleet_hosts: dict[str, Host]
) -> None:
    assert fleet.comfyui is not None
    host = fleet_hosts["dc1"]
    out = host.ssh(
        f"rm -rf /tmp/c && git clone -q {fleet.comfyui.url} /tmp/c && git -C /tmp/c checkout -q {fleet.comfyui.old_ref}"
        " && cat /tmp/c/comfyui_version.py && git -C /tmp/c tag"
    ).stdout
    assert f'__version__ = "{fleet.comfyui.versions[fleet.comfyui.old_ref]}"' in out
    assert {fleet.comfyui.old_ref, fleet.comfyui.new_ref, fleet.comfyui.broken_ref} <= set(out.split())
    good = fleet.make_node_pack_repo(
        "selftest-pack", classes=["SelftestUpper", "SelftestLower"], requirements=["six"]
    )
    bad = fleet.make_node_pack_repo("selftest-broken", classes=["Nope"], broken=True)
    # Runtime containers share the machine's network too: they clone over loopback as well.
    script = (
        f"set -e; cd /tmp; git clone -q {good} good; git clone -q {bad} bad; cat good/requirements.txt; "
        'python3 -c \'import importlib.util as u; s=u.spec_from_file_location("p", "good/__init__.py"); '
        "m=u.module_from_spec(s); s.loader.exec_module(m); print(sorted(m.NODE_CLASS_MAPPINGS))'; "
        "python3 bad/__init__.py || echo broken-raised"
    )
    out = docker("run", "--rm", "--network", "host", fleet.runtime_image, "sh", "-c", script)
    assert "six" in out
    assert "['SelftestLower', 'SelftestUpper']" in out
    assert "broken-raised" in out


def test_unreachable_host_fails_alone(
    fleet_hosts: dict[str, Host],
    start_host: Callable[..., Host],
    write_inventory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    gone = start_host(unreachable=True)
    inv = write_inventory([*fleet_hosts.values(), gone], tmp_path / "inventory.py")
    proc = pyinfra(inv, "exec", "--", "echo alive")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert said(out, "lambda1") == said(out, "dc1") == ["alive"], out
    assert gone.name in out


@pytest.mark.loopdev
def test_teardown_leaves_nothing_and_sessions_run_side_by_side(
    fleet: Fleet, fleet_hosts: dict[str, Host]
) -> None:
    other = Fleet().up()
    try:
        assert (
            other.id != fleet.id
            and other.comfyui
            and fleet.comfyui
            and other.comfyui.url != fleet.comfyui.url
        )
        host = other.add_host("dc1", provider="datacrunch", volume=True)
        host.ssh(
            f"mkfs.ext4 -q {host.block_device} && mkdir -p {host.block_mount} && mount {host.block_device} {host.block_mount}"
        )
        root, device = other.root, host.block_device
    finally:
        done = other.down()
    assert any("container" in d for d in done), done
    assert not root.exists()
    assert docker("ps", "-aq", "--filter", f"label=comfyfleet.fleet={other.id}") == ""
    assert str(root) not in Path("/proc/self/mountinfo").read_text()
    assert str(root) not in run(["losetup", "-a"]).stdout, device
    # The session's own fleet is untouched by the other's teardown.
    assert fleet_hosts["dc1"].ssh("echo still-here").stdout == "still-here\n"


def test_down_all_removes_a_crashed_sessions_leftovers(fleet: Fleet) -> None:
    crashed = Fleet().up()
    host = crashed.add_host("lambda9", provider="lambda")
    crashed.upstreams.stop()
    state_file = crashed.root / "state.json"
    state = json.loads(state_file.read_text())
    dead = subprocess.Popen(["true"])
    dead.wait()
    state["owner_pid"] = dead.pid  # as if the pytest process that made it had been killed
    state_file.write_text(json.dumps(state))
    assert any(f["id"] == crashed.id and f["stale"] for f in list_fleets())
    assert not any(f["id"] == fleet.id and f["stale"] for f in list_fleets())
    down_all(stale_only=True)
    assert not crashed.root.exists()
    assert docker("ps", "-aq", "--filter", f"name={host.container}") == ""
    assert fleet.root.exists()


def test_warm_start_of_two_hosts_is_quick(fleet: Fleet) -> None:
    t0 = time.monotonic()
    a = fleet.add_host("warm1", provider="lambda")
    b = fleet.add_host("warm2", provider="datacrunch", volume=True)
    elapsed = time.monotonic() - t0
    try:
        assert a.ssh("true").returncode == 0 and b.ssh("true").returncode == 0
    finally:
        fleet.remove_host("warm1")
        fleet.remove_host("warm2")
    assert elapsed < 15, f"two hosts took {elapsed:.1f}s to answer SSH"


def test_runtime_image_serves_comfyui_from_the_upstream(fleet: Fleet) -> None:
    assert fleet.comfyui is not None
    port = free_port(fleet.ports)
    name = f"{fleet.prefix}selftest-comfyui"
    script = (
        f"git clone -q {fleet.comfyui.url} /opt/ComfyUI && cd /opt/ComfyUI && git checkout -q {fleet.comfyui.new_ref}"
        f" && mkdir -p custom_nodes && exec python3 main.py --listen 127.0.0.1 --port {port} --cpu"
    )
    docker("run", "-d", "--name", name, "--network", "host", fleet.runtime_image, "sh", "-c", script)
    try:
        deadline = time.monotonic() + (600 if fleet.comfyui.real else 60)
        while True:
            try:
                stats = httpx.get(f"http://127.0.0.1:{port}/system_stats", timeout=2).json()
                break
            except httpx.HTTPError:
                status = docker("inspect", "--format", "{{.State.Status}}", name).strip()
                if status != "running" or time.monotonic() > deadline:
                    pytest.fail(
                        f"ComfyUI did not answer ({status}):\n{run(['docker', 'logs', name], check=False).stderr}"
                    )
                time.sleep(0.3)
        assert stats["system"]["comfyui_version"] == fleet.comfyui.versions[fleet.comfyui.new_ref]
    finally:
        docker("rm", "-f", name, check=False)


CONNECT_TWICE = """
import runpy
import sys
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all

for line in sys.stdin:
    inventory = Inventory((runpy.run_path(line.strip())["fleet"], {}))
    state = State(inventory, Config())
    connect_all(state)
    print("connected", sorted(h.name for h in state.activated_hosts), flush=True)
    disconnect_all(state)
"""


def test_one_pyinfra_process_reaches_a_host_started_after_its_first_connection(
    fleet: Fleet,
    fleet_hosts: dict[str, Host],
    start_host: Callable[..., Host],
    write_inventory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    # pyinfra memoizes known_hosts files per process (the comfyfleet CLI and tests run it
    # in-process): a host added later must not depend on a file read before it existed.
    proc = subprocess.Popen(
        [sys.executable, "-c", CONNECT_TWICE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin and proc.stdout
    try:
        proc.stdin.write(f"{write_inventory([fleet_hosts['lambda1']], tmp_path / 'one.py')}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "connected ['lambda1']"
        late = start_host()
        proc.stdin.write(f"{write_inventory([fleet_hosts['lambda1'], late], tmp_path / 'two.py')}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == f"connected {sorted(['lambda1', late.name])}"
    finally:
        proc.stdin.close()
        proc.wait(30)
