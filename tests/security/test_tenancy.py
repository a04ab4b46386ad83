"""Tenancy: one key sees, reads, overwrites and cancels only its own jobs, files and executions."""

from __future__ import annotations

import base64
import hashlib
import zlib

import httpx

from security.conftest import ADMIN, ALICE, BOB, Api, Site, auth, png, wait_for


def _job(api: Api, key: str, color: int, workflow: str = "tiny") -> dict:
    r = api.run(key, workflow, {"input": {"color": color}, "async": True})
    assert r.status_code == 202, r.text
    return r.json()


def _pixel(output: dict) -> tuple[int, int, int]:
    """First pixel of an 8x8 RGB PNG output (written with filter 0: raw rows)."""
    data = base64.b64decode(output["base64"])
    idat = data[data.index(b"IDAT") + 4 :]
    raw = zlib.decompressobj().decompress(idat)
    return raw[1], raw[2], raw[3]


def test_other_keys_job_is_invisible(api: Api) -> None:
    job = _job(api, ALICE, 101)
    assert httpx.get(f"{api.url}/jobs/{job['id']}", headers=auth(BOB)).status_code == 404
    assert httpx.get(f"{api.url}/jobs/{job['id']}", headers=auth(ALICE)).status_code == 200
    assert httpx.get(f"{api.url}/jobs/{job['id']}", headers=auth(ADMIN)).status_code == 200


def test_other_keys_output_file_is_unreadable(api: Api) -> None:
    r = api.run(ALICE, "tiny", {"input": {"color": 102}, "outputs": "url"})
    assert r.status_code == 200, r.text
    url = f"{api.url}/jobs/{r.json()['id']}/outputs/0"
    assert httpx.get(url, headers=auth(BOB)).status_code == 404
    assert httpx.get(url, headers=auth(ALICE)).content.startswith(b"\x89PNG")


def test_other_key_cannot_cancel_a_job(api: Api) -> None:
    job = _job(api, ALICE, 103, "slow")
    assert httpx.delete(f"{api.url}/jobs/{job['id']}", headers=auth(BOB)).status_code == 404
    done = wait_for(
        lambda: (
            (j := httpx.get(f"{api.url}/jobs/{job['id']}", headers=auth(ALICE)).json())["status"]
            in ("completed", "failed", "cancelled")
            and j
        ),
        timeout=20,
    )
    assert done["status"] == "completed"


def test_other_keys_upload_cannot_be_used(api: Api) -> None:
    up = httpx.post(
        f"{api.url}/upload/image",
        headers=auth(ALICE),
        files={"image": ("alice-secret.png", png((200, 0, 0)), "image/png")},
    )
    assert up.status_code == 200, up.text
    assert up.json()["subfolder"] == ""  # callers see names relative to their own folder
    assert api.run(ALICE, "invert", {"input": {"image": "alice-secret.png"}}).status_code == 200
    for name in ("alice-secret.png", f"tenants/{_kid(ALICE)}/alice-secret.png", "../alice-secret.png"):
        r = api.run(BOB, "invert", {"input": {"image": name}})
        assert r.status_code == 422, (name, r.text)


def test_other_key_cannot_overwrite_an_upload(api: Api) -> None:
    for key, color in ((ALICE, (200, 0, 0)), (BOB, (0, 0, 200))):
        r = httpx.post(
            f"{api.url}/upload/image",
            headers=auth(key),
            data={"overwrite": "true"},
            files={"image": ("shared-name.png", png(color), "image/png")},
        )
        assert r.status_code == 200, r.text
    r = api.run(ALICE, "invert", {"input": {"image": "shared-name.png"}})
    assert r.status_code == 200, r.text
    assert _pixel(r.json()["outputs"][0]) == (55, 255, 255)  # alice's red, inverted


def test_output_annotation_reference_is_refused(api: Api) -> None:
    r = api.run(ALICE, "tiny", {"input": {"color": 104}})
    name = r.json()["outputs"][0]
    for value in (
        f"{name['subfolder']}/{name['filename']} [output]",
        "tiny_00001_.png [output]",
        "x.png [temp]",
    ):
        r = api.run(BOB, "invert", {"input": {"image": value}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", "image"], r.text


def test_view_url_to_comfyui_is_refused(api: Api) -> None:
    url = f"{api.comfy.url}/view?filename=tiny_00001_.png&type=output"
    r = api.run(BOB, "invert", {"input": {"image": url}})
    assert r.status_code == 422, r.text


def test_raw_prompt_needs_an_admin_key(api: Api) -> None:
    graph = {
        "prompt": {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 105},
            },
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}},
        }
    }
    assert httpx.post(f"{api.url}/prompt", json=graph, headers=auth(BOB), timeout=30).status_code == 403
    assert httpx.post(f"{api.url}/prompt", json=graph, headers=auth(ADMIN), timeout=30).status_code == 200


def test_executions_show_only_own_rows(api: Api) -> None:
    mine = _job(api, ALICE, 106)["id"]
    for query in ("", f"?key_id={_kid(ALICE)}"):
        rows = httpx.get(f"{api.url}/executions{query}", headers=auth(BOB)).json()["executions"]
        assert mine not in {r["id"] for r in rows}
        assert all(r["key_id"] == _kid(BOB) for r in rows)
    rows = httpx.get(f"{api.url}/executions?key_id={_kid(ALICE)}", headers=auth(ADMIN)).json()["executions"]
    assert mine in {r["id"] for r in rows}


def test_webhook_at_comfyui_interrupt_is_refused(api: Api, internal: Site) -> None:
    for hook in (f"{api.comfy.url}/interrupt", f"{internal.url}/interrupt"):
        r = api.run(BOB, "tiny", {"input": {"color": 107}, "webhook": hook, "async": True})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "webhook"], r.text
    assert not [h for h in internal.hits if h[1] == "/interrupt"]


def _kid(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]
