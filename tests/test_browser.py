"""The page in a real browser: Playwright driving Debian's Chromium against real frontends, a real
leader and two real followers. Live updates between two browsers on two frontends, XSS payloads
that stay text, the no-JavaScript form, the read-only banner, and resuming after a dropped
connection with nothing missed."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect, sync_playwright

from conftest import Cluster, Frontend

pytestmark = pytest.mark.browser
MakeFrontend = Callable[..., Frontend]

# Headless and offline: the machines that run this have no network beyond loopback, so
# everything Chromium would fetch for itself is turned off.
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
expect.set_options(timeout=TIMEOUT_MS)

# From the OWASP XSS Filter Evasion Cheat Sheet.
XSS_PAYLOADS = [
    "<script>alert('XSS')</script>",
    '<SCRIPT SRC="http://127.0.0.1:9/xss.js"></SCRIPT>',
    "<IMG SRC=\"javascript:alert('XSS');\">",
    "<IMG SRC=# onmouseover=\"alert('xxs')\">",
    '<IMG SRC=/ onerror="alert(String.fromCharCode(88,83,83))"></img>',
    '<img src=x onerror="&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099'
    "&#0000114&#0000105&#0000112&#0000116&#0000058&#0000097&#0000108&#0000101"
    '&#0000114&#0000116&#0000040&#0000039&#0000088&#0000083&#0000083&#0000039&#0000041">',
    '<svg/onload=alert("XSS")>',
    "<BODY ONLOAD=alert('XSS')>",
    "<IFRAME SRC=\"javascript:alert('XSS');\"></IFRAME>",
    "<a href=\"javascript:alert('XSS')\">click</a>",
    '"><script>alert(document.cookie)</script>',
    "';alert(String.fromCharCode(88,83,83))//';alert(String.fromCharCode(88,83,83))//\";"
    'alert(String.fromCharCode(88,83,83))//";alert(String.fromCharCode(88,83,83))//--'
    "></SCRIPT>\">'><SCRIPT>alert(String.fromCharCode(88,83,83))</SCRIPT>",
    "<DIV STYLE=\"background-image: url(javascript:alert('XSS'))\">",
    '<INPUT TYPE="IMAGE" SRC="javascript:alert(\'XSS\');">',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "{{7*7}} ${alert(1)} `${alert(1)}`",
]


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
    """Open a page in a fresh context (its own cookies); fails the test on any page error."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def open_page(url: str, **options: Any) -> Page:
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert errors == [], f"the page raised: {errors}"


def post_api(frontend: Frontend, text: str) -> dict[str, Any]:
    response = httpx.post(f"{frontend.url}/api/messages", json={"text": text}, timeout=10)
    assert response.status_code == 201, response.text
    value = response.json()
    assert isinstance(value, dict)
    return value


def write(page: Page, text: str) -> None:
    """Type a message and press Enter, as a person would."""
    page.locator("#text").fill(text)
    page.locator("#text").press("Enter")


def texts(page: Page) -> list[str]:
    return [str(t) for t in page.locator("#messages li[data-id] .text").all_text_contents()]


def wait_live(page: Page) -> None:
    expect(page.locator("#live")).to_be_visible()


# --- live between browsers -----------------------------------------------------------------


def test_two_browsers_on_two_frontends_see_each_others_posts_live(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    one, two = make_frontend(cluster), make_frontend(cluster)
    alice = new_page(one.url)
    bob = new_page(two.url)
    wait_live(alice)
    wait_live(bob)

    write(alice, "Hello from Alice")
    expect(alice.locator("#messages li").first).to_contain_text("Hello from Alice")
    expect(bob.locator("#messages li").first).to_contain_text("Hello from Alice")
    write(bob, "Hi Alice, Bob here")
    expect(alice.locator("#messages li").first).to_contain_text("Hi Alice, Bob here")

    assert texts(alice) == ["Hi Alice, Bob here", "Hello from Alice"]
    assert texts(bob) == ["Hi Alice, Bob here", "Hello from Alice"]
    # Posting leaves the input empty and focused, ready for the next message.
    expect(bob.locator("#text")).to_have_value("")
    expect(bob.locator("#text")).to_be_focused()
    time = alice.locator("#messages li time").first
    expect(time).to_have_text("just now")
    assert time.get_attribute("title")


def test_a_page_shows_messages_once_however_they_arrive(
    shared_frontend: Frontend, new_page: Callable[..., Page], token: str
) -> None:
    page = new_page(shared_frontend.url)
    wait_live(page)

    for i in range(5):
        write(page, f"{token} mine {i}")
        post_api(shared_frontend, f"{token} theirs {i}")
    expect(page.locator("#messages li").first).to_contain_text(f"{token} theirs 4")

    ours = [t for t in texts(page) if t.startswith(token)]
    assert sorted(ours) == sorted(
        [f"{token} mine {i}" for i in range(5)] + [f"{token} theirs {i}" for i in range(5)]
    )
    ids = page.locator("#messages li[data-id]").evaluate_all("els => els.map(e => e.dataset.id)")
    assert len(ids) == len(set(ids))


# --- safety ----------------------------------------------------------------------------------


def test_xss_payloads_show_as_text_and_never_run(
    shared_frontend: Frontend, new_page: Callable[..., Page], token: str
) -> None:
    page = new_page(shared_frontend.url)
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    wait_live(page)
    half = len(XSS_PAYLOADS) // 2
    for payload in XSS_PAYLOADS[:half]:  # posted from this page
        write(page, payload)
        expect(page.locator("#messages li .text").first).to_have_text(payload)
    for payload in XSS_PAYLOADS[half:]:  # arriving over the live feed
        post_api(shared_frontend, payload)
        expect(page.locator("#messages li .text").first).to_have_text(payload)
    live_texts = texts(page)
    page.reload()  # and rendered by the server
    page.locator("#messages li").first.hover()

    for shown in (live_texts, texts(page)):
        assert shown[: len(XSS_PAYLOADS)] == list(reversed(XSS_PAYLOADS))
    injected = page.evaluate(
        "document.querySelectorAll('#messages .text *, body script:not([src]), "
        "iframe, svg, math, img, input[type=image]').length"
    )
    assert injected == 0
    assert dialogs == []


# --- without JavaScript --------------------------------------------------------------------


def test_the_form_works_without_javascript(
    shared_frontend: Frontend, new_page: Callable[..., Page], token: str
) -> None:
    page = new_page(shared_frontend.url, java_script_enabled=False)
    expect(page.locator("h1")).to_have_text("Guestbook")
    expect(page.get_by_label("Message")).to_have_attribute("placeholder", "Messages")

    page.get_by_label("Message").fill(f"{token} no script")
    with page.expect_navigation():
        page.get_by_role("button", name="Submit").click()

    assert page.url.rstrip("/") == shared_frontend.url
    expect(page.locator("#messages li .text").first).to_have_text(f"{token} no script")
    expect(page.locator("#live")).to_be_hidden()


def test_older_messages_link_pages_back_with_javascript(
    shared_frontend: Frontend, new_page: Callable[..., Page], token: str
) -> None:
    for i in range(25):
        post_api(shared_frontend, f"{token} page {i}")
    page = new_page(shared_frontend.url)

    page.get_by_role("link", name="Older messages").click()

    expect(page.locator("#messages li .text").first).to_have_text(f"{token} page 4")
    expect(page.get_by_role("link", name="Newest messages")).to_be_visible()


# --- faults --------------------------------------------------------------------------------


def test_read_only_banner_shows_while_the_leader_is_down_and_clears_when_it_returns(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    frontend = make_frontend(cluster)
    page = new_page(frontend.url)
    wait_live(page)
    banner = page.locator("#banner")
    expect(banner).to_be_hidden()

    cluster.leader.kill()
    write(page, "written while the leader is down")

    expect(banner).to_be_visible()
    expect(banner).to_contain_text("read-only")
    expect(page.locator("#text")).to_have_value("written while the leader is down")
    expect(page.locator("#text")).to_be_focused()

    cluster.leader.start()

    expect(banner).to_be_hidden(timeout=30_000)
    page.locator("#text").press("Enter")
    expect(page.locator("#messages li .text").first).to_have_text(
        "written while the leader is down"
    )


def test_live_updates_resume_after_a_dropped_connection_with_nothing_missed(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    watched, other = make_frontend(cluster), make_frontend(cluster)
    page = new_page(watched.url)
    wait_live(page)
    post_api(other, "before the drop")
    expect(page.locator("#messages li .text").first).to_have_text("before the drop")

    watched.stop(signal.SIGKILL)  # the connection drops with no goodbye
    expect(page.locator("#live")).to_be_hidden()
    missed = [post_api(other, f"missed {i}")["text"] for i in range(3)]
    # The frontend is gone altogether, so the banner says so (rather than "live updates paused").
    expect(page.locator("#banner")).to_be_visible()
    watched.start()

    expect(page.locator("#live")).to_be_visible(timeout=30_000)
    expect(page.locator("#messages li .text").first).to_have_text("missed 2")
    after = post_api(other, "after the drop")["text"]
    expect(page.locator("#messages li .text").first).to_have_text(after)
    assert texts(page) == [after, *reversed(missed), "before the drop"]
    expect(page.locator("#banner")).to_be_hidden()


def test_the_page_fits_a_phone(shared_frontend: Frontend, new_page: Callable[..., Page]) -> None:
    page = new_page(shared_frontend.url, viewport={"width": 360, "height": 740})

    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")

    assert overflow <= 0
    expect(page.get_by_role("button", name="Submit")).to_be_in_viewport()
