"""Facts about block devices: what is attached, which filesystem it holds, where it is mounted.

pyinfra has no blkid fact, and ``lsblk``'s FSTYPE comes from udev's cache, which can be
stale or missing (containers, freshly attached volumes). The filesystem check that
guards ``mkfs`` therefore probes the device itself with ``blkid -p``.
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import FactBase, StringCommand

from comfyfleet.shell import script

# blkid exits 2 when it finds no filesystem or partition table, and also when it could not
# open the device at all: so "blank" needs more proof. READ says whether the first 4 KiB
# could be read, SIGNATURES counts what wipefs (a second, independent prober) finds, and
# the kernel says whether the device is mounted, swap, the root filesystem's disk, or held
# by another device (LVM, RAID, dm-crypt). Any other blkid exit code is an error.
_VOLUME_SCRIPT = r"""
echo '@lsblk'
lsblk -J -b -p -o NAME,TYPE,SIZE,MOUNTPOINT,PKNAME 2>/dev/null || echo '{}'
rootsrc=$(readlink -f "$(findmnt -n -o SOURCE / 2>/dev/null)" 2>/dev/null)
rootdisk=$(lsblk -n -d -p -o PKNAME "$rootsrc" 2>/dev/null)
probe() {
  echo "@blkid $1"
  if [ ! -b "$1" ]; then echo 'MISSING=yes'; return 0; fi
  blkid -p -o export "$1"; rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 2 ] || { echo "blkid failed on $1 ($rc)" >&2; exit 1; }
  real=$(readlink -f "$1")
  n=$(dd if="$1" bs=4096 count=1 2>/dev/null | wc -c)
  [ "$n" -eq 4096 ] && echo 'READ=ok' || echo 'READ=failed'
  sig=$(wipefs -n -p "$1" 2>/dev/null) && echo "SIGNATURES=$(printf '%s\n' "$sig" | grep -c -v -e '^#' -e '^$')" || echo 'SIGNATURES=error'
  mp=$(awk -v d="$real" '$1 == d {print $2; exit}' /proc/mounts)
  [ -z "$mp" ] || echo "MOUNTED=$mp"
  awk -v d="$real" '$1 == d {found=1} END {exit !found}' /proc/swaps && echo 'SWAP_ACTIVE=yes'
  { [ "$real" = "$rootsrc" ] || [ "$real" = "$rootdisk" ]; } && echo 'ROOT=yes'
  h=$(ls "/sys/class/block/${real##*/}/holders" 2>/dev/null | tr '\n' ' ')
  [ -z "$h" ] || echo "HOLDERS=$h"
  return 0
}
if [ "$1" = auto ]; then
  for dev in $(lsblk -d -n -p -o NAME,TYPE 2>/dev/null | awk '$2 == "disk" {print $1}'); do probe "$dev"; done
else
  probe "$1"
fi
echo '@fstab'
grep -v '^[[:space:]]*#' /etc/fstab 2>/dev/null | awk -v mp="$2" 'NF >= 2 && $2 == mp'
echo '@mount'
awk -v mp="$2" '$2 == mp {print $1}' /proc/mounts | while read -r src; do readlink -f "$src"; done
"""


class BlockVolume(FactBase[dict[str, Any] | None]):
    """Devices, blkid probes, fstab lines and the current mount for a block volume.

    + device: ``auto`` (probe every whole disk) or a ``/dev/...`` path
    + mount_point: where the volume should be mounted

    Returns ``{"devices": lsblk blockdevices, "probes": {dev: {TYPE, UUID, PTTYPE, USAGE, MISSING,
    READ, SIGNATURES, MOUNTED, SWAP_ACTIVE, ROOT, HOLDERS}}, "fstab": [lines for mount_point],
    "mounted_from": source or None}``.
    """

    @staticmethod
    def default() -> None:
        return None

    def command(self, device: str, mount_point: str) -> StringCommand:
        return script(_VOLUME_SCRIPT, device, mount_point)

    def process(self, output: list[str]) -> dict[str, Any] | None:
        result: dict[str, Any] = {"devices": [], "probes": {}, "fstab": [], "mounted_from": None}
        section, current, lsblk_lines = "", "", []
        for line in output:
            if line.startswith("@"):
                section, _, current = line[1:].partition(" ")
                if section == "blkid":
                    result["probes"][current] = {}
                continue
            if section == "lsblk":
                lsblk_lines.append(line)
            elif section == "blkid":
                key, sep, value = line.partition("=")
                if sep:
                    result["probes"][current][key] = value
            elif section == "fstab" and line.strip():
                result["fstab"].append(line.strip())
            elif section == "mount" and line.strip():
                result["mounted_from"] = line.strip()
        try:
            result["devices"] = json.loads("\n".join(lsblk_lines) or "{}").get("blockdevices", [])
        except json.JSONDecodeError:
            result["devices"] = []
        return result
