"""Chromium for the browser tests: Playwright driving Debian's Chromium, headless and offline.

The fixtures are imported by each browser test module (`from browser import browser, new_page`),
so one definition serves them all: a module-scoped browser, and `new_page` opening a page in a
fresh context (its own cookies) that fails the test on any page error or CSP violation.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

# The machines that run this have no network beyond loopback, so everything Chromium would
# fetch for itself is turned off.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
]
TIMEOUT_MS = 15_000
PHONE = {"width": 375, "height": 812}
expect.set_options(timeout=TIMEOUT_MS)


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open a page in a fresh context; fails the test on any page error or CSP violation
    (Chromium reports those on the console)."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def open_page(url: str, **options: Any) -> Page:
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            lambda message: (
                errors.append(message.text) if "Content Security Policy" in message.text else None
            ),
        )
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert errors == [], f"the page reported errors: {errors}"
