"""Screenshot a report page with the system Chromium, for the README (full page, 900 px wide, 256 colours).

    python docs/screenshot_report.py /tmp/real-report/report.html docs/report-utkface.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def shoot(page_path: Path, out: Path, width: int = 900) -> list[str]:
    """Writes the screenshot; returns the page's console errors (none expected)."""
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        full = Path(tmp) / "full.png"
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:")) else r.abort())
        page.goto(page_path.resolve().as_uri())
        page.screenshot(path=str(full), full_page=True)
        browser.close()
        im = Image.open(full).convert("RGB")
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    return errors


if __name__ == "__main__":
    errs = shoot(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}; console errors: {errs or 'none'}")
    sys.exit(1 if errs else 0)
