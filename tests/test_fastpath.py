"""The fast path in process: the app from `create_app`, its lifespan run, real Valkey servers
behind it, no HTTP server in between. Each read it answers must be the framework's answer byte
for byte (a parameter it does not know sends a request through the framework instead), and
whatever it does not answer must reach the framework untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conftest import Cluster, app_in_process, wait_until
from guestbook.app import GuestbookApp

pytestmark = pytest.mark.anyio


@pytest.fixture
async def app(cluster: Cluster) -> AsyncIterator[tuple[GuestbookApp, httpx.AsyncClient]]:
    env = {
        "GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url,
        "GUESTBOOK_REDIS_FOLLOWER_URL": cluster.follower_urls(),
        "GUESTBOOK_RATE_LIMIT": "0",
    }
    async with app_in_process(env) as pair:
        yield pair


async def posted(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    messages = []
    for i in range(count):
        response = await client.post("/api/messages", json={"text": f"message {i}, <b>&</b>"})
        assert response.status_code == 201
        messages.append(response.json())
    return messages


async def live(app: GuestbookApp, newest: str) -> None:
    """Until the feed's memory holds `newest`: then first pages come from memory."""
    deadline = asyncio.get_running_loop().time() + 10
    while app.state.guestbook.feed.head_id != newest or not app.state.guestbook.feed.live:
        assert asyncio.get_running_loop().time() < deadline, "the feed did not catch up"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "path",
    [
        "/api/messages",
        "/api/messages?limit=3",
        "/api/messages?limit=200",
        "/",
        "/guestbook.php?cmd=get",
        "/guestbook.php?cmd=get&key=messages",
        "/guestbook?cmd=get&key=guestbook",
    ],
)
async def test_the_fast_path_answers_the_newest_reads_as_the_framework_does(
    app: tuple[GuestbookApp, httpx.AsyncClient], path: str
) -> None:
    gb, client = app
    messages = await posted(client, 25)
    await live(gb, messages[-1]["id"])
    fast = await client.get(path)
    slow = await client.get(path + ("&" if "?" in path else "?") + "via=framework")
    assert fast.status_code == slow.status_code == 200
    assert fast.content == slow.content
    assert fast.headers["content-type"] == slow.headers["content-type"]
    assert "message 24, <b>&</b>" in fast.text or "message 24, &lt;b&gt;" in fast.text


async def test_the_fast_path_answers_older_pages_as_the_framework_does(
    cluster: Cluster, app: tuple[GuestbookApp, httpx.AsyncClient]
) -> None:
    _, client = app
    messages = await posted(client, 30)
    # Older pages are read from a follower: compare two answers of a settled one.
    for follower in cluster.followers:
        wait_until(lambda f=follower: f.client().xlen("guestbook:messages") == 30)
    middle = messages[12]["id"]
    for path in (f"/api/messages?limit=5&before={middle}", f"/?before={middle}"):
        fast = await client.get(path)
        slow = await client.get(path + "&via=framework")
        assert fast.status_code == 200
        assert fast.content == slow.content
    older = (await client.get(f"/api/messages?limit=5&before={middle}")).json()
    assert [m["id"] for m in older["messages"]] == [m["id"] for m in messages[7:12][::-1]]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("limit=0", 400),
        ("limit=201", 400),
        ("limit=%C2%B2", 400),  # "²": str.isdigit says yes, int() says no
        ("limit=abc", 400),
        ("before=yesterday", 400),
        ("before=%D9%A1-%D9%A0", 400),  # Arabic-Indic digits: not a stream id
        ("before=18446744073709551616-0", 400),
        ("limit=5&limit=6", 200),  # the framework takes the last one
    ],
)
async def test_parameters_the_fast_path_leaves_alone_are_answered_by_the_framework(
    app: tuple[GuestbookApp, httpx.AsyncClient], query: str, status: int
) -> None:
    _, client = app
    response = await client.get(f"/api/messages?{query}")
    assert response.status_code == status, response.text
    if status == 400:
        assert response.headers["content-type"] == "application/problem+json"


async def test_fast_answers_are_counted_under_their_real_route(
    app: tuple[GuestbookApp, httpx.AsyncClient],
) -> None:
    gb, client = app
    messages = await posted(client, 1)
    await live(gb, messages[-1]["id"])
    for path in ("/api/messages", "/", "/guestbook.php?cmd=get"):
        assert (await client.get(path)).status_code == 200
    scrape = (await client.get("/metrics")).text
    for route in ("/api/messages", "/", "/guestbook.php"):
        assert f'{{method="GET",route="{route}",status="200"}}' in scrape


async def test_a_store_error_on_the_fast_path_is_answered_by_the_one_mapping(
    cluster: Cluster, app: tuple[GuestbookApp, httpx.AsyncClient]
) -> None:
    _, client = app
    await posted(client, 1)
    cluster.stop()
    older = await client.get("/api/messages?before=99999999999999-0")
    assert older.status_code == 503
    assert older.headers["content-type"] == "application/problem+json"
    assert older.headers["retry-after"] == "2"
    legacy = await client.get("/guestbook.php?cmd=get")
    assert legacy.status_code == 503
    assert set(legacy.json()) == {"error"}
    browser = await client.get(
        "/api/messages?before=99999999999999-0", headers={"accept": "text/html"}
    )
    assert browser.status_code == 503
    assert browser.headers["content-type"].startswith("text/html")


async def first_events(app: GuestbookApp, path: str, count: int) -> bytes:
    """The stream's first `count` body chunks, read straight off the ASGI app."""
    chunks: list[bytes] = []
    enough = asyncio.Event()
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            if len(chunks) >= count:
                enough.set()

    path_only, _, query = path.partition("?")
    state = {"app": app.state.guestbook}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path_only,
        "raw_path": path_only.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"guestbook.test")],
        "client": ("127.0.0.1", 40000),
        "server": ("guestbook.test", 80),
        "state": state,
    }
    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.wait_for(enough.wait(), 10)
    done.set()
    await asyncio.wait_for(task, 10)
    return b"".join(chunks)


async def test_the_stream_starts_alike_on_the_fast_path_and_through_the_framework(
    app: tuple[GuestbookApp, httpx.AsyncClient],
) -> None:
    gb, client = app
    messages = await posted(client, 5)
    await live(gb, messages[-1]["id"])
    after = messages[1]["id"]
    # The opening (retry hint and store status), then the backlog in one chunk.
    fast = await first_events(gb, f"/api/messages/stream?after={after}", 2)
    slow = await first_events(gb, f"/api/messages/stream?after={after}&via=framework", 2)
    assert fast == slow
    assert [line for line in fast.decode().splitlines() if line.startswith("id: ")] == [
        f"id: {m['id']}" for m in messages[2:]
    ]


# --- the JSON post -----------------------------------------------------------------------------

# Every answer compared is asked for with the same request id, so that header is alike too.
REQUEST_ID = "fastpath-post-parity"
FRAMEWORK = "/api/messages?via=framework"  # a parameter the fast path leaves to the route


def answer(response: httpx.Response, *volatile: str) -> tuple[int, list[tuple[str, str]], str]:
    """Status, every header in order, and body, with what must differ between two posts (the
    new message's id and time, the texts that had to differ to be two posts) made alike."""

    def same(value: str) -> str:
        for word in volatile:
            value = value.replace(word, "<volatile>")
        return value

    headers = [(name, same(value)) for name, value in response.headers.multi_items()]
    return response.status_code, headers, same(response.text)


async def both(
    client: httpx.AsyncClient, volatile: tuple[str, ...] = (), **request: Any
) -> tuple[httpx.Response, httpx.Response]:
    """The same post through the fast path and through the framework, each from a client
    without cookies (a held post's cookie lists the poster's earlier held posts)."""
    headers = {"x-request-id": REQUEST_ID, **request.pop("headers", {})}
    client.cookies.clear()
    fast = await client.post("/api/messages", headers=headers, **request)
    client.cookies.clear()
    slow = await client.post(FRAMEWORK, headers=headers, **request)
    return fast, slow


def message_parts(response: httpx.Response) -> tuple[str, ...]:
    body = response.json()
    return (body["id"], body["created_at"], body["text"]) if "id" in body else ()


async def test_a_good_post_is_answered_alike_on_the_fast_path_and_through_the_framework(
    app: tuple[GuestbookApp, httpx.AsyncClient],
) -> None:
    _, client = app
    headers = {"x-request-id": REQUEST_ID}
    # Two texts: the same text twice from one client would be held as a duplicate.
    fast = await client.post("/api/messages", json={"text": "hello, fast"}, headers=headers)
    slow = await client.post(FRAMEWORK, json={"text": "hello, slow"}, headers=headers)
    assert fast.status_code == slow.status_code == 201
    assert answer(fast, *message_parts(fast)) == answer(slow, *message_parts(slow))
    for response, text in ((fast, "hello, fast"), (slow, "hello, slow")):
        assert response.json()["text"] == text
        assert f"gb_wrote={response.json()['id']}" in response.headers["set-cookie"]
        assert response.headers["x-request-id"] == REQUEST_ID
        assert "content-security-policy" in response.headers
    listed = (await client.get("/api/messages")).json()["messages"]
    assert [m["text"] for m in listed[:2]] == ["hello, slow", "hello, fast"]


@pytest.mark.parametrize(
    ("request_kw", "status"),
    [
        ({"json": {"text": "x" * 501}}, 422),
        ({"json": {"text": ""}}, 422),
        ({"json": {"text": " \n\t "}}, 422),
        ({"json": {"text": "bell \x07"}}, 422),
        ({"json": {"txt": "hello"}}, 422),
        ({"json": ["hello"]}, 422),
        ({"json": {"text": "hello", "website": 3}}, 422),
        ({"content": b'{"text": "hello"', "headers": {"content-type": "application/json"}}, 400),
        ({"content": b'{"text": "\xff"}', "headers": {"content-type": "application/json"}}, 400),
        ({"content": b'{"text": "hello"}', "headers": {"content-type": "text/plain"}}, 415),
        ({"data": {"text": "hello"}}, 415),
        ({"content": b"x" * (17 * 1024), "headers": {"content-type": "application/json"}}, 413),
        ({"json": {"text": "hello"}, "headers": {"idempotency-key": ""}}, 400),
        ({"json": {"text": "hello"}, "headers": {"idempotency-key": "k" * 256}}, 400),
    ],
    ids=[
        "too-long",
        "empty",
        "white-space",
        "control-character",
        "unknown-field",
        "not-an-object",
        "honeypot-not-a-string",
        "bad-json",
        "not-utf8",
        "wrong-content-type",
        "a-form",
        "too-large",
        "empty-idempotency-key",
        "long-idempotency-key",
    ],
)
async def test_a_refused_post_is_answered_alike_on_the_fast_path_and_through_the_framework(
    app: tuple[GuestbookApp, httpx.AsyncClient], request_kw: dict[str, Any], status: int
) -> None:
    _, client = app
    fast, slow = await both(client, **request_kw)
    assert fast.status_code == status, fast.text
    assert answer(fast) == answer(slow)
    assert fast.headers["content-type"] == "application/problem+json"
    assert (await client.get("/api/messages")).json()["messages"] == []


async def test_a_held_post_is_answered_alike_on_the_fast_path_and_through_the_framework(
    app: tuple[GuestbookApp, httpx.AsyncClient],
) -> None:
    _, client = app
    fast, slow = await both(client, json={"text": "buy now", "website": "http://spam.test"})
    assert fast.status_code == 202
    assert fast.json()["status"] == "held"
    assert answer(fast, *message_parts(fast)[:2]) == answer(slow, *message_parts(slow)[:2])
    assert f"gb_held={fast.json()['id']}" in fast.headers["set-cookie"]
    assert (await client.get("/api/messages")).json()["messages"] == []


async def test_an_idempotent_replay_and_conflict_are_answered_alike_on_both_paths(
    app: tuple[GuestbookApp, httpx.AsyncClient],
) -> None:
    _, client = app
    key = {"idempotency-key": "order-42"}
    first = await client.post("/api/messages", json={"text": "once"}, headers=key)
    assert first.status_code == 201
    fast, slow = await both(client, json={"text": "once"}, headers=key)
    assert fast.json() == first.json()
    assert answer(fast) == answer(slow)
    fast, slow = await both(client, json={"text": "twice"}, headers=key)
    assert fast.status_code == 422
    assert answer(fast) == answer(slow)
    assert [m["text"] for m in (await client.get("/api/messages")).json()["messages"]] == ["once"]


async def test_a_rate_limited_post_is_answered_alike_on_both_paths(cluster: Cluster) -> None:
    env = {"GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url, "GUESTBOOK_RATE_LIMIT": "2"}
    async with app_in_process(env) as (_, client):
        for text in ("one", "two"):
            assert (await client.post("/api/messages", json={"text": text})).status_code == 201
        fast, slow = await both(client, json={"text": "three"})
    assert fast.status_code == 429
    # The wait is counted in whole seconds from each request: one may fall a second later.
    wait = (fast.headers["retry-after"], slow.headers["retry-after"])
    assert answer(fast, *wait) == answer(slow, *wait)


async def test_fast_posts_are_counted_under_the_post_route(
    app: tuple[GuestbookApp, httpx.AsyncClient],
) -> None:
    _, client = app
    assert (await client.post("/api/messages", json={"text": "counted"})).status_code == 201
    assert (await client.post("/api/messages", content=b"{")).status_code == 415
    scrape = (await client.get("/metrics")).text
    for status in ("201", "415"):
        sample = f'{{method="POST",route="/api/messages",status="{status}"}} 1.0'
        assert f"guestbook_http_requests_total{sample}" in scrape
    assert "guestbook_messages_posted_total 1.0" in scrape
