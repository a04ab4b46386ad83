"""Ceph's RADOS Gateway (Debian's ``radosgw``, Ceph 16.2) as a real S3 server on loopback.

Not a double: radosgw is the S3 implementation Ceph clusters serve in production (it checks
Signature V4 in headers and presigned URLs, expiry included, and answers S3's error codes).
Pacific has no standalone backend (``dbstore`` came in 17.2), so this starts the smallest
cluster that can carry it, all in the foreground under one directory: one monitor (no auth,
loopback, msgr v1), one OSD on ``memstore`` (objects in RAM, nothing on disk but the
monitor's store) and radosgw's beast frontend. About 15 s to the first answer, ~100 MB RAM.
``scripts/setup-dev.sh`` installs ``radosgw ceph-mon ceph-osd``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from comfyui_api.object_store import ObjectStore

from comfyfleet.devkit.standin import free_port


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible server on loopback with one bucket and its credentials."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def store_config(self, prefix: str = "outputs/", **extra: object) -> dict[str, object]:
        """An object store file's content for comfyui-api pointing at this server."""
        return {
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "region": "us-east-1",
            "prefix": prefix,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            **extra,
        }

    def write_config(self, path: Path, **extra: object) -> Path:
        path.write_text(json.dumps(self.store_config(**extra)))  # type: ignore[arg-type]
        path.chmod(0o600)
        return path


BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")

_CONF = """[global]
fsid = {fsid}
mon host = v1:127.0.0.1:{mon_port}
auth cluster required = none
auth service required = none
auth client required = none
ms bind msgr2 = false
ms bind ipv6 = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
osd crush update on start = false
osd class update on start = false
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail crit = 0
mon max pg per osd = 1000
osd objectstore = memstore
memstore device bytes = 536870912
run dir = {d}/run
log file = {d}/log/$name.log
admin socket = {d}/run/$name.asok
mon data = {d}/mon
osd data = {d}/osd
keyring = {d}/keyring
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
"""


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


@contextmanager
def radosgw(directory: Path, bucket: str = "renders", timeout_s: float = 90) -> Iterator[S3Server]:
    """A one-node Ceph with radosgw, a user with fresh keys and one bucket, until the block ends."""
    if missing := missing_binaries():
        raise RuntimeError(f"{', '.join(missing)} missing: run bash scripts/setup-dev.sh (Debian radosgw)")
    d = directory
    for sub in ("mon", "osd", "run", "log"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "keyring").touch()
    mon_port, rgw_port, fsid = free_port(), free_port(), str(uuid.uuid4())
    conf = d / "ceph.conf"
    conf.write_text(_CONF.format(fsid=fsid, mon_port=mon_port, rgw_port=rgw_port, d=d))
    c = ["-c", str(conf)]
    procs: list[subprocess.Popen[bytes]] = []

    def step(*argv: str) -> str:
        done = subprocess.run([*argv], capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')[-500:]}")
        return done.stdout.decode()

    def daemon(*argv: str) -> None:
        log = open(d / "log" / f"{argv[0]}.out", "ab")  # noqa: SIM115 - handed to the child
        procs.append(subprocess.Popen([*argv, "-f"], stdout=log, stderr=subprocess.STDOUT))
        log.close()

    try:
        step(
            "monmaptool",
            "--create",
            "--add",
            "a",
            f"v1:127.0.0.1:{mon_port}",
            "--fsid",
            fsid,
            str(d / "monmap"),
        )
        step("ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(d / "monmap"))
        daemon("ceph-mon", *c, "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = step("ceph", *c, "--connect-timeout", "30", "osd", "create", osd_uuid).strip()
        step("ceph-osd", *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        step("ceph", *c, "osd", "crush", "add", f"osd.{osd_id}", "1", "root=default", "host=localhost")
        daemon("ceph-osd", *c, "-i", osd_id)
        daemon("radosgw", *c, "-n", "client.rgw")
        endpoint = f"http://127.0.0.1:{rgw_port}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                httpx.get(endpoint, timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"radosgw did not answer on {endpoint}: see {d / 'log'}") from None
                time.sleep(0.2)
        # radosgw-admin makes the keys (a secret on a command line would show in `ps`).
        made = json.loads(
            step("radosgw-admin", *c, "user", "create", "--uid=comfyfleet", "--display-name=comfyfleet")
        )
        access, secret = made["keys"][0]["access_key"], made["keys"][0]["secret_key"]
        server = S3Server(endpoint=endpoint, bucket=bucket, access_key=access, secret_key=secret)
        _create_bucket(server)
        yield server
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _create_bucket(server: S3Server) -> None:
    store = ObjectStore(**server.store_config())  # type: ignore[arg-type]
    url = f"{server.endpoint}/{server.bucket}"
    headers = store.sign("PUT", url, {"content-length": "0"}, hashlib.sha256(b"").hexdigest())
    answer = httpx.put(url, headers=headers, content=b"", timeout=30)
    if answer.status_code != 200:
        raise RuntimeError(
            f"radosgw refused to create bucket {server.bucket}: {answer.status_code} {answer.text}"
        )
