"""The topology page in a real browser: Playwright driving Debian's Chromium against real
`guestbook serve` frontends on a real leader and two followers. A frontend started after the page
opened appears on it, and a killed follower turns red, both without a reload; on a frontend that
follows three real sentinels, each sentinel is drawn and a killed one turns red without a
reload; the page fits a phone's width; a screenshot of it is taken (into docs/status.png with
DOCS_SCREENSHOTS=1, so a test run never changes the checkout). A CSP
violation or a page error fails the test."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from browser import PHONE
from conftest import ROOT, Cluster, MakeFrontend
from sentinels import running_ha

pytestmark = pytest.mark.browser


DOWN = re.compile(r"\bdown\b")
SERVED = re.compile(r"\bserved\b")
DOCS_SCREENSHOT = ROOT / "docs" / "status.png"


def test_a_new_frontend_appears_and_a_killed_follower_turns_red_without_a_reload(
    cluster: Cluster,
    make_frontend: MakeFrontend,
    new_page: Callable[..., Page],
    tmp_path: Path,
) -> None:
    one = make_frontend(cluster, GUESTBOOK_INSTANCE="frontend-a")
    page = new_page(f"{one.url}/status", viewport={"width": 1000, "height": 700})
    page.evaluate("window.notReloaded = true")
    served = page.locator("#frontends li.served")
    expect(served).to_have_attribute("data-name", "frontend-a")
    expect(page.locator("#frontends li.frontend")).to_have_count(1)
    followers = page.locator("#followers li.follower")
    expect(followers).to_have_count(2)
    expect(page.locator("#followers li.down")).to_have_count(0)

    make_frontend(cluster, GUESTBOOK_INSTANCE="frontend-b")
    b = page.locator('#frontends li.frontend[data-name="frontend-b"]')
    expect(b).to_be_visible()
    expect(b).not_to_have_class(SERVED)
    expect(b).to_contain_text("requests")
    expect(page.locator("#live")).to_be_visible()

    first = followers.nth(0)
    cluster.followers[0].kill()
    expect(first).to_have_class(DOWN)
    expect(first).to_contain_text("unreachable")
    expect(followers.nth(1)).not_to_have_class(DOWN)
    red = first.evaluate("node => getComputedStyle(node).borderTopColor")
    assert red == "rgb(198, 40, 40)"
    expect(page.locator("#frontends li.served")).to_have_attribute("data-name", "frontend-a")
    assert page.evaluate("window.notReloaded") is True

    shot = DOCS_SCREENSHOT if os.environ.get("DOCS_SCREENSHOTS") == "1" else tmp_path / "status.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_the_page_fits_a_phone(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page], tmp_path: Path
) -> None:
    frontend = make_frontend(cluster, GUESTBOOK_INSTANCE="frontend-phone")
    page = new_page(f"{frontend.url}/status", viewport=PHONE)
    expect(page.locator("#frontends li.served")).to_be_visible()
    expect(page.locator("#leader li.leader")).to_be_visible()
    expect(page.locator("#followers li.follower")).to_have_count(2)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]
    for selector in ("#leader li.leader", "#followers li.follower >> nth=1"):
        box = page.locator(selector).bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= PHONE["width"]
    page.screenshot(path=str(tmp_path / "status-phone.png"), full_page=True)


def test_sentinels_are_drawn_and_a_killed_one_turns_red_without_a_reload(
    make_frontend: MakeFrontend, new_page: Callable[..., Page], tmp_path: Path
) -> None:
    with running_ha(tmp_path / "ha") as ha:
        frontend = make_frontend(**ha.env(GUESTBOOK_INSTANCE="frontend-sentinels"))
        leader = f"127.0.0.1:{ha.leader().port}"
        page = new_page(f"{frontend.url}/status", viewport={"width": 1000, "height": 700})
        page.evaluate("window.notReloaded = true")
        sentinels = page.locator("#sentinels li.sentinel")
        expect(sentinels).to_have_count(3)
        for sentinel in ha.sentinels:
            box = page.locator(f'#sentinels li.sentinel[data-address="{sentinel.address}"]')
            expect(box).to_contain_text(f"names {leader} leader")
            expect(box).not_to_have_class(DOWN)
        # Redrawn by the script: the follower's seconds are when it last heard from its leader.
        expect(page.locator("#live")).to_be_visible()
        expect(page.locator("#followers li.follower").first).to_contain_text("last heard")

        dead = ha.sentinels[2]
        dead.kill()
        killed = page.locator(f'#sentinels li.sentinel[data-address="{dead.address}"]')
        expect(killed).to_have_class(DOWN)
        expect(killed).to_contain_text("unreachable")
        expect(page.locator("#sentinels li.down")).to_have_count(1)
        red = killed.evaluate("node => getComputedStyle(node).borderTopColor")
        assert red == "rgb(198, 40, 40)"
        assert page.evaluate("window.notReloaded") is True
        page.screenshot(path=str(tmp_path / "status-sentinels.png"))

        phone = new_page(f"{frontend.url}/status", viewport=PHONE)
        expect(phone.locator("#sentinels li.sentinel")).to_have_count(3)
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        for index in range(3):
            box = phone.locator("#sentinels li.sentinel").nth(index).bounding_box()
            assert box is not None
            assert box["x"] >= 0
            assert box["x"] + box["width"] <= PHONE["width"]
        phone.screenshot(path=str(tmp_path / "status-sentinels-phone.png"), full_page=True)
