#!/usr/bin/env bash
# Installs what a fresh machine lacks for comfyfleet's main job and its tests:
# Debian packages for the local SSH test fleet (Docker engine, debootstrap, loop
# devices), and a virtualenv in .venv with the package, comfyui-api and test deps.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
# chromium + fonts-liberation: the headless browser Playwright drives for the /docs tests and the
# frontend oracle (tests/oracle); lvm2: the LVM volume attack tests; haproxy, socat, openssl: the fleet gateway's tests;
# radosgw + ceph-mon + ceph-osd: Ceph's S3 server, the real one the object-store tests upload to
# (comfyfleet.devkit.radosgw).
for pkg in docker.io debootstrap openssh-client e2fsprogs util-linux lvm2 iproute2 curl git rsync chromium fonts-liberation haproxy socat openssl radosgw ceph-mon ceph-osd; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
if [ -f comfyui-api/pyproject.toml ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e ./comfyui-api 2>&1 | grep -v '^WARNING: Location' || true
fi
.venv/bin/python -c 'import comfyfleet' 
