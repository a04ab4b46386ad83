"""Bounded resources: no caller can starve others, hold memory, or run oversized jobs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from security.conftest import ALICE, BOB, Api, Site, auth, client_from, wait_for


def test_slow_drip_urls_do_not_starve_other_keys(api: Api, public: Site) -> None:
    results: list[int] = []

    def drip() -> None:
        results.append(
            api.run(ALICE, "invert", {"input": {"image": f"{public.url}/drip"}}, timeout=30).status_code
        )

    threads = [threading.Thread(target=drip) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    r = api.run(BOB, "invert", {"input": {"image": f"{public.url}/img.png"}})
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 2.5
    for t in threads:
        t.join()
    assert results.count(429) >= 4  # alice's own limit: 2 downloads in flight


def test_slow_drip_url_ends_at_the_deadline(api: Api, public: Site) -> None:
    t0 = time.monotonic()
    r = api.run(BOB, "invert", {"input": {"image": f"{public.url}/drip"}})
    assert r.status_code == 422 and "within 3s" in r.json()["detail"][0]["msg"], r.text
    assert time.monotonic() - t0 < 5


def test_per_key_job_limit_leaves_room_for_others(fresh_api: Callable[..., Api]) -> None:
    a = fresh_api("--max-jobs-per-key", "3")
    jobs = [a.run(ALICE, "slow", {"input": {"color": 300 + i}, "async": True}) for i in range(4)]
    assert [r.status_code for r in jobs] == [202, 202, 202, 429]
    other = a.run(BOB, "slow", {"input": {"color": 310}, "async": True})
    assert other.status_code == 202
    for r in [*jobs[:3], other]:  # leave the shared ComfyUI idle for the next attack
        httpx.delete(
            f"{a.url}/jobs/{r.json()['id']}", headers=auth(ALICE if r is not other else BOB), timeout=30
        )


def test_outputs_are_read_from_disk_not_kept_in_memory(api: Api) -> None:
    r = api.run(ALICE, "tiny", {"input": {"color": 320}})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["subfolder"].startswith("api/")  # the API's own layout, one folder per job
    path = api.comfy.base_dir / "output" / out["subfolder"] / out["filename"]
    path.unlink()
    job = httpx.get(f"{api.url}/jobs/{r.json()['id']}", headers=auth(ALICE)).json()
    assert job["outputs"][0].get("expired") is True and "base64" not in job["outputs"][0]


def test_retention_deletes_old_outputs_only_under_api(fresh_api: Callable[..., Api]) -> None:
    a = fresh_api("--output-retention-hours", "0.0005")  # 1.8 s
    output = a.comfy.base_dir / "output"
    keep = output / "operator-file.png"
    keep.write_bytes(b"x")
    os.utime(keep, (1, 1))
    r = a.run(ALICE, "tiny", {"input": {"color": 330}, "outputs": "url"})
    assert r.status_code == 200, r.text
    folder = output / Path(r.json()["outputs"][0]["subfolder"])
    assert folder.is_dir()
    wait_for(lambda: not folder.exists(), timeout=10)
    assert keep.exists()
    assert httpx.get(f"{a.url}/jobs/{r.json()['id']}/outputs/0", headers=auth(ALICE)).status_code == 404


def test_steps_cap(api: Api) -> None:
    r = api.run(ALICE, "sampler", {"input": {"steps": 10000}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", "steps"], r.text


def test_batch_cap(api: Api) -> None:
    r = api.run(ALICE, "tiny", {"input": {"batch_size": 4096}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input", "batch_size"], r.text


def test_pixel_cap(api: Api) -> None:
    r = api.run(ALICE, "tiny", {"input": {"width": 16384, "height": 16384}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "input"], r.text
    assert "pixels" in r.json()["detail"][0]["msg"]


def test_sync_timeout_cancels_the_job(fresh_api: Callable[..., Api]) -> None:
    a = fresh_api("--sync-timeout", "0.3")
    r = a.run(ALICE, "slow", {"input": {"color": 340}})
    assert r.status_code == 504, r.text
    job = httpx.get(f"{a.url}/jobs/{r.json()['id']}", headers=auth(ALICE)).json()
    assert job["status"] == "cancelled"
    queue = httpx.get(f"{a.comfy.url}/queue").json()
    assert not queue["queue_running"] and not queue["queue_pending"]


def test_wrong_keys_are_throttled_per_address(api: Api) -> None:
    with client_from("127.0.0.4") as guesser, client_from("127.0.0.5") as other:
        codes = [
            guesser.get(f"{api.url}/jobs/x", headers=auth(f"guess-{i:026d}")).status_code for i in range(14)
        ]
        assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}
        # While throttled even the right key waits, so a hit cannot be told apart.
        assert guesser.get(f"{api.url}/executions", headers=auth(ALICE)).status_code == 429
        assert other.get(f"{api.url}/executions", headers=auth(ALICE)).status_code == 200


def test_forwarded_for_from_an_untrusted_peer_is_ignored(api: Api) -> None:
    with client_from("127.0.0.6") as guesser:
        codes = [
            guesser.get(
                f"{api.url}/jobs/x", headers={**auth(f"guess-{i:026d}"), "x-forwarded-for": f"203.0.113.{i}"}
            ).status_code
            for i in range(14)
        ]
        assert set(codes[10:]) == {429}, codes


def test_forged_forwarded_for_through_the_trusted_proxy_is_ignored(fresh_api: Callable[..., Api]) -> None:
    """Behind a proxy the caller is the rightmost address the proxy added, not what the caller wrote."""
    a = fresh_api("--trusted-proxy", "127.0.0.7/32")
    with client_from("127.0.0.7") as proxy:
        forged = [
            proxy.get(
                f"{a.url}/jobs/x",
                headers={**auth(f"guess-{i:026d}"), "x-forwarded-for": f"203.0.113.{i}, 198.51.100.1"},
            ).status_code
            for i in range(12)
        ]
        assert set(forged[10:]) == {429}, forged
        # Another client behind the same proxy is a different caller with its own budget.
        other = proxy.get(f"{a.url}/executions", headers={**auth(ALICE), "x-forwarded-for": "198.51.100.2"})
        assert other.status_code == 200
