"""Hostile and odd input, in process against real servers: each a clear 4xx that stores
nothing, never a 500; HEAD answered like GET without a body; a client that leaves is no
server error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from conftest import Cluster, app_in_process

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    env = {"GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url, "GUESTBOOK_RATE_LIMIT": "0"}
    async with app_in_process(env) as (_, client):
        yield client


def stored(cluster: Cluster) -> int:
    return int(cluster.leader.client().xlen("guestbook:messages"))


@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    [
        ("GET", "/guestbook.php?cmd=set&key=messages&value=%FF", {}),
        ("GET", "/guestbook.php?cmd=set&value=a,%C3", {}),
        (
            "POST",
            "/",
            {
                "content": b"text=%FF",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
        ),
        (
            "POST",
            "/api/messages",
            {"content": b'{"text": "\xff"}', "headers": {"content-type": "application/json"}},
        ),
        (
            "POST",
            "/api/messages",
            {
                "content": b"[" * 5000 + b"]" * 5000,
                "headers": {"content-type": "application/json"},
            },
        ),
    ],
)
async def test_invalid_utf8_and_absurd_nesting_are_400_and_store_nothing(
    client: httpx.AsyncClient, cluster: Cluster, method: str, url: str, kwargs: dict[str, object]
) -> None:
    response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 400, response.text
    assert stored(cluster) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api/messages",
        "/healthz",
        "/readyz",
        "/guestbook.php?cmd=get",
        "/api/status",
        "/metrics",
    ],
)
async def test_head_answers_like_get_without_a_body(client: httpx.AsyncClient, path: str) -> None:
    get = await client.get(path)
    head = await client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert "content-security-policy" in head.headers


async def test_a_wrong_method_names_every_method_the_path_allows(
    client: httpx.AsyncClient,
) -> None:
    page = await client.request("PUT", "/")
    assert page.status_code == 405
    assert page.headers["allow"] == "GET, HEAD, POST"
    api = await client.request("PATCH", "/api/messages")
    assert api.headers["allow"] == "GET, HEAD, POST"


async def test_a_client_that_leaves_mid_body_is_no_server_error(cluster: Cluster) -> None:
    env = {"GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url, "GUESTBOOK_RATE_LIMIT": "0"}
    async with app_in_process(env) as (app, client):
        sent: list[dict[str, object]] = []
        messages = iter(
            [
                {"type": "http.request", "body": b'{"text": "hal', "more_body": True},
                {"type": "http.disconnect"},
            ]
        )

        async def receive() -> dict[str, object]:
            return next(messages)

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/api/messages",
            "raw_path": b"/api/messages",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"40")],
            "client": ("127.0.0.1", 40000),
            "server": ("guestbook.test", 80),
            "scheme": "http",
            "http_version": "1.1",
            "asgi": {"version": "3.0"},
            "state": {"app": app.state.guestbook},
        }
        await app(scope, receive, send)  # type: ignore[arg-type]
        scrape = (await client.get("/metrics")).text
    assert sent[0]["status"] == 499
    assert 'route="/api/messages",status="500"' not in scrape
    assert 'method="POST",route="/api/messages",status="499"' in scrape
    assert stored(cluster) == 0
