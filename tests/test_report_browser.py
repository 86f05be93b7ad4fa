"""A real browser opens report.html and compare.html: no console errors, every image loaded, nothing fetched.

Headless system Chromium (Debian's `chromium`, installed by .ci/run) driven by Playwright for Python.
Screenshots are kept as test artifacts: in the pytest tmp folder, and copied to $FEATX_ARTIFACTS when set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from featx.report.compare import compare
from featx.training import train
from featx.report import evaluate

from test_report_html import photo_store

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.exists(), reason="system Chromium (/usr/bin/chromium) is absent")]


def keep(shot: Path) -> None:
    where = os.environ.get("FEATX_ARTIFACTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(where) / shot.name)


def open_in_chromium(page_path: Path, shot: Path) -> dict:
    """Load a local page; return console errors, page errors, outside requests and per-image load state."""
    sync_api = pytest.importorskip("playwright.sync_api")
    seen = {"console": [], "pageerror": [], "outside": [], "requests": []}

    def route(r):
        url = r.request.url
        seen["requests"].append(url)
        if url.startswith(("file:", "data:")):
            r.continue_()
        else:  # anything leaving the machine is recorded and blocked
            seen["outside"].append(url)
            r.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: seen["pageerror"].append(str(e)))
            page.route("**/*", route)
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            seen["images"] = page.eval_on_selector_all(
                "img", "els => els.map(e => ({complete: e.complete, w: e.naturalWidth, alt: e.alt}))")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    keep(shot)
    return seen


def check_clean(seen: dict) -> None:
    assert seen["console"] == [] and seen["pageerror"] == []
    assert seen["outside"] == []
    assert seen["requests"] and all(u.startswith(("file:", "data:")) for u in seen["requests"])
    assert seen["images"] and all(i["complete"] and i["w"] > 0 for i in seen["images"]), seen["images"]


def test_report_and_compare_pages_in_a_real_browser(tmp_path):
    store = photo_store(tmp_path)
    (tmp_path / "photos" / store.paths[store.indices("test")[0]]).unlink()  # one photo gone: shown as missing
    dirs = []
    for kind in ("logreg", "sgd"):
        train(store, kind, tmp_path / "h" / kind)
        dirs.append(tmp_path / "rep" / kind)
        evaluate(tmp_path / "h" / kind, store, by="age", report_dir=dirs[-1])

    seen = open_in_chromium(dirs[0] / "report.html", tmp_path / "report-browser.png")
    check_clean(seen)
    assert sum(i["alt"].startswith("img/") for i in seen["images"]) >= 12  # gallery thumbnails decoded
    assert (tmp_path / "report-browser.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    compare(dirs, tmp_path / "cmp")
    seen = open_in_chromium(tmp_path / "cmp" / "compare.html", tmp_path / "compare-browser.png")
    check_clean(seen)
    assert (tmp_path / "compare-browser.png").stat().st_size > 10_000


def test_the_check_sees_a_request_leaving_the_machine(tmp_path):
    """The interception is real: a page with an outside image is caught (and blocked)."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="https://example.com/x.png"></body></html>')
    seen = open_in_chromium(bad, tmp_path / "bad.png")
    assert seen["outside"] == ["https://example.com/x.png"]
    assert seen["images"][0]["w"] == 0
