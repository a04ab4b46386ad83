"""Outbound URL policy: image URLs and webhooks reach public addresses only, checked where they connect."""

from __future__ import annotations

import time

import httpx

from security.conftest import ALICE, PUBLIC, Api, Site, auth, wait_for


def _image(api: Api, url: str, key: str = ALICE) -> httpx.Response:
    return api.run(key, "invert", {"input": {"image": url}})


def _refused(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    entry = r.json()["detail"][0]
    assert entry["loc"] == ["body", "input", "image"]
    return entry["msg"]


def test_loopback_image_url_is_refused(api: Api, internal: Site) -> None:
    before = len(internal.hits)
    for url in (f"{internal.url}/img.png", f"http://localhost:{internal.port}/img.png"):
        assert "non-public" in _refused(_image(api, url))
    assert len(internal.hits) == before


def test_metadata_address_is_refused(api: Api) -> None:
    t0 = time.monotonic()
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest/meta-data/"):
        assert "non-public" in _refused(_image(api, url))
    assert time.monotonic() - t0 < 2  # refused before any connect attempt


def test_private_addresses_are_refused(api: Api) -> None:
    for url in (
        "http://10.0.0.1/x.png",
        "http://192.168.1.1/x.png",
        "http://172.16.0.1/x.png",
        "http://100.64.0.1/x.png",
        "http://0.0.0.0/x.png",
    ):
        assert "non-public" in _refused(_image(api, url)), url


def test_ipv6_and_mapped_loopback_are_refused(api: Api, internal: Site) -> None:
    for url in (
        f"http://[::1]:{internal.port}/img.png",
        f"http://[::ffff:127.0.0.1]:{internal.port}/img.png",
    ):
        _refused(_image(api, url))
    assert not internal.hits or all(h[1] != "/img.png" for h in internal.hits)


def test_encoded_loopback_forms_are_refused(api: Api, internal: Site) -> None:
    for host in ("2130706433", "0x7f000001", "0177.0.0.1", "127.1"):
        _refused(_image(api, f"http://{host}:{internal.port}/img.png"))
    assert all(h[1] != "/img.png" for h in internal.hits)


def test_redirect_to_loopback_is_not_followed(api: Api, public: Site, internal: Site) -> None:
    r = _image(api, f"{public.url}/redirect?to={internal.url}/img.png")
    _refused(r)
    assert all(h[1] != "/img.png" for h in internal.hits)


def test_name_with_a_loopback_address_never_connects_there(api: Api, public: Site, internal: Site) -> None:
    """multi.test resolves to 127.0.0.1 and the public address: only the public one may be used."""
    before = len(public.hits)
    for _ in range(3):
        r = _image(api, f"http://multi.test:{internal.port}/img.png")
        assert r.status_code == 200, r.text
    assert all(h[1] != "/img.png" for h in internal.hits)
    assert len(public.hits) >= before + 3


def test_dns_rebinding_webhook_is_refused_at_connect(api: Api, public: Site, internal: Site) -> None:
    """rebind.test is public when the request is checked, loopback when the webhook connects."""
    api.hosts.write_text(f"127.0.0.1 localhost\n{PUBLIC} rebind.test\n")
    r = api.run(
        ALICE,
        "slow",
        {"input": {"color": 201}, "async": True, "webhook": f"http://rebind.test:{internal.port}/hook"},
    )
    assert r.status_code == 202, r.text
    api.hosts.write_text("127.0.0.1 localhost\n127.0.0.1 rebind.test\n")
    try:
        job = wait_for(
            lambda: (
                (j := httpx.get(f"{api.url}/jobs/{r.json()['id']}", headers=auth(ALICE)).json()).get(
                    "webhook"
                )
                and j
            ),
            timeout=20,
        )
    finally:
        api.hosts.write_text(
            f"127.0.0.1 localhost\n{PUBLIC} public.test\n127.0.0.1 multi.test\n"
            f"{PUBLIC} multi.test\n{PUBLIC} rebind.test\n"
        )
    assert job["webhook"]["delivered"] is False and "public" in job["webhook"]["error"]
    assert all(h[1] != "/hook" for h in internal.hits)


def test_errors_do_not_reveal_ports_or_upstream_bodies(api: Api, public: Site) -> None:
    closed = httpx.URL(public.url).copy_with(port=1)
    messages = {
        _refused(_image(api, f"{closed}/x.png")),
        _refused(_image(api, f"{public.url}/500")),
        _refused(_image(api, f"{public.url}/nothing-here")),
    }
    for msg in messages:
        assert "SECRET" not in msg and "hunter2" not in msg
        assert "refused" not in msg.lower() and "500" not in msg and "404" not in msg
        assert str(public.port) not in msg and "Errno" not in msg


def test_link_local_webhook_is_refused(api: Api) -> None:
    for hook in ("http://169.254.169.254/hook", "http://[fe80::1]/hook", "http://10.1.2.3/hook"):
        r = api.run(ALICE, "tiny", {"input": {"color": 202}, "webhook": hook})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "webhook"], r.text


def test_allow_list_lets_only_the_named_network_through(api: Api, public: Site) -> None:
    """--allow-outbound 127.0.0.2/32: that address works (a webhook arrives), its neighbours do not."""
    r = api.run(ALICE, "tiny", {"input": {"color": 203}, "webhook": f"{public.url}/allowed-hook"})
    assert r.status_code == 200, r.text
    wait_for(lambda: any(h[1] == "/allowed-hook" for h in public.hits))
    _refused(_image(api, f"http://127.0.0.3:{public.port}/img.png"))
