"""Local upstreams: bare git repositories (ComfyUI, node packs) served over smart HTTP on 127.0.0.1.

Hosts and runtime containers share the machine's network namespace (``--network host``),
so ``http://127.0.0.1:PORT/...`` reaches the same server from the tests, the hosts and
the containers the hosts start.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from comfyfleet.devkit import STANDIN_DIR
from comfyfleet.devkit.fleet.engine import run

STANDIN = STANDIN_DIR
# Fixed identity and dates: the same content gives the same commits in every session.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "comfyfleet tests",
    "GIT_AUTHOR_EMAIL": "tests@comfyfleet.invalid",
    "GIT_COMMITTER_NAME": "comfyfleet tests",
    "GIT_COMMITTER_EMAIL": "tests@comfyfleet.invalid",
    "GIT_AUTHOR_DATE": "2025-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2025-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

PLACEHOLDER_MAIN = '''\
"""Placeholder ComfyUI (the fleet's own, used until tests/standin/comfyui/main.py exists)."""
import argparse
import json
import os

from aiohttp import web

p = argparse.ArgumentParser()
p.add_argument("--listen", default="127.0.0.1")
p.add_argument("--port", type=int, default=8188)
p.add_argument("--cpu", action="store_true")
p.add_argument("--base-directory", default=None)
a, _ = p.parse_known_args()
version = {}
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "comfyui_version.py")).read(), version)


async def stats(_request):
    return web.json_response({"system": {"comfyui_version": version["__version__"], "os": "posix"}, "devices": []})

app = web.Application()
app.router.add_get("/system_stats", stats)
web.run_app(app, host=a.listen, port=a.port)
'''

BROKEN_MAIN = '''\
"""A ComfyUI release that cannot start: used to test update-then-rollback."""
import sys

sys.exit("comfyfleet test upstream: this ComfyUI release is broken on purpose")
'''


def _git(*args: str, cwd: Path | None = None) -> str:
    prefix = ["git"] if cwd is None else ["git", "-C", str(cwd)]
    return run([*prefix, *args], env={**os.environ, **GIT_ENV}, timeout=600).stdout


@dataclass
class ComfyUIUpstream:
    """The ComfyUI repository the hosts clone: its URL and the refs tests move between."""

    url: str
    default_ref: str
    old_ref: str
    new_ref: str
    broken_ref: str
    real: bool
    versions: dict[str, str] = field(default_factory=dict)


class GitUpstreams:
    """Bare repositories under ``root`` and the HTTP server that serves them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repos = root / "repos"
        self.port = 0
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, detach: bool = False) -> None:
        """Start the HTTP server; ``detach`` lets it outlive this process (scripts/fleet.py up)."""
        self.repos.mkdir(parents=True, exist_ok=True)
        port_file = self.root / "git-http.port"
        port_file.unlink(missing_ok=True)
        with (self.root / "git-http.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("gitserve.py")),
                    str(self.repos),
                    str(port_file),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=detach,
            )
        self.pid = self._proc.pid
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"git HTTP server did not start; see {self.root / 'git-http.log'}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def stop(self) -> None:
        """Stop the HTTP server (also one started detached by an earlier process)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        elif self.pid and _is_gitserve(self.pid):
            os.kill(self.pid, signal.SIGTERM)
        self.pid = 0

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    def has(self, path: str) -> bool:
        """Whether a repository was published at ``path`` (``owner/name.git``) in this session."""
        return (self.repos / path).exists()

    def publish(self, path: str, worktree: Path, tags: Sequence[str] = ()) -> str:
        """Push every branch and tag of a work tree to a new bare repository at ``path``."""
        bare = self.repos / path
        if bare.exists():
            raise FileExistsError(f"upstream {path} exists already; pick another name")
        bare.parent.mkdir(parents=True, exist_ok=True)
        _git("init", "-q", "--bare", "-b", "master", str(bare))
        _git("push", "-q", str(bare), "--all", cwd=worktree)
        _git("push", "-q", str(bare), "--tags", cwd=worktree)
        return self.url(path)

    def make_node_pack_repo(
        self,
        name: str,
        classes: Sequence[str] | Mapping[str, str] = (),
        requirements: Sequence[str] | str | None = None,
        install_py: bool | str = False,
        broken: bool = False,
        owner: str = "testorg",
        versions: Sequence[str] = ("1.0.0",),
    ) -> str:
        """Create a node-pack repository and return its clone URL.

        + classes: class type names (each a small STRING passthrough node), or
          ``{name: python source of the class body}`` for nodes with their own behaviour
        + requirements: lines of requirements.txt (pip installs them in the runtime)
        + install_py: True for an install.py that writes ``install-ran`` beside itself,
          or the script's source
        + broken: ``__init__`` raises on import (ComfyUI logs it and skips the pack)
        + versions: one commit per version, tagged ``v<version>``; ``master`` at the last
        """
        for part in (owner, name):
            if not _NAME.match(part):
                raise ValueError(f"node pack owner/name must be letters, digits and ._- (got {part!r})")
        with tempfile.TemporaryDirectory(prefix="nodepack-") as tmp:
            work = Path(tmp)
            _git("init", "-q", "-b", "master", str(work))
            for version in versions:
                files = node_pack_files(name, classes, requirements, install_py, broken, version)
                for rel, text in files.items():
                    target = work / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text)
                _git("add", "-A", cwd=work)
                _git("commit", "-q", "-m", f"{name} {version}", cwd=work)
                _git("tag", f"v{version}", cwd=work)
            return self.publish(f"{owner}/{name}.git", work)

    def make_comfyui_repo(self, checkout: Path | None = None) -> ComfyUIUpstream:
        """The ComfyUI repository: the stand-in with tagged releases, or a real checkout."""
        if checkout is not None:
            return self._real_comfyui(checkout)
        return self._standin_comfyui()

    def _standin_comfyui(self) -> ComfyUIUpstream:
        old, new, broken = "v0.3.1", "v0.3.2", "v0.3.3-broken"
        with tempfile.TemporaryDirectory(prefix="comfyui-") as tmp:
            work = Path(tmp) / "ComfyUI"
            shutil.copytree(
                STANDIN, work, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
            )
            if not (work / "main.py").exists():
                (work / "main.py").write_text(PLACEHOLDER_MAIN)
            _git("init", "-q", "-b", "master", str(work))
            for tag in (old, new):
                (work / "comfyui_version.py").write_text(
                    f"# This file is automatically generated by the build process when version is\n"
                    f'# updated in pyproject.toml.\n__version__ = "{tag[1:]}"\n'
                )
                _git("add", "-A", cwd=work)
                _git("commit", "-q", "-m", f"ComfyUI stand-in {tag}", cwd=work)
                _git("tag", tag, cwd=work)
            _git("checkout", "-q", "-b", "broken-release", cwd=work)
            (work / "main.py").write_text(BROKEN_MAIN)
            (work / "comfyui_version.py").write_text('__version__ = "0.3.3"\n')
            _git("commit", "-q", "-am", "a release that does not start", cwd=work)
            _git("tag", broken, cwd=work)
            _git("checkout", "-q", "master", cwd=work)
            url = self.publish("comfyanonymous/ComfyUI.git", work)
        versions = {old: "0.3.1", new: "0.3.2", broken: "0.3.3"}
        return ComfyUIUpstream(url, new, old, new, broken, real=False, versions=versions)

    def _real_comfyui(self, checkout: Path) -> ComfyUIUpstream:
        bare = self.repos / "comfyanonymous/ComfyUI.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "-q", "--bare", "--no-hardlinks", str(checkout), str(bare))
        if _absent_blobs(bare, "HEAD"):
            # A partial mirror (large blobs absent) cannot be served: rebuild its HEAD and
            # previous release as commits of everything that is present.
            shutil.rmtree(bare)
            _export_partial(checkout, bare)
        gd = ["--git-dir", str(bare)]
        # The checkout's HEAD is the release under test; tag it by its own version when no
        # tag points there (forks often carry no recent tags).
        head_tags = _git(*gd, "tag", "--points-at", "HEAD").split()
        new = head_tags[0] if head_tags else f"v{_version_at(bare, 'HEAD')}"
        if not head_tags:
            _git(*gd, "tag", new, "HEAD")
        try:
            old = _git(*gd, "describe", "--tags", "--abbrev=0", "HEAD^").strip()
        except RuntimeError:
            old = ""  # a shallow or single-commit checkout: no earlier release to move back to
        broken = f"{new}-broken"
        with tempfile.TemporaryDirectory(prefix="comfyui-") as tmp:
            work = Path(tmp) / "ComfyUI"
            _git("clone", "-q", "--depth", "1", "--branch", new, f"file://{bare}", str(work))
            if not old:
                # Stand in for the previous release: the same code under another version number.
                old = f"{new}-previous"
                version = work / "comfyui_version.py"
                version.write_text(
                    re.sub(r"(__version__\s*=\s*[\"'])([^\"']+)", r"\g<1>\g<2>-previous", version.read_text())
                )
                _git("commit", "-q", "-am", "the previous release (made by the tests)", cwd=work)
                _git("tag", old, cwd=work)
                _git("push", "-q", str(bare), f"refs/tags/{old}", cwd=work)
                _git("checkout", "-q", "--detach", new, cwd=work)
            (work / "main.py").write_text(BROKEN_MAIN)
            _git("commit", "-q", "-am", "a release that does not start", cwd=work)
            _git("tag", broken, cwd=work)
            _git("push", "-q", str(bare), f"refs/tags/{broken}", cwd=work)
        versions = {ref: _version_at(bare, ref) for ref in (old, new, broken)}
        return ComfyUIUpstream(self.url("comfyanonymous/ComfyUI.git"), new, old, new, broken, True, versions)


def _absent_blobs(git_dir: Path, rev: str) -> int:
    """How many files of ``rev`` have no object in the repository (a partial mirror)."""
    listing = run(["git", "--git-dir", str(git_dir), "ls-tree", "-r", "--object-only", rev]).stdout
    check = run(["git", "--git-dir", str(git_dir), "cat-file", "--batch-check"], input=listing).stdout
    return sum(1 for line in check.splitlines() if line.endswith(" missing"))


def _export_partial(checkout: Path, bare: Path) -> None:
    """Make ``bare`` from a repository with missing objects: its previous tag and HEAD, blobs present only."""
    src = _git("-C", str(checkout), "rev-parse", "--absolute-git-dir").strip()
    revs: list[tuple[str, str | None]] = []
    with contextlib.suppress(RuntimeError):
        revs.append((_git("--git-dir", src, "describe", "--tags", "--abbrev=0", "HEAD^").strip(), None))
    head_tags = _git("--git-dir", src, "tag", "--points-at", "HEAD").split()
    revs.append(("HEAD", head_tags[0] if head_tags else None))
    with tempfile.TemporaryDirectory(prefix="comfyui-export-") as tmp:
        work = Path(tmp) / "ComfyUI"
        _git("init", "-q", "-b", "master", str(work))
        for rev, tag in revs:
            _git("rm", "-rqf", "--ignore-unmatch", ".", cwd=work)
            absent = _export_tree(src, rev, work)
            _git("add", "-A", "-f", cwd=work)
            _git(
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                f"ComfyUI {rev} (exported; {absent} absent files)",
                cwd=work,
            )
            _git("tag", tag or (rev if rev != "HEAD" else f"v{_version_in(work)}"), cwd=work)
        _git("init", "-q", "--bare", "-b", "master", str(bare))
        _git("push", "-q", str(bare), "--all", cwd=work)
        _git("push", "-q", str(bare), "--tags", cwd=work)


def _export_tree(git_dir: str, rev: str, dest: Path) -> int:
    """Write the files of ``rev`` into ``dest``, skipping absent blobs; returns how many were absent."""
    listing = run(["git", "--git-dir", git_dir, "ls-tree", "-r", "-z", rev]).stdout
    entries = []
    for entry in listing.split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            mode, kind, sha = meta.split()
            if kind == "blob":
                entries.append((mode, sha, path))
    batch = subprocess.run(
        ["git", "--git-dir", git_dir, "cat-file", "--batch"],
        input="".join(f"{sha}\n" for _, sha, _ in entries).encode(),
        capture_output=True,
        check=True,
    ).stdout
    absent, pos = 0, 0
    for mode, _sha, path in entries:
        end = batch.index(b"\n", pos)
        header = batch[pos:end].split()
        pos = end + 1
        if header[-1] == b"missing":
            absent += 1
            continue
        size = int(header[2])
        data, pos = batch[pos : pos + size], pos + size + 1
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "120000":
            target.symlink_to(data.decode())
        else:
            target.write_bytes(data)
            if mode == "100755":
                target.chmod(0o755)
    return absent


def _version_in(work: Path) -> str:
    m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", (work / "comfyui_version.py").read_text())
    return m.group(1) if m else "0.0.0"


def _version_at(bare: Path, ref: str) -> str:
    """ComfyUI's own version at a ref (what /system_stats reports as comfyui_version)."""
    text = _git("--git-dir", str(bare), "show", f"{ref}:comfyui_version.py")
    m = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    return m.group(1) if m else ref.lstrip("v")


def node_pack_files(
    name: str,
    classes: Sequence[str] | Mapping[str, str],
    requirements: Sequence[str] | str | None,
    install_py: bool | str,
    broken: bool,
    version: str,
) -> dict[str, str]:
    """The files of one version of a generated node pack."""
    bodies = dict(classes) if isinstance(classes, Mapping) else {c: "" for c in classes}
    lines = [f'"""Test node pack {name} {version} (made by comfyfleet\'s test fleet)."""', ""]
    if broken:
        lines += [f'raise RuntimeError("node pack {name} is broken on purpose")', ""]
    for cls, body in bodies.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", cls):
            raise ValueError(f"class type {cls!r} must be a Python identifier")
        lines.append(f"class {cls}:")
        if body.strip():
            lines.append(textwrap.indent(textwrap.dedent(body).strip("\n"), "    "))
        else:
            lines += [
                '    CATEGORY = "comfyfleet/test"',
                '    RETURN_TYPES = ("STRING",)',
                '    FUNCTION = "run"',
                "",
                "    @classmethod",
                "    def INPUT_TYPES(cls):",
                '        return {"required": {"text": ("STRING", {"default": ""})}}',
                "",
                "    def run(self, text):",
                f'        return (text + " via {cls} {version}",)',
            ]
        lines.append("")
    lines.append("NODE_CLASS_MAPPINGS = {" + ", ".join(f'"{c}": {c}' for c in bodies) + "}")
    lines.append("NODE_DISPLAY_NAME_MAPPINGS = {" + ", ".join(f'"{c}": "{c} (test)"' for c in bodies) + "}")
    lines.append(f'__version__ = "{version}"')
    files = {
        "__init__.py": "\n".join(lines) + "\n",
        "pyproject.toml": f'[project]\nname = "{name.lower()}"\nversion = "{version}"\n',
        "README.md": f"# {name}\n\nA node pack generated by comfyfleet's tests.\n",
    }
    if requirements is not None:
        text = requirements if isinstance(requirements, str) else "\n".join(requirements)
        files["requirements.txt"] = text.rstrip("\n") + "\n"
    if install_py:
        files["install.py"] = (
            install_py
            if isinstance(install_py, str)
            else "import os\n\nopen(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'install-ran'), 'w').write('ok')\n"
        )
    return files


def _is_gitserve(pid: int) -> bool:
    try:
        return b"gitserve.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
