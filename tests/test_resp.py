"""Commands packed by hand and exchanged on a pooled connection (the posts' path), against a
real server: packed as redis-py packs them, every reply in its place, errors included, and a
connection that dies between two exchanges replaced without the caller seeing it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from conftest import Cluster
from guestbook import resp

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Redis]:
    # Retrying once, as the store's clients do.
    client = Redis.from_url(cluster.leader.url, decode_responses=True, retry=Retry(NoBackoff(), 1))
    yield client
    await client.aclose()


def test_a_command_is_packed_as_redis_py_packs_it() -> None:
    parts = ("EVALSHA", "ab" * 20, "2", "guestbook:k", "", "héllo, wörld\r\n$3\r\n", "42")
    assert resp.command(*parts) == b"".join(Connection().pack_command(*parts))
    assert resp.header(len(parts)) + resp.bulk(*parts[:3]) + resp.bulk(*parts[3:]) == (
        resp.command(*parts)
    )


async def test_every_reply_comes_back_in_its_place_and_errors_take_theirs(client: Redis) -> None:
    packed = b"".join([
        resp.command("SET", "k", "v"),
        resp.command("EVALSHA", "0" * 40, "0"),
        resp.command("INCR", "k"),
        resp.command("GET", "k"),
    ])  # fmt: skip
    replies = await resp.exchange(client, packed, 4)
    assert replies[0] == "OK"
    assert isinstance(replies[1], NoScriptError)
    assert isinstance(replies[2], ResponseError)
    assert replies[3] == "v"
    # Nothing left unread on the connection: the next user of it gets its own answer.
    assert await resp.exchange(client, resp.command("GET", "k"), 1) == ["v"]
    assert await client.get("k") == "v"


async def test_a_connection_killed_between_exchanges_is_replaced(
    client: Redis, cluster: Cluster
) -> None:
    assert await resp.exchange(client, resp.command("PING"), 1) == ["PONG"]
    admin = Redis.from_url(cluster.leader.url)
    try:
        # Every client but the admin's own: the pooled connection the exchange used.
        assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
        # The pooled connection is dead; the exchange reconnects once and answers.
        assert await resp.exchange(client, resp.command("PING"), 1) == ["PONG"]
    finally:
        await admin.aclose()
