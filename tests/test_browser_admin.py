"""The moderators' page in a real browser: Playwright driving Debian's Chromium against real
`guestbook serve` frontends on a real leader and two followers. Signing in (the cookie as the
browser keeps it), removing a message (gone from the list, from the public page on this frontend
and another), approving a held post onto the public page, rejecting without JavaScript, and the
page at phone width (a screenshot under the test's tmp_path). A CSP violation or a page error
fails the test."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from browser import PHONE
from conftest import Cluster, Frontend, MakeFrontend

pytestmark = pytest.mark.browser


TOKEN = "moderators-token-for-the-browser"


def post_api(frontend: Frontend, text: str) -> dict[str, Any]:
    response = httpx.post(f"{frontend.url}/api/messages", json={"text": text}, timeout=10)
    assert response.status_code in (201, 202), response.text
    value = response.json()
    assert isinstance(value, dict)
    return value


def sign_in(page: Page, token: str = TOKEN) -> None:
    page.get_by_label("Moderators' token").fill(token)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def public_texts(page: Page) -> list[str]:
    return [str(t) for t in page.locator("#messages li[data-id] .text").all_text_contents()]


def reload_until(page: Page, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Reload until `predicate` holds: how a page without the live `remove` event learns of a
    removal."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the page never showed the change"
        time.sleep(0.1)
        page.reload()


def test_signing_in_keeps_an_http_only_strict_expiring_cookie_for_admin_only(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    frontend = make_frontend(cluster, GUESTBOOK_ADMIN_TOKEN=TOKEN)
    page = new_page(f"{frontend.url}/admin")

    sign_in(page, "not-the-moderators-token")
    expect(page.locator("#error")).to_have_text("That is not the moderators' token.")
    assert page.context.cookies() == []
    expect(page.get_by_label("Moderators' token")).to_have_value("")
    sign_in(page)

    expect(page.locator("#notice")).to_have_text("Signed in.")
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin"
    assert time.time() < cookie["expires"] <= time.time() + 8 * 3600 + 60
    assert page.evaluate("document.cookie") == ""
    assert TOKEN not in page.content()
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#notice")).to_have_text("Signed out.")
    assert page.context.cookies() == []


def test_a_removed_message_disappears_from_the_admin_list_and_the_public_pages(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    one = make_frontend(cluster, GUESTBOOK_ADMIN_TOKEN=TOKEN)
    two = make_frontend(cluster, GUESTBOOK_ADMIN_TOKEN=TOKEN)
    post_api(one, "a kind word")
    spam = post_api(two, "buy cheap watches")
    visitor = new_page(two.url)
    expect(visitor.locator("#messages li .text").first).to_have_text("buy cheap watches")
    admin = new_page(f"{one.url}/admin")
    sign_in(admin)
    row = admin.locator(f'.messages-admin li[data-id="{spam["id"]}"]')
    expect(row).to_contain_text("buy cheap watches")

    row.get_by_label("Reason for removing").fill("spam")
    with admin.expect_navigation():
        row.get_by_role("button", name="Remove").click()

    expect(admin.locator("#notice")).to_have_text(f"Removed message {spam['id']}.")
    expect(row).to_have_count(0)
    expect(admin.locator(".messages-admin li .text")).to_have_text(["a kind word"])
    entry = admin.locator(f'.audit li[data-action="remove"][data-subject="{spam["id"]}"]')
    expect(entry).to_contain_text("remove by moderator")
    expect(entry).to_contain_text("Reason: spam")
    reload_until(visitor, lambda: public_texts(visitor) == ["a kind word"])
    public = new_page(one.url)
    reload_until(public, lambda: public_texts(public) == ["a kind word"])


def test_an_approved_held_post_shows_on_the_public_page(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    frontend = make_frontend(cluster, GUESTBOOK_ADMIN_TOKEN=TOKEN, GUESTBOOK_MODERATION="pre")
    held = post_api(frontend, "please let me in")
    assert held["status"] == "held"
    visitor = new_page(frontend.url)
    expect(visitor.locator("#messages li.empty")).to_be_visible()
    admin = new_page(f"{frontend.url}/admin")
    sign_in(admin)
    row = admin.locator(f'.held-posts li[data-held="{held["id"]}"]')
    expect(row).to_contain_text("please let me in")
    expect(row.locator(".why")).to_have_text("pre-moderation")

    with admin.expect_navigation():
        row.get_by_role("button", name="Approve").click()

    expect(admin.locator("#notice")).to_contain_text("Approved: the post is published")
    expect(admin.locator(".held-posts li.empty")).to_be_visible()
    expect(admin.locator(".messages-admin li .text").first).to_have_text("please let me in")
    expect(admin.locator('.audit li[data-action="approve"]')).to_contain_text("by moderator")
    reload_until(visitor, lambda: public_texts(visitor) == ["please let me in"])


def test_without_javascript_a_held_post_is_rejected_with_a_reason(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    frontend = make_frontend(cluster, GUESTBOOK_ADMIN_TOKEN=TOKEN, GUESTBOOK_MODERATION="pre")
    held = post_api(frontend, "visit http://spam.example now")
    admin = new_page(f"{frontend.url}/admin", java_script_enabled=False)
    sign_in(admin)
    row = admin.locator(f'.held-posts li[data-held="{held["id"]}"]')

    row.get_by_label("Reason for rejecting").fill("advertising")
    with admin.expect_navigation():
        row.get_by_role("button", name="Reject").click()

    expect(admin.locator("#notice")).to_have_text(f"Rejected held post {held['id']}.")
    expect(row).to_have_count(0)
    entry = admin.locator('.audit li[data-action="reject"]')
    expect(entry).to_contain_text("Reason: advertising")
    expect(entry).to_contain_text("visit http://spam.example now")


def test_the_moderators_page_reads_well_at_phone_width(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page], tmp_path: Path
) -> None:
    frontend = make_frontend(cluster, GUESTBOOK_ADMIN_TOKEN=TOKEN, GUESTBOOK_MAX_LINKS="0")
    for text in [
        "Greetings from the Kubernetes meetup!",
        "A-very-long-word-without-any-spaces-that-must-wrap-rather-than-overflow-the-screen",
        "Line one\nline two",
    ]:
        post_api(frontend, text)
    held = post_api(frontend, "cheap pills at https://spam.example")
    post_api(frontend, "see www.one.example")
    admin = new_page(f"{frontend.url}/admin", viewport=PHONE)
    sign_in(admin)
    row = admin.locator(f'.held-posts li[data-held="{held["id"]}"]')
    row.get_by_label("Reason for rejecting").fill("spam")
    with admin.expect_navigation():
        row.get_by_role("button", name="Reject").click()
    expect(admin.locator("#notice")).to_be_visible()

    admin.screenshot(path=str(tmp_path / "admin-375.png"), full_page=True)

    overflow = admin.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    for button in admin.get_by_role("button").all():
        box = button.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= PHONE["width"]
        assert box["height"] >= 32  # a target a thumb can hit
    sign_in_page = new_page(f"{frontend.url}/admin", viewport=PHONE)
    sign_in_page.screenshot(path=str(tmp_path / "admin-sign-in-375.png"), full_page=True)
    expect(sign_in_page.get_by_role("button", name="Sign in")).to_be_in_viewport()


def test_a_visitor_on_another_frontend_sees_the_removal_live_without_reloading(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    one = make_frontend(cluster, GUESTBOOK_ADMIN_TOKEN=TOKEN)
    two = make_frontend(cluster, GUESTBOOK_ADMIN_TOKEN=TOKEN)
    post_api(one, "a kind word")
    spam = post_api(one, "buy cheap watches")
    visitor = new_page(two.url)
    expect(visitor.locator("#live")).to_be_visible()  # the live stream is open
    expect(visitor.locator(f'#messages li[data-id="{spam["id"]}"]')).to_have_count(1)
    marker = visitor.evaluate("() => (window.__same_page = true)")
    assert marker is True

    admin = new_page(f"{one.url}/admin")
    sign_in(admin)
    row = admin.locator(f'.messages-admin li[data-id="{spam["id"]}"]')
    with admin.expect_navigation():
        row.get_by_role("button", name="Remove").click()

    # Gone from the open page by the live `remove` event: the same page, never reloaded.
    expect(visitor.locator(f'#messages li[data-id="{spam["id"]}"]')).to_have_count(0)
    assert visitor.evaluate("() => window.__same_page === true")
    assert public_texts(visitor) == ["a kind word"]
