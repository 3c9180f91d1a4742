"""What a browser gets over plain HTTP: HTML error pages instead of problem documents, the page
from the feed's last copy while the store is down, the static assets' caching and compression,
the page's wording and the contrast of its form controls. (`test_browser.py` drives the same
in Chromium.)"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import httpx
import pytest

from conftest import Cluster, Frontend, MakeFrontend, post, wait_until
from guestbook.problems import POSTING_PAUSED, prefers_html

STATIC = Path(__file__).resolve().parent.parent / "src" / "guestbook" / "static"
# What Chromium sends when it navigates to a page.
BROWSER = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
}


def assert_small_safe_html_page(response: httpx.Response) -> str:
    """An HTML page with the project's stylesheet, the strict CSP, and nothing inline."""
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "style-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    page = response.text
    assert page.startswith("<!doctype html>")
    assert re.search(r'<link rel="stylesheet" href="/static/style\.css\?v=\w+">', page)
    assert "<style" not in page
    assert "style=" not in page
    assert re.search(r"<script(?![^>]*\ssrc=)", page) is None
    assert re.search(r"<[^>]*\son\w+=", page) is None  # no inline event handlers
    return page


def fed(frontend: Frontend, text: str) -> None:
    """Wait until the frontend's feed has passed `text` on to live clients (so it is in the
    feed's memory), reading the live stream as a browser would."""
    with httpx.stream("GET", f"{frontend.url}/api/messages/stream?after=0-0", timeout=15) as sse:
        for line in sse.iter_lines():
            if line.startswith("data:") and text in line:
                return
    raise AssertionError(f"{text!r} never came through the live feed")


# --- which clients get HTML ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER["Accept"], True),
        ("text/html", True),
        ("text/html;q=0.9, application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("application/json", False),
        ("application/problem+json", False),
        ("*/*", False),
        ("", False),
        (None, False),
        ("text/event-stream", False),
        ("text/html;q=0", False),
        ("application/json, text/javascript, */*; q=0.01", False),  # jQuery's getJSON
        ("text/*, application/json;q=0.5", True),
    ],
)
def test_html_is_for_clients_that_prefer_it_over_json(accept: str | None, html: bool) -> None:
    assert prefers_html(accept) is html


def test_a_browser_gets_an_html_404_page_for_an_unknown_path(gb: httpx.Client) -> None:
    response = gb.get("/no/such/page", headers=BROWSER)

    assert response.status_code == 404
    page = assert_small_safe_html_page(response)
    assert "<h1>Page not found</h1>" in page
    assert "There is nothing at this address." in page
    assert '<a href="/">Go to the guestbook</a>' in page


def test_api_clients_still_get_problem_documents(gb: httpx.Client) -> None:
    for accept in ("*/*", "application/json", "application/problem+json"):
        response = gb.get("/no/such/page", headers={"Accept": accept})
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 404
    legacy = gb.get("/guestbook.php", params={"cmd": "nope"}, headers=BROWSER)
    assert legacy.status_code == 400
    assert "error" in legacy.json()


def test_a_browser_gets_html_for_a_bad_page_address_and_a_wrong_method(gb: httpx.Client) -> None:
    bad = gb.get("/?before=yesterday", headers=BROWSER)
    assert bad.status_code == 400
    assert "before" in assert_small_safe_html_page(bad)

    wrong = gb.request("PUT", "/", headers=BROWSER)
    assert wrong.status_code == 405
    assert "allow" in wrong.headers
    assert_small_safe_html_page(wrong)


# --- the store down ------------------------------------------------------------------------


def test_while_the_store_is_down_the_page_shows_what_it_last_saw(
    cluster: Cluster, make_frontend: MakeFrontend
) -> None:
    frontend = make_frontend(cluster)
    for i in range(3):
        assert post(frontend, f"seen before the outage {i}").status_code == 201
    fed(frontend, "seen before the outage 2")

    cluster.stop()
    wait_until(lambda: "may be out of date" in httpx.get(frontend.url, headers=BROWSER).text)
    response = httpx.get(frontend.url, headers=BROWSER)

    # 200: it is the page, with messages to read; the notice says what is wrong.
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    page = assert_small_safe_html_page(response)
    notice = page.split('<p id="stale"', 1)[1].split("</p>", 1)[0]
    assert "cannot load messages right now" in notice
    assert "may be out of date" in notice
    assert "Posting is paused" in notice
    assert "leader" not in page
    assert "follower" not in page
    shown = re.findall(r'<p class="text">([^<]*)</p>', page)
    assert shown == [f"seen before the outage {i}" for i in (2, 1, 0)]
    # It is the page whoever asks: an API client reads /api/messages, and gets a 503 there.
    assert httpx.get(frontend.url, headers={"Accept": "*/*"}).status_code == 200
    assert httpx.get(f"{frontend.url}/api/messages").status_code == 503


def test_a_form_post_while_the_store_is_down_keeps_the_draft_and_says_posting_is_paused(
    cluster: Cluster, make_frontend: MakeFrontend
) -> None:
    frontend = make_frontend(cluster)
    assert post(frontend, "an old message").status_code == 201
    fed(frontend, "an old message")
    cluster.stop()

    response = httpx.post(
        frontend.url, data={"text": "line one\nline two"}, headers=BROWSER, timeout=10
    )

    assert response.status_code == 503
    assert response.headers["retry-after"]
    page = assert_small_safe_html_page(response)
    banner = page.split('<div id="banner"', 1)[1].split("</div>", 1)[0]
    assert POSTING_PAUSED in banner
    assert ">\nline one\nline two</textarea>" in page
    assert "an old message" in page
    assert "may be out of date" in page


def test_with_nothing_seen_yet_a_browser_gets_a_503_page_and_an_api_client_a_problem(
    cluster: Cluster, make_frontend: MakeFrontend
) -> None:
    cluster.stop()
    frontend = make_frontend(cluster, wait_ready=False)

    response = httpx.get(frontend.url, headers=BROWSER, timeout=10)

    assert response.status_code == 503
    assert response.headers["retry-after"]
    page = assert_small_safe_html_page(response)
    assert "<h1>The guestbook is unavailable right now</h1>" in page
    assert "cannot load its messages right now" in page
    assert '<a href="">Try again</a>' in page
    problem = httpx.get(frontend.url, headers={"Accept": "application/json"}, timeout=10)
    assert problem.status_code == 503
    assert problem.headers["content-type"] == "application/problem+json"


# --- wording -------------------------------------------------------------------------------


def test_a_refused_post_says_posting_is_paused_in_plain_words(
    cluster: Cluster, make_frontend: MakeFrontend
) -> None:
    frontend = make_frontend(cluster)
    cluster.leader.kill()

    api = post(frontend, "while nothing can be saved")
    form = httpx.post(frontend.url, data={"text": "while nothing can be saved"}, timeout=10)

    assert api.status_code == 503
    assert api.json()["detail"] == (
        "Posting is paused: the guestbook cannot save messages right now. "
        "Please try again in a moment."
    )
    assert form.status_code == 503
    assert POSTING_PAUSED in form.text
    for said in (api.text, form.text):
        assert "read-only" not in said
        assert "leader" not in said


# --- static assets -------------------------------------------------------------------------


def asset_urls(page: str) -> list[str]:
    return re.findall(r'(?:href|src)="(/static/[^"]+)"', page)


def test_the_page_links_its_assets_by_version_and_they_are_cached_for_good(
    gb: httpx.Client,
) -> None:
    urls = asset_urls(gb.get("/").text)
    assert sorted(u.split("?")[0] for u in urls) == [
        "/static/favicon.svg",
        "/static/guestbook.js",
        "/static/style.css",
    ]
    for url in urls:
        name = url.split("?")[0].rsplit("/", 1)[1]
        response = gb.get(url)
        assert response.status_code == 200
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.content == (STATIC / name).read_bytes()
        # Without the version (or with another replica's) it must be revalidated.
        for other in (url.split("?")[0], url.split("?")[0] + "?v=old"):
            assert gb.get(other).headers["cache-control"] == "no-cache"


def test_text_assets_are_sent_compressed_to_clients_that_accept_gzip(gb: httpx.Client) -> None:
    url = next(u for u in asset_urls(gb.get("/").text) if "guestbook.js" in u)
    original = (STATIC / "guestbook.js").read_bytes()

    with gb.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    plain = gb.get(url, headers={"Accept-Encoding": "identity"})

    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert len(raw) < len(original) / 2
    assert gzip.decompress(raw) == original
    assert "content-encoding" not in plain.headers
    assert plain.content == original
    assert response.headers["etag"] != plain.headers["etag"]


def test_an_unchanged_asset_is_answered_304(gb: httpx.Client) -> None:
    first = gb.get("/static/style.css")
    again = gb.get("/static/style.css", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == first.headers["etag"]


def test_assets_that_do_not_exist_or_escape_the_folder_are_404(gb: httpx.Client) -> None:
    for path in ("/static/nope.js", "/static/../pages.py", "/static/%2e%2e/pages.py"):
        assert gb.get(path).status_code == 404
    assert gb.post("/static/style.css").status_code == 405


def test_the_first_page_is_not_compressed(gb: httpx.Client) -> None:
    # The page is the fast path's pre-encoded answer; compressing it per request would cost
    # more than it saves on the short distance to a load balancer.
    response = gb.get("/", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in response.headers


def test_the_api_docs_link_an_icon_that_exists(gb: httpx.Client) -> None:
    docs = gb.get("/docs").text
    links = re.findall(r'(?:href|src)="([^"]+)"', docs)

    assert any("favicon.svg" in link for link in links)
    for link in links:
        response = gb.get(link)
        assert response.status_code == 200, link
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    favicon = gb.get("/favicon.ico")
    assert favicon.status_code == 200
    assert favicon.headers["content-type"] == "image/svg+xml"


def test_the_api_docs_bundle_is_compressed(gb: httpx.Client) -> None:
    with gb.stream(
        "GET", "/docs-assets/swagger-ui-bundle.js", headers={"Accept-Encoding": "gzip"}
    ) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    plain = gb.head("/docs-assets/swagger-ui-bundle.js", headers={"Accept-Encoding": "identity"})
    assert len(raw) < int(plain.headers["content-length"]) / 2


# --- contrast ------------------------------------------------------------------------------


def _css_rules(css: str) -> dict[str, dict[str, str]]:
    rules: dict[str, dict[str, str]] = {}
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", re.sub(r"/\*.*?\*/", "", css)):
        declarations = {}
        for declaration in body.split(";"):
            name, _, value = declaration.partition(":")
            if value:
                declarations[name.strip()] = value.strip()
        for selector in selectors.split(","):
            rules.setdefault(selector.strip(), {}).update(declarations)
    return rules


def _luminance(color: str) -> float:
    assert re.fullmatch(r"#[0-9a-fA-F]{6}", color), color
    channels = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two sRGB colours."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_contrast_is_computed_as_wcag_defines_it() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21)
    assert contrast("#c9d0dd", "#ffffff") == pytest.approx(1.55, abs=0.01)  # the old border


def test_the_text_box_border_stands_out_3_to_1_from_its_background() -> None:
    rules = _css_rules((STATIC / "style.css").read_text())
    variables = rules[":root"]

    def resolve(value: str) -> str:
        match = re.search(r"var\((--[\w-]+)\)", value)
        return variables[match[1]] if match else value

    box = rules[".post textarea"]
    border = resolve(box["border"].split()[-1])
    background = resolve(box["background"])
    around = resolve(rules[".book"]["background"])

    # WCAG 1.4.11: a control's boundary needs 3:1 against what is next to it, inside and out.
    assert contrast(border, background) >= 3
    assert contrast(border, around) >= 3
