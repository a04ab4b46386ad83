"""A block volume formatted once, mounted by UUID with a ``nofail`` fstab entry.

The one rule that matters: a device holding data is never reformatted. ``mkfs`` runs only
on positive proof of a blank device: ``blkid -p`` finds neither a filesystem nor a
partition table (exit 2, which it also gives for a device it could not open), the first
block could be read, ``wipefs -n`` finds no signature, and the device is not mounted, not
swap, not the root filesystem's disk, and held by nothing (LVM, RAID, dm-crypt). The
command proves it again on the host right before formatting, so a stale fact cannot wipe
a disk. The root disk, a device mounted elsewhere, swap and LVM/RAID members are refused
with one line; ``auto`` never picks them.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra import host
from pyinfra.api import operation

from comfyfleet.facts import prefetch
from comfyfleet.facts.block import BlockVolume
from comfyfleet.shell import fail, script

_MKFS_SCRIPT = r"""
refuse() { echo "refusing to format $1: $2" >&2; exit 1; }
blkid -p "$1" >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] || refuse "$1" "blkid reports a filesystem or partition table"
[ "$(dd if="$1" bs=4096 count=1 2>/dev/null | wc -c)" -eq 4096 ] || refuse "$1" "its first block cannot be read"
sig=$(wipefs -n -p "$1" 2>/dev/null) || refuse "$1" "wipefs cannot probe it"
[ -z "$(printf '%s\n' "$sig" | grep -v '^#')" ] || refuse "$1" "wipefs finds signatures on it"
real=$(readlink -f "$1")
! awk -v d="$real" '$1 == d {f=1} END {exit !f}' /proc/mounts /proc/swaps || refuse "$1" "it is mounted or used as swap"
[ -z "$(ls "/sys/class/block/${real##*/}/holders" 2>/dev/null)" ] || refuse "$1" "another device holds it (LVM, RAID, dm-crypt)"
mkfs.ext4 -q -F -L "$2" "$1"
"""

# The UUID is read after mkfs (unknown before), so the fstab line is written on the host.
_FSTAB_SCRIPT = r"""
set -e
uuid=$(blkid -p -s UUID -o value "$1")
[ -n "$uuid" ] || { echo "no UUID on $1" >&2; exit 1; }
fstype=$(blkid -p -s TYPE -o value "$1")
if ! grep -qs "^UUID=$uuid[[:space:]]" /etc/fstab; then
  printf 'UUID=%s %s %s defaults,nofail 0 2\n' "$uuid" "$2" "$fstype" >> /etc/fstab
fi
"""

_MOUNT_SCRIPT = r"""
set -e
mkdir -p "$2"
uuid=$(blkid -p -s UUID -o value "$1")
mount -U "$uuid" "$2"
"""


class VolumeProblem(Exception):
    """The volume cannot be handled safely; the message says what to fix."""


def refusal(dev: str, probe: dict[str, str], mount_point: str) -> str | None:
    """Why dev must not become the data volume at mount_point, or None."""
    fix = "set block_device in the host data to the attached data volume (see `lsblk`)"
    if probe.get("ROOT"):
        return f"{dev} holds the root filesystem: refusing to use it as the data volume; {fix}"
    mounted = probe.get("MOUNTED")
    if mounted and mounted != mount_point:
        return f"{dev} is already mounted at {mounted}: refusing to mount it at {mount_point} too; {fix}"
    if probe.get("SWAP_ACTIVE") or probe.get("TYPE") == "swap":
        return f"{dev} is a swap area, not a filesystem: refusing to use it; {fix}"
    if probe.get("HOLDERS"):
        return f"{dev} is in use by {probe['HOLDERS'].strip()} (LVM, RAID or dm-crypt): refusing to use it; {fix}"
    if probe.get("TYPE") and probe.get("USAGE", "filesystem") != "filesystem":
        return f"{dev} is a {probe['TYPE']} member, not a filesystem: refusing to use it; {fix}"
    return None


def choose_device(facts: dict[str, Any], device: str, mount_point: str) -> str:
    """The device to use: the configured one, or for ``auto`` the single usable unmounted disk without partitions.

    Raises VolumeProblem when the choice is not clear or the device must not be used.
    """
    if device != "auto":
        probe = facts["probes"].get(device, {})
        if probe.get("MISSING"):
            raise VolumeProblem(f"block_device {device} does not exist on this host: check `lsblk`")
        reason = refusal(device, probe, mount_point)
        if reason:
            raise VolumeProblem(reason)
        return device
    if facts.get("mounted_from"):
        return str(facts["mounted_from"])
    candidates = []
    for dev in facts.get("devices", []):
        if dev.get("type") != "disk" or dev.get("children") or dev.get("mountpoint"):
            continue
        probe = facts["probes"].get(dev["name"], {})
        if probe.get("PTTYPE") or refusal(dev["name"], probe, mount_point):
            continue
        candidates.append(dev["name"])
    if len(candidates) != 1:
        found = ", ".join(candidates) or "none"
        raise VolumeProblem(
            f"cannot pick the block volume for {mount_point} (unmounted disks without partitions, swap or LVM:"
            f" {found}): set block_device in the host data"
        )
    return candidates[0]


@operation()
def volume(device: str | None, mount_point: str, label: str = "comfyfleet") -> Generator[Any, None, None]:
    """Format (only when blank), add to fstab by UUID with ``nofail``, and mount a block volume.

    + device: ``/dev/...`` or ``auto`` (the single unmounted, unpartitioned disk)
    + mount_point: where to mount it
    + label: ext4 label given when the volume is formatted

    **Example:**

    .. code:: python

        block.volume(device="auto", mount_point="/mnt/data")
    """
    if not device:
        host.noop("no block volume configured")
        return
    facts = prefetch.fact(BlockVolume, device=device, mount_point=mount_point)
    if facts is None:
        yield fail(f"could not read block devices for {mount_point}")
        return
    try:
        yield from _plan(facts, device, mount_point, label)
    except VolumeProblem as exc:
        yield fail(str(exc))


def _plan(facts: dict[str, Any], device: str, mount_point: str, label: str) -> Generator[Any, None, None]:
    dev = choose_device(facts, device, mount_point)
    probe = facts["probes"].get(dev, {})
    mounted_from = facts.get("mounted_from")

    if mounted_from and mounted_from != dev:
        raise VolumeProblem(f"{mount_point} is already mounted from {mounted_from}, not {dev}")

    blank = not probe.get("TYPE") and not probe.get("PTTYPE") and not mounted_from
    if probe.get("PTTYPE") and not probe.get("TYPE"):
        raise VolumeProblem(f"{dev} has a partition table: give the partition as block_device")
    if blank and probe.get("READ") != "ok":
        raise VolumeProblem(
            f"{dev}: blkid found nothing but its first block cannot be read, so it is not known"
            " to be blank: not formatted; check that the volume is attached"
        )
    if blank and probe.get("SIGNATURES") != "0":
        raise VolumeProblem(
            f"{dev}: blkid found nothing but wipefs finds signatures ({probe.get('SIGNATURES')}):"
            f" not formatted; inspect it with `wipefs {dev}`"
        )
    do_format = blank

    if do_format:
        yield script(_MKFS_SCRIPT, dev, label)
    else:
        host.noop(f"{dev} holds a {probe.get('TYPE', 'mounted')} filesystem: not formatted")

    uuid = probe.get("UUID", "")
    fstab_ok = bool(uuid) and any(line.split()[0] == f"UUID={uuid}" for line in facts.get("fstab", []))
    other_entries = [line for line in facts.get("fstab", []) if not uuid or line.split()[0] != f"UUID={uuid}"]
    if other_entries and not do_format and uuid:
        raise VolumeProblem(
            f"/etc/fstab already mounts something else at {mount_point} ({other_entries[0].split()[0]}): fix fstab"
        )
    if do_format or not fstab_ok:
        yield script(_FSTAB_SCRIPT, dev, mount_point)
    else:
        host.noop(f"fstab mounts UUID={uuid} at {mount_point}")

    if mounted_from:
        host.noop(f"{dev} mounted at {mount_point}")
    else:
        yield script(_MOUNT_SCRIPT, dev, mount_point)
