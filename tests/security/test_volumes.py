"""Block volumes: mkfs only on proof of a blank device; root, mounted, swap and LVM devices refused.

Every attack runs on a real loop device of this machine (or its real root disk, read only):
the BlockVolume fact's script probes it for real, block.volume decides from what it reported,
and the guard the host runs right before mkfs runs for real as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy.deploy_harness import render

from comfyfleet.operations.block import _MKFS_SCRIPT
from comfyfleet.shell import script
from security._host_fixtures import loop_device, plan_volume, refusal_line, sh, volume_facts

pytestmark = pytest.mark.loopdev


def blkid_type(dev: str) -> str:
    return sh(f"blkid -p -s TYPE -o value {dev}", check=False).stdout.strip()


def test_blank_volume_is_formatted_once_after_proof(tmp_path: Path) -> None:
    mnt = str(tmp_path / "data")
    with loop_device(tmp_path / "v.img") as dev:
        facts = volume_facts(dev, mnt)
        assert facts["probes"][dev] == {
            "READ": "ok",
            "SIGNATURES": "0",
        }  # blkid: nothing; read and wipefs: blank
        commands = plan_volume(dev, mnt, facts)
        assert "mkfs.ext4" in commands[0] and "/etc/fstab" in commands[1]
        sh(commands[0])  # the guard proves it again on the host, then formats
        assert blkid_type(dev) == "ext4"
        again = plan_volume(dev, mnt, volume_facts(dev, mnt))
        assert not any("mkfs" in c for c in again)  # a volume with a filesystem is never formatted again


def test_device_that_cannot_be_read_is_not_formatted(tmp_path: Path) -> None:
    # A loop device with no backing file: blkid -p exits 2 exactly as for a blank disk.
    with loop_device(tmp_path / "v.img") as dev:
        sh(f"losetup -d {dev}")
        assert sh(f"blkid -p {dev}", check=False).returncode == 2
        facts = volume_facts(dev, str(tmp_path / "data"))
        assert facts["probes"][dev]["READ"] == "failed"
        line = refusal_line(plan_volume(dev, str(tmp_path / "data"), facts))
    assert line.startswith(f"{dev}: blkid found nothing but its first block cannot be read"), line


def test_root_filesystem_disk_is_refused_with_one_line(tmp_path: Path) -> None:
    root = sh("readlink -f $(findmnt -n -o SOURCE /)").stdout.strip()
    assert root.startswith("/dev/"), f"/ is not on a block device here ({root})"
    mnt = str(tmp_path / "data")
    commands = plan_volume(root, mnt, volume_facts(root, mnt))
    line = refusal_line(commands)
    assert line.startswith(f"{root} holds the root filesystem: refusing"), commands
    assert len(commands) == 1 and "\n" not in line


def test_device_mounted_elsewhere_is_refused_not_mounted_twice(tmp_path: Path) -> None:
    elsewhere, mnt = tmp_path / "elsewhere", str(tmp_path / "data")
    elsewhere.mkdir()
    with loop_device(tmp_path / "v.img") as dev:
        sh(f"mkfs.ext4 -q {dev} && mount {dev} {elsewhere} && echo keep > {elsewhere}/f")
        commands = plan_volume(dev, mnt, volume_facts(dev, mnt))
        assert refusal_line(commands).startswith(f"{dev} is already mounted at {elsewhere}: refusing"), (
            commands
        )
        assert len(commands) == 1
        # Even with stale facts saying "blank", the host-side guard refuses a mounted device.
        assert sh(render(script(_MKFS_SCRIPT, dev, "comfyfleet")), check=False).returncode == 1
        assert (elsewhere / "f").read_text() == "keep\n"


def test_swap_area_is_refused_and_auto_leaves_no_fstab_line(tmp_path: Path) -> None:
    mnt = str(tmp_path / "data")
    with loop_device(tmp_path / "v.img") as dev:
        sh(f"mkswap -q {dev}")
        facts = volume_facts(dev, mnt)
        assert refusal_line(plan_volume(dev, mnt, facts)).startswith(
            f"{dev} is a swap area, not a filesystem"
        )
        # auto: lsblk calls loop devices "loop", so this one is offered to auto as the lone spare disk.
        facts["devices"] = [{"name": dev, "type": "disk"}]
        commands = plan_volume("auto", mnt, facts)
        assert refusal_line(commands).startswith(f"cannot pick the block volume for {mnt}"), commands
        assert not any("/etc/fstab" in c or "mkfs" in c for c in commands)
        assert blkid_type(dev) == "swap"


def test_lvm_member_is_refused_and_auto_leaves_no_fstab_line(tmp_path: Path) -> None:
    mnt = str(tmp_path / "data")
    with loop_device(tmp_path / "v.img") as dev:
        sh(f"pvcreate -q -y {dev}")
        facts = volume_facts(dev, mnt)
        assert refusal_line(plan_volume(dev, mnt, facts)).startswith(
            f"{dev} is a LVM2_member member, not a filesystem"
        )
        facts["devices"] = [{"name": dev, "type": "disk"}]
        commands = plan_volume("auto", mnt, facts)
        assert refusal_line(commands).startswith(f"cannot pick the block volume for {mnt}"), commands
        assert not any("/etc/fstab" in c or "mkfs" in c for c in commands)
        assert blkid_type(dev) == "LVM2_member"


def test_stale_blank_fact_cannot_wipe_a_filesystem(tmp_path: Path) -> None:
    with loop_device(tmp_path / "v.img") as dev:
        facts = volume_facts(dev, str(tmp_path / "data"))
        commands = plan_volume(dev, str(tmp_path / "data"), facts)  # planned while blank ...
        sh(f"mkfs.xfs -q {dev} 2>/dev/null || mkfs.ext2 -q {dev}")  # ... then someone put data on it
        before = blkid_type(dev)
        proc = sh(commands[0], check=False)
        assert proc.returncode == 1 and "refusing to format" in proc.stderr
        assert blkid_type(dev) == before
