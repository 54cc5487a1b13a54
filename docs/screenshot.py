"""Take docs/screenshot.png from a running Lookalike (make run) in headless Chromium.

    python docs/screenshot.py [--url http://127.0.0.1:8000] [--image data/gallery/fruit/an_apple_01.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--image", default="data/gallery/fruit/an_apple_01.png")
    parser.add_argument("--out", default=str(Path(__file__).with_name("screenshot.png")))
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(args.url + "/")
        page.set_input_files("#file", args.image)
        page.wait_for_selector("#results .card")
        page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.complete)")
        page.mouse.move(0, 0)
        page.locator("body").click(position={"x": 5, "y": 5})  # no focus ring on the drop zone
        page.screenshot(path=args.out)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
