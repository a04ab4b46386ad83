"""`parallel_ssh()`: gevent's patch_all as pyinfra's CLI runs it, its plugin entry points read once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_patch_all_still_calls_gevent_plugins_and_puts_entry_points_back(tmp_path: Path) -> None:
    # A real installed distribution (dist-info on the path) with a gevent monkey-patch plugin.
    dist = tmp_path / "geventplugin_probe-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: geventplugin-probe\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[gevent.plugins.monkey.will_patch_all]\nprobe = geventplugin_probe:will_patch_all\n"
    )
    calls = tmp_path / "calls"
    (tmp_path / "geventplugin_probe.py").write_text(
        f"def will_patch_all(event):\n    open({str(calls)!r}, 'a').write('will_patch_all\\n')\n"
    )
    program = textwrap.dedent(
        """
        import sys
        from importlib import metadata
        asked = metadata.entry_points
        from comfyfleet.runner import parallel_ssh
        parallel_ssh()
        import socket, threading, gevent.socket, gevent.monkey
        assert socket.socket is gevent.socket.socket, "sockets not patched"
        assert gevent.monkey.is_module_patched("threading")
        assert metadata.entry_points is asked, "entry_points not put back"
        parallel_ssh()  # a second call changes nothing
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == ["will_patch_all"]
