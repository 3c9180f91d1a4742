"""The JSON API and the page over real HTTP, against a real leader and two followers."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import Cluster, Frontend, MakeFrontend, post

TRICKY = [
    "a, b, c",
    "she said \"hi\" and 'bye'",
    "& # + % \\ / ?",
    "<script>alert(1)</script>",
    "emoji 🎉👍🏽 and ZWJ 👩‍👩‍👧",
    "日本語のテキスト, Ελληνικά, русский, עברית, العربية",
    "line one\nline two\twith tab",
]


def test_posted_message_comes_back_with_id_and_time(gb: httpx.Client, token: str) -> None:
    response = post(gb, f"hello {token}")
    assert response.status_code == 201
    message = response.json()
    assert set(message) == {"id", "text", "created_at"}
    assert message["text"] == f"hello {token}"
    assert message["created_at"].endswith("Z")
    assert len(message["created_at"]) == 24
    listed = gb.get("/api/messages").json()["messages"]
    assert listed[0] == message


def test_text_is_trimmed_when_stored(gb: httpx.Client, token: str) -> None:
    assert post(gb, f"   padded {token}\n ").json()["text"] == f"padded {token}"


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_text_round_trips_through_api_page_and_legacy(
    gb: httpx.Client, token: str, text: str
) -> None:
    full = f"{token} {text}"
    assert post(gb, full).status_code == 201
    assert gb.get("/api/messages").json()["messages"][0]["text"] == full
    page = gb.get("/").text
    assert _escaped_jinja(full) in page
    if "<script>" in text:
        assert "<script>alert(1)</script>" not in page
    legacy = json.loads(gb.get("/guestbook.php", params={"cmd": "get", "key": "messages"}).text)
    assert legacy["data"].endswith(full)


def _escaped_jinja(text: str) -> str:
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
        .replace("'", "&#39;")
    )


def test_two_hundred_concurrent_posters_lose_nothing(
    shared_cluster: Cluster, make_frontend: MakeFrontend, token: str
) -> None:
    # What is pinned is that nothing is lost or overwritten; a generous store timeout keeps a
    # loaded test machine's fsyncs (the leader writes every post to disk) out of the picture.
    frontend: Frontend = make_frontend(shared_cluster, GUESTBOOK_STORE_TIMEOUT="10")
    gb = frontend.http()
    texts = [f"{token} poster {i}" for i in range(200)]
    barrier = threading.Barrier(200)

    def send(text: str) -> int:
        with httpx.Client(base_url=str(gb.base_url), timeout=30) as client:
            barrier.wait()
            return post(client, text).status_code

    with ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(send, texts))
    assert statuses == [201] * 200
    mine: list[dict[str, str]] = []
    before = None
    while len(mine) < 200:
        params: dict[str, str | int] = {"limit": 200, **({"before": before} if before else {})}
        body = gb.get("/api/messages", params=params).json()
        mine += [m for m in body["messages"] if m["text"].startswith(f"{token} poster ")]
        before = body["next"]
        if before is None:
            break
    gb.close()
    assert sorted(m["text"] for m in mine) == sorted(texts)
    assert len({m["id"] for m in mine}) == 200


def test_paging_walks_every_message_once_in_order(gb: httpx.Client, token: str) -> None:
    posted = [post(gb, f"{token} page {i}").json()["id"] for i in range(23)]
    seen: list[str] = []
    before = None
    while True:
        params: dict[str, str | int] = {"limit": 5}
        if before:
            params["before"] = before
        body = gb.get("/api/messages", params=params).json()
        seen.extend(m["id"] for m in body["messages"])
        before = body["next"]
        if before is None:
            break
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen, key=lambda i: tuple(map(int, i.split("-"))), reverse=True)
    assert [i for i in seen if i in set(posted)] == list(reversed(posted))


def test_ids_are_unique_and_time_ordered(gb: httpx.Client, token: str) -> None:
    ids = [post(gb, f"{token} {i}").json()["id"] for i in range(10)]
    keys = [tuple(map(int, i.split("-"))) for i in ids]
    assert keys == sorted(keys)
    assert len(set(keys)) == 10


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"before": "yesterday"}, "before"),
        ({"before": "1-2-3"}, "before"),
    ],
)
def test_bad_paging_parameters_are_400(
    gb: httpx.Client, params: dict[str, object], detail: str
) -> None:
    response = gb.get("/api/messages", params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 400
    assert body["title"] == "Bad Request"
    assert detail in body["detail"]


def _count(gb: httpx.Client) -> int:
    return int(gb.get("/api/status").json()["message_count"])


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"text": "unterminated', {"content-type": "application/json"}, 400),
        (b"not json at all", {"content-type": "application/json"}, 400),
        (b'{"text": "hi"}', {"content-type": "text/plain"}, 415),
        (b"text=hi", {"content-type": "application/x-www-form-urlencoded"}, 415),
        (b'{"text": "hi"}', {}, 415),
        (json.dumps({"text": "x" * 17000}).encode(), {"content-type": "application/json"}, 413),
        (b'{"text": ""}', {"content-type": "application/json"}, 422),
        (b'{"text": "   \\n  "}', {"content-type": "application/json"}, 422),
        (b'{"text": 5}', {"content-type": "application/json"}, 422),
        (b'{"message": "hi"}', {"content-type": "application/json"}, 422),
        (b'{"text": "hi", "admin": true}', {"content-type": "application/json"}, 422),
        (b'["hi"]', {"content-type": "application/json"}, 422),
        (b'{"text": "bell \\u0007"}', {"content-type": "application/json"}, 422),
        (b'{"text": "nul \\u0000"}', {"content-type": "application/json"}, 422),
        (b'{"text": "cr \\r alone"}', {"content-type": "application/json"}, 422),
        (b'{"text": "lone \\ud800"}', {"content-type": "application/json"}, 422),
        (json.dumps({"text": "y" * 501}).encode(), {"content-type": "application/json"}, 422),
    ],
)
def test_bad_posts_get_their_status_and_store_nothing(
    gb: httpx.Client, content: bytes, headers: dict[str, str], status: int
) -> None:
    before = _count(gb)
    response = gb.post("/api/messages", content=content, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail"}
    assert body["status"] == status
    assert "Traceback" not in response.text
    assert _count(gb) == before


def test_message_of_exactly_the_limit_is_accepted(gb: httpx.Client) -> None:
    assert post(gb, "z" * 500).status_code == 201


def test_unknown_path_is_a_problem_404(gb: httpx.Client) -> None:
    response = gb.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_every_response_carries_a_strict_csp(gb: httpx.Client) -> None:
    for path in ("/", "/api/messages", "/healthz", "/guestbook.php?cmd=get"):
        csp = gb.get(path).headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp


def test_page_has_the_tutorial_form_and_no_inline_script(gb: httpx.Client) -> None:
    page = gb.get("/").text
    assert "<title>Guestbook</title>" in page
    assert "<h1>Guestbook</h1>" in page
    assert 'placeholder="Messages"' in page
    assert ">Submit</button>" in page
    assert "<script>" not in page
    assert "<script src=" in page
    assert "http://" not in page
    assert "https://" not in page


def test_page_footer_names_the_instance_in_plain_words(gb: httpx.Client) -> None:
    page = gb.get("/").text
    status = gb.get("/api/status").json()
    footer = page.split('<footer class="instance">', 1)[1].split("</footer>", 1)[0]
    assert footer == (
        f'Served by <strong id="instance">{status["instance"]}</strong>'
        ' · <a href="/status">How this guestbook runs</a>'
    )
    # Which server a read came from means nothing to a visitor; /api/status tells operators.
    assert 'id="source"' not in page
    assert "read from the" not in page


def test_form_post_redirects_and_shows_the_message_first(gb: httpx.Client, token: str) -> None:
    response = gb.post("/", data={"text": f"form {token}"})
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    page = gb.get("/").text
    assert page.index(f"form {token}") < page.index("</ol>")
    first = page.split('<li data-id="', 2)[1]
    assert f"form {token}" in first


def test_form_post_of_empty_text_shows_the_error_and_stores_nothing(gb: httpx.Client) -> None:
    before = _count(gb)
    response = gb.post("/", data={"text": "   "})
    assert response.status_code == 422
    assert "The message is empty." in response.text
    assert _count(gb) == before


def test_older_messages_link_pages_back(gb: httpx.Client, token: str) -> None:
    for i in range(25):
        post(gb, f"{token} old {i}")
    page = gb.get("/").text
    link = page.split('id="older" href="', 1)[1].split('"', 1)[0]
    older = gb.get(link).text
    assert f"{token} old 4<" in older
    assert f"{token} old 24<" not in older


def test_status_reports_store_without_secrets(gb: httpx.Client) -> None:
    status = gb.get("/api/status").json()
    assert status["mode"] == "redis"
    assert status["leader"]["reachable"] is True
    assert [f["reachable"] for f in status["followers"]] == [True, True]
    assert all(f["link"] == "up" for f in status["followers"])
    assert isinstance(status["message_count"], int)


def test_openapi_document_describes_the_api(gb: httpx.Client) -> None:
    doc = gb.get("/openapi.json").json()
    paths = doc["paths"]
    assert {"/api/messages", "/api/status", "/guestbook.php", "/guestbook"} <= set(paths)
    post_op = paths["/api/messages"]["post"]
    assert "201" in post_op["responses"]
    assert "422" in post_op["responses"]
    body = post_op["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/NewMessage"}
    assert doc["components"]["schemas"]["NewMessage"]["properties"]["text"]
    docs = gb.get("/docs")
    assert docs.status_code == 200
    assert "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert gb.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_probes_and_metrics(gb: httpx.Client) -> None:
    assert gb.get("/healthz").status_code == 200
    assert gb.get("/readyz").status_code == 200
    gb.get("/api/messages")
    metrics = gb.get("/metrics").text
    assert 'guestbook_http_requests_total{method="GET",route="/api/messages",status="200"}' in (
        metrics
    )
    assert "guestbook_http_request_duration_seconds_bucket" in metrics
    assert "guestbook_live_clients" in metrics
    assert 'guestbook_store_calls_total{operation="watch",role="follower"}' in metrics


def test_shared_frontend_logs_json_lines(shared_frontend: Frontend, gb: httpx.Client) -> None:
    gb.get("/api/messages?limit=3")
    lines = [json.loads(line) for line in shared_frontend.logs().splitlines() if line.strip()]
    access = [e for e in lines if e.get("path") == "/api/messages"]
    assert access
    assert {"time", "level", "event", "method", "path", "status", "duration_ms", "instance"} <= set(
        access[-1]
    )


def test_fast_path_and_framework_answer_byte_for_byte_alike(gb: httpx.Client, token: str) -> None:
    for i in range(8):
        post(gb, f"{token} same {i}")
    # An unknown parameter sends a request through the framework instead of the fast path.
    for query in ("limit=5", "", "limit=200"):
        fast = gb.get(f"/api/messages?{query}")
        slow = gb.get(f"/api/messages?{query}&via=framework")
        assert fast.content == slow.content
        assert fast.headers["content-type"] == slow.headers["content-type"]
    middle = gb.get("/api/messages?limit=4").json()["next"]
    fast = gb.get(f"/api/messages?limit=3&before={middle}")
    assert fast.content == gb.get(f"/api/messages?limit=3&before={middle}&via=x").content


def test_nothing_is_older_than_the_first_possible_id(gb: httpx.Client) -> None:
    for query in ("before=0-0", "before=0-0&via=framework"):
        response = gb.get(f"/api/messages?{query}")
        assert response.status_code == 200
        assert response.json() == {"messages": [], "next": None}


def test_wrong_method_is_405_naming_every_allowed_one(gb: httpx.Client) -> None:
    response = gb.request("DELETE", "/api/messages")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"
    assert response.headers["content-type"] == "application/problem+json"
