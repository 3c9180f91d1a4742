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
