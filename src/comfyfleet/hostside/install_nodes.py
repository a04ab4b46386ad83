#!/usr/bin/env python3
"""Install, check, list and verify ComfyUI custom node packs, on the GPU host.

Uploaded by the tier 2 tasks and run with the host's python3 (standard library only).
Commands that need the runtime's Python (pip, install.py, cm-cli) run through the argv
prefix the plan gives, e.g. ``["docker", "exec", "-i", "comfyui", "/data/venv/bin/python"]``;
every command is an argv list, never a shell string.

Plan (JSON, --plan)::

    {"custom_nodes_dir": "...", "state_dir": "...", "comfyui_dir": "...",
     "python": [...], "cm_cli": [...] | null, "use_manager": "auto" | "never",
     "pip_args": [...], "protected": ["torch", "torchvision", "torchaudio", "numpy"],
     "object_info_url": "http://127.0.0.1:8188/object_info", "log_command": [...],
     "packs": [{"id": "...", "repo": "...", "version": null, "dir": "...",
                "registry": true, "provides": [...]}]}

Modes: ``install`` and ``update`` change things; ``check`` reports what install would do
(``CHECK`` line), ``list`` describes every pack folder (``LIST``), ``verify`` compares
``/object_info`` with the classes the packs must provide and pulls import errors from
the ComfyUI log (``VERIFY``). Exit 1 when a pack failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import time

# A no-op deploy runs ``check --verify`` on every host: it starts no process and removes nothing,
# so subprocess, shutil and typing are imported where they are used (tests/tiers/test_probe_startup.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_SAFE_DIR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_REF_NAME = re.compile(r"^refs/[A-Za-z0-9._/+-]+$")
_TIMEOUT = 1800


class PackError(Exception):
    """A pack could not be installed; the message says why and what to do."""


class Unanswered(PackError):
    """ComfyUI did not answer (not: answered with an error)."""


def run(
    argv: list[str], cwd: str | None = None, timeout: float = _TIMEOUT, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    import subprocess  # noqa: PLC0415 - see the imports above

    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, input=input)


def git(path: str, *args: str, check: bool = True) -> str:
    proc = run(["git", "-C", path, *args])
    if check and proc.returncode != 0:
        raise PackError(f"git {' '.join(args[:2])} failed: {tail(proc.stderr or proc.stdout)}")
    return proc.stdout.strip()


def tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def norm_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def is_commit(version: str | None) -> bool:
    return bool(version and _COMMIT.match(version.lower()))


# ---------------------------------------------------------------------------
# state of one pack folder


def read_ref(path: str, name: str) -> str | None:
    """What a full ref name holds, read from the checkout's files without starting git.

    A loose ref first, then ``packed-refs`` (an annotated tag there gives its peeled commit).
    None when the files do not say (not found, a symbolic ref, an unusual layout): ask git.
    A loose annotated tag holds the tag object, not its commit: callers compare, never trust.
    """
    if not _REF_NAME.match(name) or ".." in name:
        return None
    gitdir = os.path.join(path, ".git")
    try:
        with open(os.path.join(gitdir, name)) as f:
            value = f.read().strip()
        return value if _FULL_SHA.match(value) else None
    except OSError:
        pass
    try:
        with open(os.path.join(gitdir, "packed-refs")) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for i, line in enumerate(lines):
        sha, _, ref = line.partition(" ")
        if ref == name and _FULL_SHA.match(sha):
            peeled = lines[i + 1] if i + 1 < len(lines) else ""
            return peeled[1:] if peeled.startswith("^") and _FULL_SHA.match(peeled[1:]) else sha
    return None


def read_head(path: str) -> str:
    """HEAD's commit, read from .git without starting git when it is detached or on a branch."""
    try:
        with open(os.path.join(path, ".git", "HEAD")) as f:
            head = f.read().strip()
        if _FULL_SHA.match(head):
            return head
        if head.startswith("ref: "):
            sha = read_ref(path, head[5:].strip())
            if sha:
                return sha
    except OSError:
        pass
    # --verify: plain rev-parse echoes "HEAD" when HEAD names a branch with no commit.
    return git(path, "rev-parse", "-q", "--verify", "HEAD", check=False)


def pack_state(path: str, full: bool = True) -> dict[str, Any]:
    """What a pack folder holds: git checkout facts, or a registry (cm-cli) install.

    ``full=False`` (no-op checks, run on every deploy) reads only HEAD, cheaply.
    """
    out: dict[str, Any] = {"exists": os.path.isdir(path)}
    if not out["exists"]:
        return out
    if os.path.isdir(os.path.join(path, ".git")):
        out["git"] = True
        out["head"] = read_head(path)
        if full:
            out["origin"] = git(path, "config", "--get", "remote.origin.url", check=False)
            out["dirty"] = bool(git(path, "status", "--porcelain", "--untracked-files=no", check=False))
    else:
        out["git"] = False
        out["registry_version"] = registry_version(path)
    return out


def registry_version(path: str) -> str | None:
    """Version of a registry install (cm-cli writes .tracking; pyproject.toml carries the version)."""
    try:
        with open(os.path.join(path, "pyproject.toml")) as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        return m.group(1) if m else None
    except OSError:
        return None


def requirements_lines(path: str) -> list[str]:
    try:
        with open(os.path.join(path, "requirements.txt")) as f:
            return [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]
    except OSError:
        return []


class Installer:
    """Carries out one plan."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.nodes_dir: str = plan["custom_nodes_dir"]
        self.state_dir = os.path.join(plan["state_dir"], "nodes")
        self.python: list[str] = list(plan.get("python") or [sys.executable])
        self.protected = {
            norm_name(p) for p in plan.get("protected", ["torch", "torchvision", "torchaudio", "numpy"])
        }
        self._manager: bool | None = None
        self._pins: dict[str, str] | None = None

    # -- markers -------------------------------------------------------------

    def marker(self, name: str) -> dict[str, Any]:
        try:
            with open(os.path.join(self.state_dir, name + ".json")) as f:
                return dict(json.load(f))
        except (OSError, ValueError):
            return {}

    def save_marker(self, name: str, data: dict[str, Any]) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        tmp = os.path.join(self.state_dir, name + ".json.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, os.path.join(self.state_dir, name + ".json"))

    # -- runtime facts -------------------------------------------------------

    def manager_available(self) -> bool:
        if self._manager is None:
            if not self.plan.get("cm_cli") or self.plan.get("use_manager") == "never":
                self._manager = False
            else:
                probe = "import importlib.util,sys; sys.exit(importlib.util.find_spec('cm_cli') is None)"
                self._manager = run([*self.python, "-c", probe], timeout=120).returncode == 0
        return self._manager

    def pins(self) -> dict[str, str]:
        """Installed versions of the protected packages in the runtime (absent ones are left out)."""
        if self._pins is None:
            code = (
                "import json,sys,importlib.metadata as m\n"
                "out={}\n"
                "for n in sys.argv[1:]:\n"
                "    try: out[n]=m.version(n)\n"
                "    except m.PackageNotFoundError: pass\n"
                "print(json.dumps(out))"
            )
            proc = run([*self.python, "-c", code, *sorted(self.protected)], timeout=120)
            if proc.returncode != 0:
                raise PackError(
                    f"the runtime's Python does not run: {tail(proc.stderr)} (is the ComfyUI container up?)"
                )
            self._pins = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
        return self._pins

    # -- decisions -----------------------------------------------------------

    def method(self, pack: dict[str, Any]) -> tuple[str, str]:
        """('manager' | 'git', why)."""
        version = str(pack.get("version") or "")
        if not pack.get("registry"):
            return "git", "not a Comfy Registry pack"
        if is_commit(version):
            return "git", f"pinned to git commit {version[:12]}"
        if not version:
            return "git", "no registry version pinned"
        # What is already on disk decides before the runtime is asked (asking starts the
        # runtime's Python in its container: the costliest step of a no-op check).
        if os.path.isdir(os.path.join(self.nodes_dir, pack["dir"], ".git")):
            # One pack, one folder: a git checkout already there stays the pack's home.
            return "git", f"already a git checkout in {pack['dir']}"
        by_id = os.path.join(self.nodes_dir, str(pack["id"]))
        if (
            _SAFE_DIR.match(str(pack["id"]))
            and os.path.exists(os.path.join(by_id, ".tracking"))
            and registry_version(by_id) == version
        ):
            return "manager", f"registry version {version} installed by cm-cli"
        if not self.manager_available():
            return "git", "cm-cli (ComfyUI-Manager) is not installed in the runtime"
        return "manager", f"registry version {version} through cm-cli"

    def place(self, pack: dict[str, Any]) -> dict[str, Any]:
        """The pack with its folder where its installer puts it: cm-cli names it by registry id."""
        if self.method(pack)[0] == "manager" and _SAFE_DIR.match(str(pack["id"])):
            return {**pack, "dir": pack["id"]}
        return pack

    def requirements_digest(self, path: str) -> str:
        lines = requirements_lines(path)
        data = json.dumps([lines, sorted(self.protected), self.plan.get("pip_args", [])])
        return hashlib.sha256(data.encode()).hexdigest()

    def check(self, pack: dict[str, Any], fetch: bool = False) -> list[str]:
        """Reasons install (or, with ``fetch``, update) would change something; empty: nothing to do.

        Without ``fetch`` no network is used; with it, each git pack not pinned to a commit
        is fetched first so a newer upstream commit or tag shows up.
        """
        path = os.path.join(self.nodes_dir, pack["dir"])
        st = pack_state(path, full=False)
        version = pack.get("version")
        if not st["exists"]:
            return ["not installed"]
        needs: list[str] = []
        if st["git"]:
            want = self.local_target(path, version, st["head"])
            if fetch and not is_commit(version):
                want = self.fetched_target(path, version, st["head"])
            if want is None:
                needs.append(f"version {version} not present locally")
            elif want != st["head"]:
                needs.append(f"at {st['head'][:12]}, wants {want[:12]}")
        elif version and not is_commit(version) and st.get("registry_version") != version:
            needs.append(f"registry version {st.get('registry_version')} installed, wants {version}")
        mark = self.marker(pack["dir"])
        head = st.get("head") or st.get("registry_version")
        if requirements_lines(path) and mark.get("requirements") != self.requirements_digest(path):
            needs.append("requirements not installed")
        if os.path.isfile(os.path.join(path, "install.py")) and mark.get("install_py") != head:
            needs.append("install.py not run")
        return needs

    def fetched_target(self, path: str, version: str | None, head: str) -> str | None:
        """What update moves to: the pinned tag, or origin's default branch for unpinned packs."""
        git(path, "fetch", "--quiet", "--tags", "--force", "origin")
        if version:
            return self.local_target(path, version, head)
        return git(path, "rev-parse", "refs/remotes/origin/HEAD", check=False) or git(
            path, "rev-parse", "FETCH_HEAD"
        )

    def local_target(self, path: str, version: str | None, head: str) -> str | None:
        """The commit version names, resolved without the network (None: not known locally)."""
        if not version:
            return head
        if is_commit(version):
            if head.startswith(version.lower()):
                return head
            sha = git(path, "rev-parse", "-q", "--verify", f"{version}^{{commit}}", check=False)
            return sha or None
        for ref in (f"refs/tags/v{version}", f"refs/tags/{version}"):
            if head and read_ref(path, ref) == head:
                return head  # the files say so: no git process (a no-op check on every deploy)
            sha = git(path, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False)
            if sha:
                return sha
        # A pinned version is that tag or nothing: never whatever happens to be checked out.
        return None

    # -- install -------------------------------------------------------------

    def install(self, pack: dict[str, Any], update: bool) -> dict[str, Any]:
        import subprocess  # noqa: PLC0415 - see the imports above

        path = os.path.join(self.nodes_dir, pack["dir"])
        out: dict[str, Any] = {"id": pack["id"], "dir": pack["dir"], "repo": pack["repo"], "changed": []}
        try:
            method, why = self.method(pack)
            out["method"], out["why"] = method, why
            if method == "manager":
                self.install_manager(pack, path, out)
            else:
                self.install_git(pack, path, update, out)
            st = pack_state(path)
            head = st.get("head") or st.get("registry_version") or ""
            out["commit"] = st.get("head")
            mark = self.marker(pack["dir"])
            if requirements_lines(path) and mark.get("requirements") != self.requirements_digest(path):
                self.install_requirements(pack, path, out)
                mark["requirements"] = self.requirements_digest(path)
                self.save_marker(pack["dir"], mark)
            if os.path.isfile(os.path.join(path, "install.py")) and mark.get("install_py") != head:
                self.run_install_py(path, out)
                mark["install_py"] = head
                self.save_marker(pack["dir"], mark)
            out["status"] = "changed" if out["changed"] else "ok"
        except PackError as exc:
            out["status"] = "failed"
            out["error"] = str(exc)
        except subprocess.TimeoutExpired as exc:
            out["status"] = "failed"
            out["error"] = f"timed out after {exc.timeout:.0f}s: {' '.join(exc.cmd[:4])}"
        return out

    def install_manager(self, pack: dict[str, Any], path: str, out: dict[str, Any]) -> None:
        spec = f"{pack['id']}@{pack['version']}"
        if pack_state(path).get("registry_version") == pack["version"]:
            return
        argv = [*self.plan["cm_cli"], "install", spec, "--no-deps", "--exit-on-fail", "--mode", "remote"]
        proc = run(argv)
        if proc.returncode != 0 or "ERROR" in proc.stdout:
            raise PackError(f"cm-cli install {spec} failed: {tail(proc.stdout + proc.stderr)}")
        out["changed"].append(f"cm-cli install {spec}")

    def install_git(self, pack: dict[str, Any], path: str, update: bool, out: dict[str, Any]) -> None:
        import shutil  # noqa: PLC0415 - see the imports above

        version = pack.get("version")
        st = pack_state(path)
        if st["exists"] and not st["git"]:
            raise PackError(
                f"{path} exists but is not a git checkout (installed by hand or by cm-cli): "
                "move it away to let comfyfleet manage this pack"
            )
        fresh = not st["exists"]
        if fresh:
            self.clone(pack["repo"], path)
            out["changed"].append("cloned")
            st = pack_state(path)
            if not st["head"] and not version:
                # git exits 0 when the remote's HEAD names a branch it lacks: the folder is
                # empty and ComfyUI would fail to import it with a puzzling FileNotFoundError.
                shutil.rmtree(path, ignore_errors=True)  # the clone just made it: nothing else in it
                raise PackError(
                    f"git clone {pack['repo']} checked out nothing: the repository's default branch (HEAD) "
                    "does not exist; pin a version (tag or commit) in the manifest or overrides"
                )
        elif st["origin"] and st["origin"] != pack["repo"]:
            out.setdefault("warnings", []).append(
                f"origin is {st['origin']}, the manifest says {pack['repo']}"
            )
        want = self.local_target(path, version, st["head"])
        if update and not is_commit(version):
            want = self.fetched_target(path, version, st["head"])
        elif want is None:
            git(path, "fetch", "--quiet", "--tags", "--force", "origin")
            want = self.local_target(path, version, st["head"])
        if want is None:
            if fresh:
                # Never leave the default branch where ComfyUI would load it at its next start.
                shutil.rmtree(path, ignore_errors=True)  # the clone just made it: nothing else in it
            if is_commit(version):
                raise PackError(
                    f"commit {version} is not in {pack['repo']}: fix the version in the manifest or overrides"
                )
            raise PackError(
                f"version {version} of {pack['repo']} has no git tag v{version} or {version}: pin the commit "
                "that version is (version: <commit> under nodes: in workflows/overrides.yaml), or install "
                "through cm-cli (node_install_via: auto with ComfyUI-Manager in the runtime)"
            )
        if want != st["head"]:
            if st["dirty"]:
                raise PackError(
                    f"{path} has local modifications: commit or discard them, then run again "
                    f"(comfyfleet does not overwrite local changes)"
                )
            git(path, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", want)
            out["changed"].append(f"checked out {want[:12]}")
            if os.path.isfile(os.path.join(path, ".gitmodules")):
                git(path, "submodule", "update", "--init", "--recursive", "--quiet")

    def clone(self, repo: str, path: str) -> None:
        import shutil  # noqa: PLC0415 - see the imports above

        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.comfyfleet-clone")
        shutil.rmtree(tmp, ignore_errors=True)
        proc = run(["git", "clone", "--quiet", "--recurse-submodules", "--", repo, tmp])
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PackError(f"git clone {repo} failed: {tail(proc.stderr)}")
        os.replace(tmp, path)

    def install_requirements(self, pack: dict[str, Any], path: str, out: dict[str, Any]) -> None:
        pins = self.pins()
        keep: list[str] = []
        for line in requirements_lines(path):
            m = _REQ_NAME.match(line)
            if line.startswith("-") or not m:
                out.setdefault("warnings", []).append(f"ignored requirements line {line!r}")
                continue
            name = norm_name(m.group(1))
            if name in self.protected:
                have = pins.get(name, "not installed")
                out.setdefault("warnings", []).append(
                    f"kept the runtime's {name} ({have}); pack asks {line!r}"
                )
                continue
            keep.append(line.split(" #", 1)[0].strip())
        if not keep:
            return
        # Constraints pin what ComfyUI depends on to the versions installed, so no
        # transitive dependency can swap the torch build.
        constraints = os.path.join(self.nodes_dir, ".comfyfleet-constraints.txt")
        with open(constraints, "w") as f:
            f.write("".join(f"{name}=={ver}\n" for name, ver in sorted(pins.items())))
        argv = [
            *self.python,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            "-c",
            constraints,
            *self.plan.get("pip_args", []),
            *keep,
        ]
        proc = run(argv)
        if proc.returncode != 0:
            raise PackError(f"pip could not install {', '.join(keep)}: {tail(proc.stderr or proc.stdout, 4)}")
        after = self._recheck_pins()
        if after != pins:
            raise PackError(f"installing requirements changed protected packages: {pins} -> {after}")
        out["changed"].append(f"pip install {' '.join(keep)}")

    def _recheck_pins(self) -> dict[str, str]:
        self._pins = None
        return self.pins()

    def run_install_py(self, path: str, out: dict[str, Any]) -> None:
        code = "import os,runpy,sys; os.chdir(sys.argv[1]); sys.path.insert(0, sys.argv[1]); sys.argv=['install.py']; runpy.run_path('install.py', run_name='__main__')"
        proc = run([*self.python, "-c", code, path])
        if proc.returncode != 0:
            raise PackError(f"install.py failed: {tail(proc.stderr or proc.stdout)}")
        out["changed"].append("ran install.py")


# ---------------------------------------------------------------------------
# list and verify


def list_packs(nodes_dir: str, installer: Installer) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(os.listdir(nodes_dir)) if os.path.isdir(nodes_dir) else []:
        path = os.path.join(nodes_dir, name)
        if name.startswith((".", "__")) or not os.path.isdir(path) or name.endswith(".disabled"):
            continue
        st = pack_state(path)
        rows.append(
            {
                "dir": name,
                "repo": st.get("origin") or "",
                "commit": st.get("head") or st.get("registry_version") or "",
                "modified": bool(st.get("dirty")),
                "via": "git"
                if st["git"]
                else ("cm-cli" if os.path.exists(os.path.join(path, ".tracking")) else "copy"),
            }
        )
    return rows


def http_get(url: str, timeout: float) -> bytes:
    """The body of a 200 answer to GET ``url`` (another status: :class:`PackError`, not retried).

    ``http://`` (ComfyUI on this host) is one HTTP/1.0 request on a socket: importing urllib
    costs a no-op check (run on every host of every deploy) more CPU than everything it then does.
    """
    if not url.startswith("http://"):
        import urllib.request  # noqa: PLC0415 - https only: not worth its import on the local path

        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bytes(resp.read())
    netloc, _, path = url[len("http://") :].partition("/")
    host, _, port = netloc.rpartition(":") if netloc.rsplit(":", 1)[-1].isdigit() else (netloc, "", "80")
    host = host.strip("[]")
    # A str host is encoded with the idna codec (its import costs more than this whole request).
    address = host.encode() if host.isascii() else host
    with socket.create_connection((address, int(port)), timeout=timeout) as sock:
        sock.sendall(f"GET /{path} HTTP/1.0\r\nHost: {netloc}\r\nAccept: application/json\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split()
    if len(status) < 2 or status[1] != "200":
        raise PackError(f"{url} answered {lines[0]!r}")
    headers = {k.strip().lower(): v.strip().lower() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if "chunked" in headers.get("transfer-encoding", ""):
        body = dechunk(body)
    if headers.get("content-encoding", "identity") != "identity":
        raise PackError(f"{url} answered with content-encoding {headers['content-encoding']}")
    return body


def dechunk(body: bytes) -> bytes:
    """A chunked transfer-encoded body, decoded."""
    out = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out.append(body[:size])
        body = body[size + 2 :]
    return b"".join(out)


def fetch_json(url: str, attempts: int = 5) -> Any:
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return json.loads(http_get(url, timeout=60))
        except (OSError, ValueError) as exc:
            last = exc
            time.sleep(2)
    raise Unanswered(f"{url} did not answer: {last}")


def import_errors(log: str) -> dict[str, str]:
    """pack folder -> import error, from ComfyUI's 'Cannot import ... module for custom nodes' lines."""
    errors: dict[str, str] = {}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"Cannot import (\S+) module for custom nodes: (.*)$", line)
        if m:
            folder = os.path.basename(m.group(1).rstrip("/"))
            if folder.endswith(".py"):
                folder = folder[:-3]
            detail = m.group(2).strip()
            # The traceback just above names the exception type; keep its last line.
            for prev in reversed(lines[max(0, i - 40) : i]):
                if re.match(r"^\s*[A-Za-z_][\w.]*(Error|Exception)\b", prev.strip()):
                    detail = prev.strip()
                    break
            errors[folder] = detail
        m = re.search(r"\(IMPORT FAILED\):\s*(\S+)", line)
        if m:
            folder = os.path.basename(m.group(1).rstrip("/"))
            errors.setdefault(folder, "IMPORT FAILED (see the ComfyUI log)")
    return errors


PER_CLASS_LIMIT = 64
"""Up to this many classes are asked of ``/object_info/{class}`` one by one (see :func:`object_info`)."""


def _url_quoted(name: str) -> str:
    """``name`` as one URL path segment (urllib.parse costs the no-op check more than it saves)."""
    return "".join(
        ch if (ch.isascii() and ch.isalnum()) or ch in "-._~" else "".join(f"%{b:02X}" for b in ch.encode())
        for ch in name
    )


def object_info(url: str, wanted: list[str]) -> dict[str, Any]:
    """What ComfyUI's ``/object_info`` says of the ``wanted`` classes (every class when empty).

    For the whole listing ComfyUI runs every node's INPUT_TYPES, model folder listings included,
    on its event loop (a serving host's progress messages wait) and sends megabytes to parse;
    ``/object_info/{class}`` answers one class (``{}`` when it is not loaded). The whole listing
    still serves a listing, many classes, a name no path segment can carry, or a ComfyUI without
    the per-class route.
    """
    if not wanted or len(wanted) > PER_CLASS_LIMIT or any("/" in c for c in wanted):
        return dict(fetch_json(url))
    info: dict[str, Any] = {}
    try:
        for name in dict.fromkeys(wanted):
            got = fetch_json(f"{url}/{_url_quoted(name)}")
            if not isinstance(got, dict):
                raise PackError(f"{url}/{name} answered {type(got).__name__}")
            info.update(got)
    except Unanswered:
        raise
    except PackError:  # an older ComfyUI, or a name its router does not take: the whole listing
        return dict(fetch_json(url))
    return info


def verify(plan: dict[str, Any]) -> dict[str, Any]:
    wanted = [c for p in plan.get("packs", []) for c in p.get("provides", [])]
    core = list(plan.get("core_classes", []))
    info = object_info(plan["object_info_url"], [*wanted, *core])
    modules = {str(v.get("python_module", "")) for v in info.values() if isinstance(v, dict)}
    # The log is read only when it can explain something (a missing class, or a listing).
    log = ""
    if plan.get("log_command") and (not wanted or any(c not in info for c in wanted)):
        proc = run(plan["log_command"], timeout=120)
        log = proc.stdout + proc.stderr
    failures = import_errors(log)
    packs = []
    for pack in plan.get("packs", []):
        missing = sorted(c for c in pack.get("provides", []) if c not in info)
        row = {
            "id": pack["id"],
            "dir": pack["dir"],
            "missing": missing,
            "imported": f"custom_nodes.{pack['dir']}" in modules
            or (pack["dir"] not in failures and not missing),
        }
        if missing:
            row["error"] = (
                failures.get(pack["dir"]) or "classes absent from /object_info and no import error in the log"
            )
        packs.append(row)
    missing_core = sorted(c for c in core if c not in info)
    return {"packs": packs, "missing_core": missing_core, "import_failures": failures, "classes": len(info)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install and verify ComfyUI custom node packs.")
    parser.add_argument("--plan", required=True)
    parser.add_argument("mode", choices=["install", "update", "check", "list", "verify"])
    parser.add_argument("--verify", action="store_true", help="check: also verify when nothing is to do")
    parser.add_argument(
        "--fetch", action="store_true", help="check: fetch unpinned packs (what update would do)"
    )
    args = parser.parse_args(argv)
    with open(args.plan) as f:
        plan = json.load(f)
    installer = Installer(plan)
    if args.mode != "list":
        plan = {**plan, "packs": [installer.place(p) for p in plan.get("packs", [])]}
    if args.mode == "check":
        rows = []
        for p in plan.get("packs", []):
            try:
                rows.append({"id": p["id"], "dir": p["dir"], "needs": installer.check(p, fetch=args.fetch)})
            except PackError as exc:
                rows.append({"id": p["id"], "dir": p["dir"], "needs": [str(exc)]})
        print("CHECK " + json.dumps(rows), flush=True)
        if args.verify and not any(r["needs"] for r in rows):
            # Nothing to install: the proof can come from this same run (one process less per deploy).
            try:
                print("VERIFY " + json.dumps(verify(plan)), flush=True)
            except PackError as exc:
                print(f"error: {exc}", file=sys.stderr)
        return 0
    if args.mode == "list":
        rows = list_packs(plan["custom_nodes_dir"], installer)
        if plan.get("object_info_url"):
            try:
                result = verify(
                    {**plan, "packs": [{"id": r["dir"], "dir": r["dir"], "provides": []} for r in rows]}
                )
                failed = result["import_failures"]
                loaded = {p["dir"] for p in result["packs"] if p["imported"]}
                for r in rows:
                    r["imported"] = r["dir"] in loaded and r["dir"] not in failed
                    if r["dir"] in failed:
                        r["error"] = failed[r["dir"]]
            except PackError as exc:
                for r in rows:
                    r["imported"] = None
                    r["error"] = str(exc)
        print("LIST " + json.dumps(rows), flush=True)
        return 0
    if args.mode == "verify":
        try:
            result = verify(plan)
        except PackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("VERIFY " + json.dumps(result), flush=True)
        for row in result["packs"]:
            if row["missing"]:
                print(
                    f"error: pack {row['id']} ({row['dir']}) failed to load: {row['error']}; "
                    f"missing classes: {', '.join(row['missing'])}",
                    file=sys.stderr,
                )
        if result["missing_core"]:
            print(
                f"error: core classes missing from /object_info: {', '.join(result['missing_core'])} "
                "(ComfyUI too old for this workflow? raise comfyui_ref)",
                file=sys.stderr,
            )
        return 1 if any(r["missing"] for r in result["packs"]) or result["missing_core"] else 0
    results = [installer.install(p, update=args.mode == "update") for p in plan.get("packs", [])]
    for r in results:
        if r["status"] == "failed":
            print(f"error: pack {r['id']}: {r['error']}", file=sys.stderr)
        else:
            print(
                f"{r['status']}: {r['id']} via {r.get('method')} ({r.get('why')}) {'; '.join(r['changed'])}",
                file=sys.stderr,
            )
    print("RESULT " + json.dumps(results), flush=True)
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
