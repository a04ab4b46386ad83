"""The GitCheckout fact with real git: what the ComfyUI checkout step decides from (HEAD vs the pinned
ref, a moving branch, a ref not present locally, the origin)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from comfyfleet.facts.comfyui import GitCheckout

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


def fact(path: Path, ref: str) -> dict[str, str]:
    text = GitCheckout().command(path=str(path), ref=ref).get_raw_value()
    out = subprocess.run(["sh", "-c", text], env=ENV, capture_output=True, text=True, check=True).stdout
    return GitCheckout().process(out.splitlines())


def test_git_checkout_fact_against_real_git(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    git(up, "init", "-q", "-b", "master")
    git(up, "commit", "-q", "--allow-empty", "-m", "one")
    git(up, "tag", "-a", "v1", "-m", "v1")  # annotated: the fact must name the commit, not the tag
    one = git(up, "rev-parse", "HEAD")
    git(up, "commit", "-q", "--allow-empty", "-m", "two")
    two = git(up, "rev-parse", "HEAD")
    co = tmp_path / "ComfyUI"
    git(tmp_path, "clone", "-q", str(up), str(co))
    git(co, "checkout", "-q", "--detach", "v1")

    assert fact(tmp_path / "absent", "v1") == {"exists": ""}
    at_tag = fact(co, "v1")
    assert at_tag == {"exists": "yes", "head": one, "ref": one, "branch": "", "origin": str(up)}
    # Drift: HEAD moved off the pinned tag.
    git(co, "checkout", "-q", "--detach", two)
    assert fact(co, "v1")["head"] == two and fact(co, "v1")["ref"] == one
    # A branch on origin may move: always flagged; a ref unknown locally resolves to nothing.
    assert fact(co, "master")["branch"] == "yes" and fact(co, "master")["ref"] == two
    assert fact(co, "v9")["ref"] == "" and fact(co, "v9")["branch"] == ""
    assert fact(co, one[:10])["ref"] == one
