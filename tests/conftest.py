"""The tests' own fixture: a real browser for the web page. The fixtures the tests share with the
benchmarks' smoke runs (servers, the Ray cluster, the Serve apps) are harness/fixtures.py's."""

from __future__ import annotations

import os
import shutil

import pytest


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium, driven by Playwright (which never downloads a browser here).
    Per module: Playwright's sync API keeps an event loop running in this thread while it is
    open, which would break every later asyncio.run()."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
