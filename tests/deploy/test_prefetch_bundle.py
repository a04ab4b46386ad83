"""The prefetch bundle run by a real ``sh`` (and real ``curl`` against a real HTTP server): every fact
it carries comes back, so no operation of a no-op deploy pays a second round trip for it.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyinfra.facts.files import Link

from comfyfleet.facts import prefetch
from comfyfleet.facts.comfyui import HttpStatus, MissingDirectories


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/system_stats" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run_bundle(requests: list[prefetch.FactRequest]) -> dict[int, tuple[int, list[str]]]:
    commands = tuple(cls().command(**kwargs) for cls, kwargs in requests)
    text = prefetch.FactBundle().command(commands=commands).get_raw_value()
    out = subprocess.run(["sh", "-c", text], capture_output=True, text=True, check=True, timeout=30).stdout
    return prefetch.FactBundle().process(out.splitlines())


def test_bundle_keeps_a_fact_whose_output_has_no_final_newline(url: str, tmp_path: Path) -> None:
    """curl -w '%{http_code}' prints no newline: its status must still be read (it was lost before,
    and the health check then asked the host again in a round trip of its own)."""
    (tmp_path / "a").mkdir()
    requests: list[prefetch.FactRequest] = [
        (HttpStatus, {"url": f"{url}/system_stats"}),
        (MissingDirectories, {"paths": (str(tmp_path / "a"), str(tmp_path / "b"))}),
        (HttpStatus, {"url": f"{url}/nothing"}),
    ]
    parsed = _run_bundle(requests)
    assert parsed[0] == (0, ["200"])
    assert parsed[1] == (0, [str(tmp_path / "b")])
    assert parsed[2] == (0, ["404"])
    assert HttpStatus().process(parsed[0][1]) == 200


def test_bundle_reads_pyinfra_link_fact_like_pyinfra(tmp_path: Path) -> None:
    """pyinfra's own Link fact through the bundle: a link, a missing path, a plain folder."""
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "folder").mkdir()
    requests: list[prefetch.FactRequest] = [
        (Link, {"path": str(tmp_path / "link")}),
        (Link, {"path": str(tmp_path / "missing")}),
        (Link, {"path": str(tmp_path / "folder")}),
    ]
    parsed = _run_bundle(requests)
    link = Link().process(parsed[0][1])
    assert link and link["link_target"] == str(tmp_path / "target")
    assert parsed[1] == (0, [])  # absent: the fact's default (None)
    assert Link().process(parsed[2][1]) is False  # exists, not a link
