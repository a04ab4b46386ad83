"""Strict input: bad numbers and bombs get a 422 naming the field; the keyless local mode resists browsers."""

from __future__ import annotations

import json
import time

import httpx

from security.conftest import ADMIN, ALICE, Api, auth


def _post(api: Api, raw: bytes, key: str | None = ALICE, workflow: str = "sampler") -> httpx.Response:
    headers = {"content-type": "application/json", **(auth(key) if key else {})}
    return httpx.post(f"{api.url}/workflows/{workflow}", content=raw, headers=headers, timeout=30)


def test_huge_integer_is_a_422_naming_the_field(api: Api) -> None:
    t0 = time.monotonic()
    r = _post(api, b'{"input": {"seed": ' + b"9" * 5000 + b"}}")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", "seed"], r.text
    assert time.monotonic() - t0 < 2


def test_nan_is_a_422_and_executions_stay_valid_json(api: Api) -> None:
    r = _post(api, b'{"input": {"cfg": NaN}}')
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", "cfg"], r.text
    rows = httpx.get(f"{api.url}/executions", headers=auth(ADMIN)).text
    json.loads(rows, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(f"{c} in /executions")))


def test_infinity_is_a_422_naming_the_field(api: Api) -> None:
    for raw in (
        b'{"input": {"cfg": Infinity}}',
        b'{"input": {"cfg": -Infinity}}',
        b'{"input": {"cfg": 1e999}}',
    ):
        r = _post(api, raw)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", "cfg"], (
            raw,
            r.text,
        )


def test_deep_nesting_is_a_422_naming_the_path(api: Api) -> None:
    t0 = time.monotonic()
    r = _post(api, b'{"input": {"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}}")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:3] == ["body", "input", "prompt"]
    assert time.monotonic() - t0 < 3
    assert httpx.get(f"{api.url}/health").status_code == 200


def test_keyless_mode_checks_the_host_header(local_api: Api) -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1."""
    r = httpx.post(
        f"{local_api.url}/workflows/tiny", json={}, headers={"host": f"evil.example:{local_api.port}"}
    )
    assert r.status_code == 421, r.text
    assert httpx.get(f"{local_api.url}/executions", headers={"host": "evil.example"}).status_code == 421
    assert httpx.post(f"{local_api.url}/workflows/tiny", json={"input": {"color": 501}}).status_code == 200


def test_keyless_mode_refuses_text_plain_bodies(local_api: Api) -> None:
    """CSRF: an HTML form or fetch() without preflight can send text/plain, never application/json."""
    before = httpx.get(f"{local_api.url}/executions").json()["executions"]
    r = httpx.post(
        f"{local_api.url}/workflows/tiny",
        content=b'{"input": {"color": 502}}',
        headers={"content-type": "text/plain"},
    )
    assert r.status_code == 415, r.text
    assert httpx.get(f"{local_api.url}/executions").json()["executions"] == before


def test_keyless_mode_refuses_cross_site_origins(local_api: Api) -> None:
    for origin in ("https://evil.example", "null"):
        r = httpx.post(
            f"{local_api.url}/workflows/tiny", json={"input": {"color": 503}}, headers={"origin": origin}
        )
        assert r.status_code == 403, (origin, r.text)
    ok = httpx.post(
        f"{local_api.url}/workflows/tiny",
        json={"input": {"color": 504}},
        headers={"origin": f"http://localhost:{local_api.port}"},
    )
    assert ok.status_code == 200


def test_unauthenticated_health_and_ready_are_minimal(api: Api) -> None:
    for path in ("/health", "/ready"):
        r = httpx.get(api.url + path)
        assert r.status_code == 200
        text = r.text
        assert "/" not in text.replace("comfyui-api", ""), text
        assert set(r.json()) <= {"status", "service", "ready"}
    full = httpx.get(api.url + "/health", headers=auth(ALICE)).json()
    assert "tiny" in full["workflows"]


def test_comfyui_traceback_is_logged_with_an_id_not_returned(api: Api) -> None:
    r = api.run(ALICE, "boom", {"input": {"color": 505}})
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert "traceback" not in error and 'File "' not in r.text and "Traceback" not in r.text
    assert error["log_id"].startswith("err_")
    assert error["log_id"] in api.log() and "boom" in api.log()
