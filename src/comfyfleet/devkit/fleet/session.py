"""One test fleet: engine, images, upstreams, hosts, inventory files, and a teardown that leaves nothing.

Everything a fleet makes lives under ``/tmp/cf-fleet-<id>/`` and every container it
starts is named ``cf-<id>-...`` and labelled ``comfyfleet.fleet=<id>``, so several test
sessions run side by side and :func:`down_all` can remove the leftovers of a crashed one
from what is on disk alone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pprint
import secrets
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import comfyfleet.devkit.fleet.images as images
from comfyfleet.devkit.fleet.engine import docker, ensure_engine, run
from comfyfleet.devkit.fleet.hosts import Host, LoopVolume, free_port, ssh_banner, start_container
from comfyfleet.devkit.fleet.upstreams import ComfyUIUpstream, GitUpstreams

BASE = Path(os.environ.get("COMFYFLEET_FLEET_TMP", "/tmp"))
LABEL = "comfyfleet.fleet"
PROVIDER_USERS = {"lambda": "ubuntu", "datacrunch": "root", "generic": "root"}


class Fleet:
    """A set of SSH test hosts on this machine with the upstreams they install from."""

    def __init__(self, persistent: bool = False, fleet_id: str | None = None) -> None:
        self.id = fleet_id or secrets.token_hex(3)
        self.root = BASE / f"cf-fleet-{self.id}"
        self.prefix = f"cf-{self.id}-"
        self.persistent = persistent
        self.hosts: dict[str, Host] = {}
        self.ports: set[int] = set()
        self.timings: dict[str, float] = {}
        self.build_log: list[str] = []
        self.engine = ""
        self.host_image = ""
        self.runtime_image = ""
        self.upstreams = GitUpstreams(self.root)  # replaced in up(); root made there
        self.comfyui: ComfyUIUpstream | None = None
        self.ssh_key = self.root / "ssh" / "id_ed25519"
        self._down = False

    # -- start ---------------------------------------------------------------------------

    def up(self) -> Fleet:
        """Start engine, images and upstreams (no hosts yet); cleans up after itself at exit."""
        down_all(stale_only=True)
        t0 = time.monotonic()
        self.engine = ensure_engine()
        t1 = time.monotonic()
        self.host_image = images.host_image(self.build_log)
        self.runtime_image = images.runtime_image(self.build_log)
        t2 = time.monotonic()
        self.timings.update(engine=t1 - t0, images=t2 - t1)
        self.root.mkdir(mode=0o755, parents=True)
        if not self.persistent:
            atexit.register(self.down)
        self._save()
        # A shared mount: mounts made inside a host (its block volume) propagate back here.
        run(["mount", "--bind", str(self.root), str(self.root)])
        run(["mount", "--make-rshared", str(self.root)])
        (self.root / "ssh").mkdir(mode=0o700)
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"comfyfleet-fleet-{self.id}",
                "-f",
                str(self.ssh_key),
            ]
        )
        self.upstreams = GitUpstreams(self.root)
        self.upstreams.start(detach=self.persistent)
        self.comfyui = self.upstreams.make_comfyui_repo(images.comfyui_checkout())
        self.timings["upstreams"] = time.monotonic() - t2
        self._save()
        return self

    def add_host(
        self,
        name: str,
        provider: str = "lambda",
        ssh_user: str | None = None,
        volume: bool = False,
        volume_size: str = "2G",
        **extra: Any,
    ) -> Host:
        """Start one host; ``volume`` gives it a real loop device as its block volume."""
        host = self._new_host(name, provider, ssh_user, extra)
        host.container = f"{self.prefix}{name}"
        self.hosts[name] = host
        t0 = time.monotonic()
        host.host_dir.mkdir(parents=True)
        if host.ssh_user != "root":
            # Like a home directory: the login user owns it (uid 1000 in the image).
            os.chown(host.host_dir, 1000, 1000)
        if volume:
            host.volume = LoopVolume.create(self.root / f"{name}-volume.img", volume_size)
            host.block_mount = str(host.host_dir / "mnt")
            host.data_root = f"{host.block_mount}/comfyfleet"
        self._save()
        for attempt in range(3):
            try:
                start_container(
                    host, self.host_image, self.authorized_key, {LABEL: self.id, "comfyfleet.host": name}
                )
                break
            except RuntimeError as exc:
                # Another session may have taken the port between our pick and sshd's bind.
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                docker("rm", "-f", host.container, check=False)
                host.ssh_port = free_port(self.ports)
                host.known_hosts = self._known_hosts(name, host.ssh_port)
        self.timings[f"host {name}"] = time.monotonic() - t0
        self._save()
        return host

    def add_unreachable_host(self, name: str, provider: str = "lambda", **extra: Any) -> Host:
        """A host in the inventory whose SSH port has nothing listening (no container)."""
        host = self._new_host(name, provider, None, extra)
        host.known_hosts.touch(mode=0o600)
        self.hosts[name] = host
        self._save()
        return host

    def _new_host(self, name: str, provider: str, ssh_user: str | None, extra: dict[str, Any]) -> Host:
        if name in self.hosts or not name.replace("-", "").isalnum() or name != name.lower():
            raise ValueError(f"host name {name!r} is taken or not lower-case letters, digits and -")
        if self.comfyui is None:
            raise RuntimeError("call Fleet.up() before adding hosts")
        host_dir = self.root / name
        port = free_port(self.ports)
        return Host(
            name=name,
            provider=provider,
            ssh_user=ssh_user or PROVIDER_USERS[provider],
            ssh_port=port,
            ssh_key=self.ssh_key,
            known_hosts=self._known_hosts(name, port),
            host_dir=host_dir,
            data_root=str(host_dir / "data"),
            comfyui_port=free_port(self.ports),
            api_port=free_port(self.ports),
            container_prefix=f"{self.prefix}{name}-",
            extra=extra,
        )

    def reboot_host(self, name: str, wait_s: float = 30.0) -> None:
        """Stop a host, unmount what it had mounted, start it again (fstab mounts come back)."""
        host = self.hosts[name]
        assert host.container is not None
        docker("stop", "-t", "5", host.container)
        # A real reboot loses every mount; propagated mounts would otherwise outlive the stop.
        for target in sorted(_mounts_under(host.host_dir), key=len, reverse=True):
            run(["umount", target], check=False)
        docker("start", host.container)
        deadline = time.monotonic() + wait_s
        while not ssh_banner(host.ssh_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {name} did not come back after a reboot")
            time.sleep(0.1)

    def remove_host(self, name: str) -> None:
        """Stop one host and free its loop device and files (its runtime containers go too)."""
        host = self.hosts.pop(name)
        if host.container is not None:
            ids = set(docker("ps", "-aq", "--filter", f"name=^/?{host.container}", check=False).split())
            fmt = "{{.Id}} {{range .Mounts}}{{.Source}} {{end}}"
            every = docker("ps", "-aq", check=False).split()
            for line in docker("inspect", "--format", fmt, *every, check=False).splitlines() if every else []:
                cid, *sources = line.split()
                if any(s == str(host.host_dir) or s.startswith(f"{host.host_dir}/") for s in sources):
                    ids.add(cid[:12])
            if ids:
                docker("rm", "-f", "-v", *sorted(ids), check=False)
        if host.volume is not None:
            run(["losetup", "--detach", host.volume.device], check=False)
        for target in sorted(_mounts_under(host.host_dir), key=len, reverse=True):
            run(["umount", target], check=False)
        if host.volume is not None:
            host.volume.image.unlink(missing_ok=True)
        run(["rm", "-rf", "--one-file-system", str(host.host_dir)], check=False)
        self._save()

    def _known_hosts(self, name: str, port: int) -> Path:
        # One file per host and port: pyinfra memoizes a known_hosts file's content per
        # process, so a host added later to a shared file would be "unknown" to it.
        return self.root / "ssh" / f"known_hosts-{name}-{port}"

    @property
    def authorized_key(self) -> str:
        return self.ssh_key.with_suffix(".pub").read_text().strip()

    # -- what tests use ------------------------------------------------------------------

    def defaults(self) -> dict[str, Any]:
        """Data every host of this fleet shares: where ComfyUI comes from and what runs it."""
        assert self.comfyui is not None
        return {
            "comfyui_repo": self.comfyui.url,
            "comfyui_ref": self.comfyui.default_ref,
            "runtime_image": self.runtime_image,
        }

    def host_data(self, host: Host, **overrides: Any) -> dict[str, Any]:
        """The full inventory data of one host."""
        return {**self.defaults(), **host.data(), **overrides}

    def write_inventory(
        self,
        hosts: Iterable[Host],
        path: Path | str | None = None,
        host_data: Mapping[str, Mapping[str, Any]] | None = None,
        **group_data: Any,
    ) -> Path:
        """Write a pyinfra inventory (.py) with every host in group ``fleet``; returns its path.

        ``group_data`` applies to every host (over the fleet's defaults), ``host_data`` maps
        a host name to its own overrides.
        """
        path = Path(path) if path is not None else self.root / "inventory.py"
        entries = [
            (h.name, self.host_data(h, **group_data, **dict((host_data or {}).get(h.name, {}))))
            for h in hosts
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f'"""pyinfra inventory of comfyfleet test fleet {self.id} (generated by comfyfleet.devkit.fleet)."""\n\n'
            f"fleet = {pprint.pformat(entries, width=100, sort_dicts=True)}\n"
        )
        return path

    def make_node_pack_repo(self, name: str, **kwargs: Any) -> str:
        """Create a node-pack repository served to the hosts; see GitUpstreams.make_node_pack_repo."""
        return self.upstreams.make_node_pack_repo(name, **kwargs)

    # -- teardown ------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything this fleet made; safe to call twice and after a failed start."""
        if self._down:
            return []
        self._down = True
        self.upstreams.stop()
        with contextlib.suppress(Exception):
            atexit.unregister(self.down)
        return cleanup(self.root, self.id)

    def _save(self) -> None:
        if not self.root.exists():
            return
        state = {
            "id": self.id,
            "owner_pid": os.getpid(),
            "persistent": self.persistent,
            "git_pid": self.upstreams.pid,
            "git_url": self.upstreams.base_url if self.upstreams.port else None,
            "hosts": {n: {**h.data(), "container": h.container} for n, h in self.hosts.items()},
            "volumes": {h.volume.device: str(h.volume.image) for h in self.hosts.values() if h.volume},
        }
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.rename(self.root / "state.json")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this process's mount namespace."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if target == str(path) or target.startswith(f"{path}/"):
            found.append(target)
    return found


def cleanup(root: Path, fleet_id: str) -> list[str]:
    """Remove a fleet's containers, mounts, loop devices, server and files, from what is on disk."""
    done: list[str] = []
    state: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((root / "state.json").read_text())
    git_pid = int(state.get("git_pid") or 0)
    if git_pid and _pid_alive(git_pid):
        with contextlib.suppress(OSError):
            if b"gitserve.py" in Path(f"/proc/{git_pid}/cmdline").read_bytes():
                os.kill(git_pid, signal.SIGTERM)
                done.append(f"git server {git_pid}")
    # Hosts (by label and name) and the runtime containers they started (by name prefix,
    # or by a bind mount under the fleet's directory).
    ids = set(docker("ps", "-aq", "--filter", f"label={LABEL}={fleet_id}", check=False).split())
    ids |= set(docker("ps", "-aq", "--filter", f"name=^/?cf-{fleet_id}-", check=False).split())
    every = docker("ps", "-aq", check=False).split()
    if every:
        fmt = "{{.Id}} {{range .Mounts}}{{.Source}} {{end}}"
        for line in docker("inspect", "--format", fmt, *every, check=False).splitlines():
            cid, *sources = line.split()
            if any(s == str(root) or s.startswith(f"{root}/") for s in sources):
                ids.add(cid[:12])
    if ids:
        docker("rm", "-f", "-v", *sorted(ids), check=False, timeout=120)
        done.append(f"{len(ids)} container(s)")
    listing = run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"], check=False).stdout
    # Before unmounting: a loop device's back-file path is only readable while the fleet's
    # mount is in place. A device still mounted is detached as soon as it is unmounted below.
    with contextlib.suppress(ValueError):
        for dev in json.loads(listing or "{}").get("loopdevices", []):
            back = (dev.get("back-file") or "").removesuffix(" (deleted)")
            image = state.get("volumes", {}).get(dev["name"], "")
            # Once the fleet's bind mount is gone the kernel shows the path relative to it.
            if back.startswith(f"{root}/") or (image and back in (image, "/" + Path(image).name)):
                run(["losetup", "--detach", dev["name"]], check=False)
                done.append(f"losetup -d {dev['name']}")
    for target in sorted(_mounts_under(root), key=len, reverse=True):
        if run(["umount", target], check=False).returncode != 0:
            run(["umount", "-l", target], check=False)
        done.append(f"umount {target}")
    if root.exists():
        # --one-file-system: if an unmount failed above, never delete through into a volume.
        run(["rm", "-rf", "--one-file-system", str(root)], check=False)
        done.append(f"rm {root}")
    return done


def list_fleets() -> list[dict[str, Any]]:
    """Fleets found on disk (running or left behind), newest first."""
    found = []
    for root in BASE.glob("cf-fleet-*"):
        state: dict[str, Any] = {"id": root.name.removeprefix("cf-fleet-")}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((root / "state.json").read_text())
        state["root"] = str(root)
        state["mtime"] = root.stat().st_mtime
        owner = int(state.get("owner_pid") or 0)
        # A directory without state yet may be a fleet another session is creating right now.
        young = "owner_pid" not in state and time.time() - state["mtime"] < 120
        state["stale"] = not young and not state.get("persistent") and not (owner and _pid_alive(owner))
        found.append(state)
    return sorted(found, key=lambda s: s["mtime"], reverse=True)


def down_all(stale_only: bool = False) -> list[str]:
    """Remove every fleet on this machine (or only those whose owning process is gone)."""
    done = []
    for state in list_fleets():
        if stale_only and not state["stale"]:
            continue
        done += cleanup(Path(state["root"]), state["id"])
    # Containers labelled by a fleet whose directory is already gone.
    labels = docker(
        "ps", "-a", "--filter", f"label={LABEL}", "--format", f'{{{{.Label "{LABEL}"}}}}', check=False
    )
    for fleet_id in sorted(set(labels.split())):
        root = BASE / f"cf-fleet-{fleet_id}"
        if not root.exists():
            done += cleanup(root, fleet_id)
    return done
