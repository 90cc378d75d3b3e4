"""Regenerate the screenshots of the web page in the manual (docs/assets/search.png, detail.png).

    python docs/screenshots.py            # needs Debian's chromium and the `playwright` package

Indexes 24 shapes-world demo scenes with the bundled models into a temporary library, starts
`segsearch serve` on it, drives the page in headless Chromium as a person would (a text search;
a hit opened, its photo with every segment outlined) and saves small palette PNGs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "assets"
SIZE = {"width": 1000, "height": 620}


def main() -> int:
    import httpx
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from segsearch import Library
    from segsearch.eval.shapes import DEMO_SEEDS, make_scene

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs chromium (apt install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for seed in DEMO_SEEDS[:24]:
            Image.fromarray(make_scene(seed).image).save(photos / f"scene-{seed}.png")
        with Library(Path(tmp) / "data", sam="sam-shapes-tiny", clip="clip-shapes-tiny") as lib:
            lib.index([photos])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "SEGSEARCH_DATA": str(Path(tmp) / "data")}
        proc = subprocess.Popen([sys.executable, "-m", "segsearch", "serve", "--port", str(port)], env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox"])
                page = browser.new_page(viewport=SIZE)
                page.goto(base + "/?q=red+circle&kind=object")
                page.wait_for_function(
                    "[...document.querySelectorAll('#grid .hit img')].filter(i => i.naturalWidth > 0).length >= 10"
                )
                shot(page, OUT / "search.png")
                page.locator("#grid .hit").first.click()
                page.wait_for_selector("#outlines rect.seg.current")
                page.wait_for_selector("#hover", state="visible")
                time.sleep(0.3)
                shot(page, OUT / "detail.png")
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


def shot(page, path: Path) -> None:
    from PIL import Image

    page.screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(128).save(path, optimize=True)
    print(f"{path} {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    sys.exit(main())
