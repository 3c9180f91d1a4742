"""The page in a real browser: Playwright driving Debian's Chromium against real frontends, a real
leader and two real followers. Live updates between two browsers on two frontends, XSS payloads
that stay text, the no-JavaScript form, the posting-paused banner, resuming after a dropped
connection with nothing missed; HTML error pages, the page while the store is gone (and an open
page noticing it), the text box (multi-line, a counter that counts as the server does, a visible
reason for every refusal, nothing typed ever lost), and the API docs loading cleanly."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Dialog,
    Page,
    Route,
    expect,
)

from conftest import Cluster, Frontend, MakeFrontend, wait_until
from test_pages import contrast

pytestmark = pytest.mark.browser


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
    expect(page.locator("#live")).to_have_text("Live")


GREEN = ("rgb(232, 245, 236)", "rgb(47, 158, 85)")  # the live badge and its dot


def badge_colours(page: Page) -> tuple[str, str]:
    colours = page.locator("#live").evaluate(
        "el => [getComputedStyle(el).backgroundColor,"
        " getComputedStyle(el, '::before').backgroundColor]"
    )
    return colours[0], colours[1]


def server_count(text: str) -> int:
    """What the server counts: see `guestbook.messages.clean_text`."""
    return len(text.replace("\r\n", "\n").strip())


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
        # As a person does: the next message once this one is sent (a post still on its way
        # keeps the box busy, and Enter then waits).
        expect(page.locator("form.post")).not_to_have_attribute("aria-busy", "true")
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


def test_posting_paused_banner_shows_while_the_leader_is_down_and_clears_when_it_returns(
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
    expect(banner).to_contain_text("Posting is paused: the guestbook cannot save messages")
    expect(banner).not_to_contain_text("leader")
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


# --- HTML for browsers -----------------------------------------------------------------------


def test_a_browser_is_shown_an_html_page_for_an_unknown_address(
    shared_frontend: Frontend, new_page: Callable[..., Page]
) -> None:
    page = new_page(shared_frontend.url)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))

    response = page.goto(f"{shared_frontend.url}/no/such/page")

    assert response is not None
    assert response.status == 404
    expect(page.locator("h1")).to_have_text("Page not found")
    expect(page.locator("#detail")).to_have_text("There is nothing at this address.")
    # The stylesheet applies (the CSP lets it), and nothing was blocked.
    assert page.locator("main").evaluate("el => getComputedStyle(el).borderRadius") == "14px"
    assert not [m for m in console if "Content Security Policy" in m]
    page.get_by_role("link", name="Go to the guestbook").click()
    expect(page.locator("h1")).to_have_text("Guestbook")


def test_while_the_store_is_down_a_browser_sees_the_last_messages_and_why(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    frontend = make_frontend(cluster)
    page = new_page(frontend.url)
    wait_live(page)
    post_api(frontend, "seen before the outage")
    expect(page.locator("#messages li .text").first).to_have_text("seen before the outage")
    cluster.break_all("killed")
    expect(page.locator("#live")).to_have_text("Paused")

    response = page.reload()

    assert response is not None
    assert response.status == 200
    expect(page.locator("#messages li .text").first).to_have_text("seen before the outage")
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("they may be out of date")
    expect(banner).to_contain_text("Posting is paused")
    expect(page.locator("#live")).to_have_text("Paused")

    cluster.mend_all("killed")
    expect(banner).to_be_hidden(timeout=30_000)
    wait_live(page)
    post_api(frontend, "after the outage")
    expect(page.locator("#messages li .text").first).to_have_text("after the outage")


def test_without_javascript_the_page_from_memory_says_it_may_be_out_of_date(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    frontend = make_frontend(cluster)
    live = new_page(frontend.url)
    wait_live(live)
    post_api(frontend, "seen before the outage")
    # Arrived over the live feed, so it is in the feed's memory.
    expect(live.locator("#messages li .text").first).to_have_text("seen before the outage")
    cluster.break_all("killed")
    wait_until(
        lambda: (
            "may be out of date" in httpx.get(frontend.url, headers={"Accept": "text/html"}).text
        )
    )

    page = new_page(frontend.url, java_script_enabled=False)

    expect(page.locator("#stale")).to_contain_text("may be out of date")
    expect(page.locator("#stale")).to_contain_text("Posting is paused")
    expect(page.locator("#messages li .text").first).to_have_text("seen before the outage")


# --- an open page and the store ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_an_open_page_says_when_the_store_is_gone_and_when_it_is_back(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page], fault: str
) -> None:
    frontend = make_frontend(cluster)
    page = new_page(frontend.url)
    wait_live(page)
    live, banner = page.locator("#live"), page.locator("#banner")
    assert badge_colours(page) == GREEN

    cluster.break_all(fault)

    expect(banner).to_be_visible()
    expect(banner).to_contain_text("The guestbook cannot load messages right now")
    expect(banner).to_contain_text("posting is paused")
    expect(live).to_have_text("Paused")
    colours = badge_colours(page)
    assert colours[0] not in GREEN
    assert colours[1] not in GREEN

    cluster.mend_all(fault)

    expect(banner).to_be_hidden(timeout=30_000)
    wait_live(page)
    assert badge_colours(page) == GREEN
    post_api(frontend, "after the outage")
    expect(page.locator("#messages li .text").first).to_have_text("after the outage")


# --- the text box ----------------------------------------------------------------------------


def test_text_typed_while_a_post_is_sending_is_kept(
    shared_frontend: Frontend, new_page: Callable[..., Page], token: str
) -> None:
    page = new_page(shared_frontend.url)
    wait_live(page)
    held: list[Route] = []

    def hold_posts(route: Route) -> None:
        if route.request.method == "POST":
            held.append(route)  # answered below, once more has been typed
        else:
            route.continue_()

    page.route("**/api/messages", hold_posts)
    write(page, f"{token} first")
    page.wait_for_function("document.querySelector('form.post').getAttribute('aria-busy')")
    assert len(held) == 1
    page.locator("#text").fill(f"{token} typed meanwhile")

    held[0].continue_()

    expect(page.locator("#messages li .text").first).to_have_text(f"{token} first")
    expect(page.locator("#text")).to_have_value(f"{token} typed meanwhile")
    # What was sent and not touched since is cleared as before.
    page.unroute("**/api/messages")
    page.locator("#text").press("Enter")
    expect(page.locator("#messages li .text").first).to_have_text(f"{token} typed meanwhile")
    expect(page.locator("#text")).to_have_value("")


def test_enter_posts_and_shift_enter_starts_a_new_line(
    shared_frontend: Frontend, new_page: Callable[..., Page], token: str
) -> None:
    page = new_page(shared_frontend.url)
    wait_live(page)
    box = page.locator("#text")
    assert box.evaluate("el => el.tagName") == "TEXTAREA"

    box.fill(f"{token} line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    expect(box).to_have_value(f"{token} line one\nline two")
    box.press("Enter")

    first = page.locator("#messages li .text").first
    expect(first).to_have_text(f"{token} line one\nline two")
    stored = httpx.get(f"{shared_frontend.url}/api/messages?limit=1").json()["messages"][0]
    assert stored["text"] == f"{token} line one\nline two"
    page.reload()
    assert first.inner_text() == f"{token} line one\nline two"  # shown on two lines


COUNTED = [
    "😀" * 300,  # 300 characters, 600 UTF-16 units
    "👩‍👩‍👧 family",  # a ZWJ sequence: five code points, one picture
    "  padded\r\n  ",
    "\ufeffbom\ufeff",  # Python keeps U+FEFF, JavaScript's trim() would drop it
    "\x1c\x85sep\u3000",  # Python strips these, JavaScript's trim() keeps the first two
    "e\u0301 vs \u00e9",
    "   ",
    "",
]


def test_the_counter_counts_what_the_server_counts(
    shared_frontend: Frontend, new_page: Callable[..., Page]
) -> None:
    page = new_page(shared_frontend.url)
    counter = page.locator("#count")

    for text in COUNTED:
        page.locator("#text").evaluate(
            "(el, text) => { el.value = text; el.dispatchEvent(new Event('input')); }", text
        )
        expect(counter).to_have_text(f"{server_count(text)} / 500 characters")


def test_an_over_long_text_is_kept_whole_and_refused_with_a_reason(
    shared_frontend: Frontend, new_page: Callable[..., Page]
) -> None:
    page = new_page(shared_frontend.url)
    wait_live(page)
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    emoji = "😀" * 300
    box = page.locator("#text")

    box.fill(emoji)  # fits: the server counts 300, however many UTF-16 units that is
    expect(page.locator("#count")).to_have_text("300 / 500 characters")
    box.fill("y" * 520)  # as a paste would
    expect(page.locator("#count")).to_have_text("520 / 500 characters: 20 too many")
    box.press("Enter")

    expect(page.locator("#banner")).to_have_text(
        "The message is 520 characters long; the limit is 500."
    )
    expect(box).to_have_value("y" * 520)
    expect(box).to_have_attribute("aria-invalid", "true")
    assert posts == []
    box.fill(emoji)
    box.press("Enter")
    expect(page.locator("#messages li .text").first).to_have_text(emoji)


def test_a_whitespace_only_post_says_the_message_is_empty(
    shared_frontend: Frontend, new_page: Callable[..., Page]
) -> None:
    page = new_page(shared_frontend.url)
    wait_live(page)

    page.locator("#text").fill("  \n\t ")
    page.locator("#text").press("Enter")

    expect(page.locator("#banner")).to_be_visible()
    expect(page.locator("#banner")).to_have_text("The message is empty.")
    page.locator("#text").fill("")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#banner")).to_have_text("The message is empty.")


def test_every_refusal_shows_its_reason_and_keeps_the_text(
    cluster: Cluster, make_frontend: MakeFrontend, new_page: Callable[..., Page]
) -> None:
    frontend = make_frontend(cluster, GUESTBOOK_RATE_LIMIT="1", GUESTBOOK_MAX_MESSAGE_CHARS="20000")
    page = new_page(frontend.url)
    wait_live(page)
    banner, box = page.locator("#banner"), page.locator("#text")

    def refused(text: str, reason: str | re.Pattern[str]) -> None:
        box.fill(text)
        box.press("Enter")
        expect(banner).to_be_visible()
        expect(banner).to_have_text(reason)
        expect(box).to_have_value(text)
        box.fill("")  # typing clears the reason, ready for the next
        expect(banner).to_be_hidden()

    refused("a bell \u0007", re.compile(r"control character \(U\+0007\)"))  # 422
    refused("z" * 17_000, "The body is over 16 KiB.")  # 413
    page.route("**/api/messages", lambda route: route.abort())
    refused("no answer", re.compile(r"could not be sent: the guestbook did not answer"))
    page.unroute("**/api/messages")
    write(page, "the one post a minute")
    expect(page.locator("#messages li .text").first).to_have_text("the one post a minute")
    refused("one too many", re.compile(r"^Too many posts: at most 1 a minute\."))  # 429


# --- without JavaScript ----------------------------------------------------------------------


def test_without_javascript_multi_line_posts_work_and_a_refusal_keeps_the_draft(
    shared_frontend: Frontend, new_page: Callable[..., Page], token: str
) -> None:
    page = new_page(shared_frontend.url, java_script_enabled=False)
    box = page.get_by_label("Message")
    too_long = f"{token} too long\n" + "x" * 500

    box.fill(too_long)
    with page.expect_navigation():
        page.get_by_role("button", name="Submit").click()

    expect(page.locator("#banner")).to_have_text(
        f"The message is {server_count(too_long)} characters long; the limit is 500."
    )
    expect(box).to_have_value(too_long)
    box.fill(f"{token} one\ntwo")
    with page.expect_navigation():
        page.get_by_role("button", name="Submit").click()
    assert page.url.rstrip("/") == shared_frontend.url
    assert page.locator("#messages li .text").first.inner_text() == f"{token} one\ntwo"


# --- small things ----------------------------------------------------------------------------


def test_the_text_box_border_has_3_to_1_contrast_on_screen(
    shared_frontend: Frontend, new_page: Callable[..., Page]
) -> None:
    page = new_page(shared_frontend.url)
    colours = page.locator("#text").evaluate(
        "el => [getComputedStyle(el).borderTopColor, getComputedStyle(el).backgroundColor,"
        " getComputedStyle(el.closest('main')).backgroundColor]"
    )

    border, inside, around = (_hex(c) for c in colours)
    assert contrast(border, inside) >= 3
    assert contrast(border, around) >= 3


def _hex(rgb: str) -> str:
    channels = re.fullmatch(r"rgb\((\d+), (\d+), (\d+)\)", rgb)
    assert channels, rgb
    return "#" + "".join(f"{int(c):02x}" for c in channels.groups())


def test_the_api_docs_load_without_a_single_failed_request(
    shared_frontend: Frontend, new_page: Callable[..., Page]
) -> None:
    failed: list[str] = []
    page = new_page("about:blank")
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("console", lambda m: failed.append(m.text) if m.type == "error" else None)

    page.goto(f"{shared_frontend.url}/docs")

    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Guestbook")
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon is not None
    assert icon.startswith("/static/favicon.svg?v=")
    assert failed == []
