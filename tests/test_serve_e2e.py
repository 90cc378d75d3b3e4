"""`segsearch serve` as a real process on a loopback port, queried over HTTP and through its web
page in headless Chromium, over shapes-world scenes indexed with the bundled small models."""

import shutil

import httpx
import pytest
from live_server import CHROMIUM_ARGS, serve

from segsearch.eval.shapes import DEMO_SEEDS, SHAPES_AMG
from segsearch.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    from PIL import Image

    from segsearch import Library
    from segsearch.eval.shapes import make_scene

    root = tmp_path_factory.mktemp("e2e")
    lib = root / "scenes"
    lib.mkdir()
    for seed in DEMO_SEEDS[:4]:
        Image.fromarray(make_scene(seed).image).save(lib / f"scene-{seed}.png")
    settings = Settings(data=root / "data", sam="sam-shapes-tiny", clip="clip-shapes-tiny", **SHAPES_AMG)
    with Library(settings=settings) as library:
        summary = library.index([str(lib)])
    assert summary.indexed == 4
    return settings


@pytest.fixture(scope="module")
def server(indexed):
    env = {
        "SEGSEARCH_DATA": str(indexed.data),
        "SEGSEARCH_CLIP": "clip-shapes-tiny",
        "SEGSEARCH_SAM": "sam-shapes-tiny",
    }
    with serve(env) as base:
        yield base


def test_real_server_over_http(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        r = c.post("/v1/search", json={"text": "red circle", "top_k": 5, "filters": {"kind": "object"}})
        assert r.status_code == 200
        hits = r.json()["hits"]
        assert hits and all(h["kind"] == "object" for h in hits)
        crop = c.get(hits[0]["urls"]["crop"])
        assert crop.status_code == 200 and crop.headers["content-type"] == "image/jpeg"
        bad = c.post("/v1/search", json={"top_k": 5})
        assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
        assert c.get("/v1/stats").json()["indexed"] == 4


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (.ci/run installs it)")
def test_web_page_in_headless_chromium(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(server + "/")
        page.fill("#q", "blue star")
        page.press("#q", "Enter")
        page.wait_for_selector(".hit img", timeout=20_000)
        page.wait_for_function(
            "[...document.querySelectorAll('.hit img')].some(i => i.complete && i.naturalWidth > 0)", timeout=20_000
        )
        n = page.locator(".hit").count()
        assert n > 0
        assert "results" in page.inner_text("#status")
        page.locator(".hit").first.click()
        page.wait_for_selector("#detail", state="visible")
        page.wait_for_function("document.querySelector('#photo').naturalWidth > 0", timeout=20_000)
        page.wait_for_selector("#outlines rect.seg", timeout=20_000)
        page.mouse.click(3, 3)  # the backdrop closes the detail view
        page.wait_for_selector("#detail", state="hidden")
        page.click("#filters summary")
        page.check("#group")
        page.wait_for_selector(".group", timeout=20_000)
        browser.close()
