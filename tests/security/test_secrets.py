"""Secrets: the API key file never shows in pyinfra's --diff output.

Real pyinfra CLI (``pyinfra -y --diff @local deploy.py``) runs the api_keys operation against
this machine, as an operator's `--diff` run would against a host: creating the key file,
then changing it. (Webhook URLs in logs and the Bearer key over plain HTTP belong to the
comfyui-api catalogue.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEPLOY = """
from comfyfleet.deploys.api import api_keys
api_keys(name="API keys", path={dest!r}, local_file={src!r})
"""


def pyinfra_diff(tmp_path: Path, src: Path, dest: Path) -> str:
    deploy = tmp_path / "deploy.py"
    deploy.write_text(DEPLOY.format(dest=str(dest), src=str(src)))
    pyinfra = Path(sys.executable).parent / "pyinfra"
    proc = subprocess.run(
        [str(pyinfra), "-y", "--diff", "@local", str(deploy)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_api_key_file_never_shows_in_pyinfra_diff(tmp_path: Path) -> None:
    src, dest = tmp_path / "api-keys", tmp_path / "host" / "api-keys"
    dest.parent.mkdir()
    first, second = "key-alpha-" + "1" * 30, "key-bravo-" + "2" * 30
    src.write_text(f"{first}\n")
    out = pyinfra_diff(tmp_path, src, dest)
    assert dest.read_text() == f"{first}\n" and dest.stat().st_mode & 0o777 == 0o600
    src.write_text(f"{first}\n{second}\n")
    out += pyinfra_diff(tmp_path, src, dest)
    assert dest.read_text() == f"{first}\n{second}\n"
    assert "API keys" in out
    assert first not in out and second not in out
    assert "key-" not in out
