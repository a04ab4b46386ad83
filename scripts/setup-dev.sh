#!/usr/bin/env bash
# Installs what a fresh machine lacks for comfyfleet's main job and its tests:
# Debian packages for the local SSH test fleet (Docker engine, debootstrap, loop
# devices), and a virtualenv in .venv with the package, comfyui-api and test deps.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
# chromium + fonts-liberation: the headless browser Playwright drives for the /docs tests and the
# frontend oracle (tests/oracle); lvm2: the LVM volume attack tests; haproxy, socat, openssl: the fleet gateway's tests; nodejs + npm:
# s3rver for the object-store tests; radosgw + ceph-mon + ceph-osd: Ceph's S3 server, the real one those tests
# upload to (comfyfleet.devkit.radosgw).
for pkg in docker.io debootstrap openssh-client e2fsprogs util-linux lvm2 iproute2 curl git rsync chromium fonts-liberation haproxy socat openssl radosgw ceph-mon ceph-osd; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
# npm comes with the machine's Node.js where there is one (NodeSource's nodejs conflicts with Debian's npm).
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
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
# s3rver (npm): the fake S3 server the object-store tests upload to (comfyfleet.devkit.s3rver).
[ -x .cache/s3rver/node_modules/.bin/s3rver ] || {
  mkdir -p .cache/s3rver
  npm install --prefix .cache/s3rver --no-audit --no-fund --silent s3rver@3.7.1 >/dev/null
}
