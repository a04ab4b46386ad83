"""Stop markers (--disabled-dir): a stopped workflow is not served from the next request on, no restart."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from conftest import ROOT, TINY, Api, Comfy, wait_for, write_workflows


def _missing_model_txt2img() -> str:
    """The example txt2img with a checkpoint nobody has: /ready fails while it is served."""
    graph = json.loads((ROOT / "workflows" / "txt2img.json").read_text())
    for node in graph.values():
        if "ckpt_name" in node.get("inputs", {}):
            node["inputs"]["ckpt_name"] = "nobody-has-this.safetensors"
    return json.dumps(graph)


def test_marker_stops_and_unmarking_serves_again_without_restart(comfy: Comfy, tmp_path: Path) -> None:
    wf = write_workflows(
        tmp_path / "wf", {"tiny.json": TINY, "other.json": TINY, "needs_model.json": _missing_model_txt2img()}
    )
    disabled = tmp_path / "disabled"  # absent at start: nothing is stopped
    with Api(comfy.url, wf, tmp_path / "db.sqlite3", ["--disabled-dir", str(disabled)]) as a:
        pid = a.proc.pid if a.proc else None
        assert httpx.post(a.url + "/workflows/tiny", json={}, timeout=30).status_code == 200
        assert (
            httpx.get(a.url + "/ready", timeout=10).status_code == 503
        )  # needs_model's checkpoint is missing

        disabled.mkdir()
        (disabled / "tiny").touch()
        (disabled / "needs_model").touch()
        r = httpx.post(
            a.url + "/workflows/tiny", json={}, timeout=30
        )  # the very next request: no cache window
        assert r.status_code == 404, r.text
        assert (
            r.json()["status"] == "stopped"
            and "stopped" in r.json()["detail"]
            and "tiny" in r.json()["detail"]
        )
        paths = httpx.get(a.url + "/openapi.json").json()["paths"]
        assert "/workflows/tiny" not in paths and "/workflows/other" in paths
        assert set(httpx.get(a.url + "/workflows").json()) == {"other"}
        health = httpx.get(a.url + "/health").json()
        assert health["workflows"] == ["other"] and health["stopped"] == ["needs_model", "tiny"]
        # A stopped workflow's models are not required: the service is ready for what it serves.
        ready = wait_for(
            lambda: (x := httpx.get(a.url + "/ready", timeout=10)).status_code == 200 and x, timeout=2
        )
        assert ready.json()["checks"]["workflows"]["stopped"] == ["needs_model", "tiny"]
        assert httpx.post(a.url + "/workflows/other", json={}, timeout=30).status_code == 200

        (disabled / "tiny").unlink()
        r = httpx.post(
            a.url + "/workflows/tiny", json={}, timeout=30
        )  # the very next request: no cache window
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] and "/workflows/tiny" in httpx.get(a.url + "/openapi.json").json()["paths"]
        assert a.proc is not None and a.proc.pid == pid and a.proc.poll() is None  # no restart happened


def test_without_disabled_dir_marker_files_are_ignored(comfy: Comfy, tmp_path: Path) -> None:
    wf = write_workflows(tmp_path / "wf", {"tiny.json": TINY})
    (tmp_path / "disabled").mkdir()
    (tmp_path / "disabled" / "tiny").touch()
    with Api(comfy.url, wf, tmp_path / "db.sqlite3") as a:
        assert httpx.post(a.url + "/workflows/tiny", json={}, timeout=30).status_code == 200
        assert httpx.get(a.url + "/health").json()["stopped"] == []
