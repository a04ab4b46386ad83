"""/docs in a real browser: Debian's headless Chromium driven by Playwright, with no route off this host.

The API requires a key (loopback, --api-key-file) and sits in front of the ComfyUI of the
tests (the stand-in, or a real one). Every request the page makes is routed through the test:
anything not to the API's own 127.0.0.1 port is refused and recorded, and the tests assert
none was attempted, so the page works on a host without internet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import INVERT, ROOT, TINY, Api, Comfy, write_workflows
from playwright.sync_api import Browser, Page, Route, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "docs-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: run scripts/setup-dev.sh"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def keyed_api(comfy: Comfy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    d = tmp_path_factory.mktemp("docs-api")
    (d / "keys").write_text(KEY + "\n")
    wf = write_workflows(d / "workflows", {"tiny.json": TINY, "invert.json": INVERT})
    with Api(comfy.url, wf, d / "api.sqlite3", ["--api-key-file", str(d / "keys")]) as api:
        yield api


class OfflinePage:
    """A browser page whose only route is the API under test; other requests are refused and kept."""

    def __init__(self, browser: Browser, api_url: str) -> None:
        self.origin = api_url
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.refused: list[str] = []
        self.served: list[str] = []
        self.context.route("**/*", self._route)
        self.page: Page = self.context.new_page()

    def _route(self, route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" == self.origin or parts.scheme in ("data", "blob"):
            self.served.append(parts.path)
            route.continue_()
        else:
            self.refused.append(url)
            route.abort("addressunreachable")

    def close(self) -> None:
        self.context.close()


def open_docs(offline: OfflinePage) -> Page:
    page = offline.page
    page.goto(offline.origin + "/docs")
    page.get_by_text("ComfyUI workflows API").first.wait_for(timeout=20_000)
    return page


def authorize(page: Page, key: str) -> None:
    page.locator("button.authorize").first.click()
    dialog = page.locator(".dialog-ux")
    dialog.locator("input").first.fill(key)
    dialog.get_by_role("button", name="Apply credentials").click()
    dialog.locator("button.btn-done").click()


def operation(page: Page, tag: str, operation_id: str):  # type: ignore[no-untyped-def]
    block = page.locator(f"#operations-{tag}-{operation_id}")
    block.locator(".opblock-summary").first.click()
    return block


def execute(block, body: dict | None = None):  # type: ignore[no-untyped-def]
    if body is not None:
        block.locator("textarea.body-param__text").fill(json.dumps(body))
    block.locator("button.execute").click()
    return block.locator(".live-responses-table .response .response-col_status").first


def pixel(page: Page, img) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Size and top-left colour of a rendered <img>, read back through a canvas."""
    return img.evaluate(
        """(img) => { const c = document.createElement('canvas'); c.width = img.naturalWidth;
        c.height = img.naturalHeight; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const [r, gr, b] = g.getImageData(0, 0, 1, 1).data;
        return {width: img.naturalWidth, height: img.naturalHeight, rgb: (r << 16) | (gr << 8) | b}; }"""
    )


def test_docs_authorize_run_a_workflow_and_see_the_image(browser: Browser, keyed_api: Api) -> None:
    offline = OfflinePage(browser, keyed_api.url)
    started = time.monotonic()
    try:
        page = open_docs(offline)
        loaded = time.monotonic() - started
        block = operation(page, "workflows", "run_tiny")
        body = {"input": {"color": 0xFF8000, "width": 40, "height": 24}, "outputs": "url"}

        status = execute(block, body)
        status.wait_for(timeout=20_000)
        assert status.inner_text().strip() == "401"  # keys are required: nothing runs before Authorize

        authorize(page, KEY)
        status = execute(block, body)
        img = block.locator(".comfyui-outputs img")
        img.wait_for(timeout=30_000)
        assert status.inner_text().strip() == "200"
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle())
        assert pixel(page, img) == {"width": 40, "height": 24, "rgb": 0xFF8000}

        # The same with the outputs inline (base64): the page decodes them itself.
        execute(block, {**body, "input": {**body["input"], "color": 0x3366CC}, "outputs": "base64"})
        page.wait_for_function(
            "() => [...document.querySelectorAll('.comfyui-outputs img')].some(i => i.src.startsWith('data:image/png'))"
        )
        inline = block.locator(".comfyui-outputs img[src^='data:image/png']")
        assert pixel(page, inline) == {"width": 40, "height": 24, "rgb": 0x3366CC}
        ran = time.monotonic() - started
    finally:
        offline.close()
    assert offline.refused == [], f"the page tried to leave the host: {offline.refused}"
    assert "/docs/swagger-ui-bundle.js" in offline.served and "/openapi.json" in offline.served
    print(f"\n/docs loaded in {loaded:.2f}s; authorize + 3 runs done at {ran:.2f}s")


def test_docs_upload_an_image_and_use_it_as_a_workflow_input(
    browser: Browser, keyed_api: Api, tmp_path: Path
) -> None:
    png = tmp_path / "red.png"
    r = httpx.post(
        keyed_api.url + "/workflows/tiny",
        headers={"authorization": f"Bearer {KEY}"},
        json={"input": {"color": 0xFF0000, "width": 16, "height": 16}, "outputs": "url"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    png.write_bytes(
        httpx.get(
            keyed_api.url + r.json()["outputs"][0]["url"], headers={"authorization": f"Bearer {KEY}"}
        ).content
    )
    offline = OfflinePage(browser, keyed_api.url)
    try:
        page = open_docs(offline)
        authorize(page, KEY)
        upload = operation(page, "advanced", "upload_image")
        upload.locator("input[type=file]").set_input_files(str(png))
        upload.locator("button.execute").click()
        answer = upload.locator(".live-responses-table .response-col_description pre").first
        answer.wait_for(timeout=20_000)
        name = json.loads(answer.inner_text())["name"]
        assert name.endswith(".png")

        block = operation(page, "workflows", "run_invert")
        execute(block, {"input": {"image": name}, "outputs": "url"})
        img = block.locator(".comfyui-outputs img")
        img.wait_for(timeout=30_000)
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle())
        assert pixel(page, img) == {"width": 16, "height": 16, "rgb": 0x00FFFF}  # red, inverted
    finally:
        offline.close()
    assert offline.refused == [], f"the page tried to leave the host: {offline.refused}"


def test_docs_assets_come_from_the_artifact(browser: Browser, comfy: Comfy, tmp_path: Path) -> None:
    pyz = tmp_path / "comfyui-api.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build-binary"), "--out", str(pyz)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    bundled = zipfile.ZipFile(pyz).read("flask_swagger_ui/dist/swagger-ui-bundle.js")
    (tmp_path / "keys").write_text(KEY + "\n")
    wf = write_workflows(tmp_path / "wf", {"tiny.json": TINY})
    api = Api(
        comfy.url,
        wf,
        tmp_path / "db.sqlite3",
        ["--api-key-file", str(tmp_path / "keys")],
        python="/usr/bin/python3",
        pyz=pyz,
    )
    api.cmd[1:1] = ["-I", "-S"]  # no site-packages: only what the .pyz carries
    with api:
        assert httpx.get(api.url + "/docs/swagger-ui-bundle.js").content == bundled
        offline = OfflinePage(browser, api.url)
        try:
            page = open_docs(offline)
            authorize(page, KEY)
            block = operation(page, "workflows", "run_tiny")
            execute(block, {"input": {"color": 0x00AA00}, "outputs": "base64"})
            img = block.locator(".comfyui-outputs img")
            img.wait_for(timeout=30_000)
            page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle())
            assert pixel(page, img)["rgb"] == 0x00AA00
        finally:
            offline.close()
    assert offline.refused == [], f"the page tried to leave the host: {offline.refused}"
