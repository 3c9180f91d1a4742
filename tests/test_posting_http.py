"""Posting through the web, in process against real servers: held posts (pre-moderation and
each spam check) answered 202 and shown only to their poster, the rate limit shared by
frontends, the client named by trusted proxies only, and retries made safe by Idempotency-Key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest

from conftest import Cluster, app_in_process
from guestbook import moderation
from guestbook.store import MessageStore

pytestmark = pytest.mark.anyio


def env_for(cluster: Cluster, **extra: str) -> dict[str, str]:
    return {
        "GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url,
        "GUESTBOOK_REDIS_FOLLOWER_URL": cluster.follower_urls(),
        "GUESTBOOK_RATE_LIMIT": "0",
        **extra,
    }


@pytest.fixture
async def store(cluster: Cluster) -> AsyncIterator[MessageStore]:
    store = MessageStore(cluster.leader.url, timeout=2)
    yield store
    await store.close()


def stored(cluster: Cluster) -> list[str]:
    return [f["t"] for _, f in cluster.leader.client().xrange("guestbook:messages")]


def queued(cluster: Cluster) -> list[tuple[str, str]]:
    return [(f["t"], f["reason"]) for _, f in cluster.leader.client().xrange("guestbook:held")]


async def test_pre_moderation_holds_every_post_and_shows_it_to_its_poster_only(
    cluster: Cluster,
) -> None:
    async with app_in_process(env_for(cluster, GUESTBOOK_MODERATION="pre")) as (_, poster):
        held = await poster.post("/api/messages", json={"text": "please approve me"})
        assert held.status_code == 202
        assert held.json()["status"] == "held"
        assert held.json()["text"] == "please approve me"
        mine = await poster.get("/")
        assert "please approve me" in mine.text
        assert "Awaiting approval" in mine.text
        async with httpx.AsyncClient(
            transport=poster._transport, base_url="http://guestbook.test"
        ) as stranger:
            theirs = await stranger.get("/")
            assert "please approve me" not in theirs.text
            api = (await stranger.get("/api/messages")).json()
            assert api["messages"] == []
    assert stored(cluster) == []
    assert queued(cluster) == [("please approve me", "pre-moderation")]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"text": "a normal text", "website": "http://spam.example"}, "honeypot"),
        ({"text": "see http://a.example https://b.example www.c.example"}, "links"),
        ({"text": "Buy CHEAP pills now"}, "blocked-pattern"),
    ],
)
async def test_each_spam_check_holds_the_post_answered_like_a_held_post(
    cluster: Cluster, store: MessageStore, body: dict[str, str], reason: str
) -> None:
    await moderation.block_add(store, "cheap pills")
    async with app_in_process(env_for(cluster)) as (_, client):
        response = await client.post("/api/messages", json=body)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "held"
    assert stored(cluster) == []
    assert queued(cluster) == [(body["text"], reason)]
    assert [e.action for e in await moderation.audit(store)] == ["hold"]


async def test_the_same_text_twice_from_one_client_is_held_as_a_duplicate(
    cluster: Cluster,
) -> None:
    async with app_in_process(env_for(cluster)) as (_, client):
        assert (await client.post("/api/messages", json={"text": "hello there"})).status_code == 201
        again = await client.post("/api/messages", json={"text": "hello there"})
        assert again.status_code == 202
    assert stored(cluster) == ["hello there"]
    assert queued(cluster) == [("hello there", "duplicate")]


async def test_a_form_post_caught_by_the_honeypot_redirects_and_is_held(cluster: Cluster) -> None:
    async with app_in_process(env_for(cluster)) as (_, client):
        response = await client.post("/", data={"text": "hi from a bot", "website": "x"})
        assert response.status_code == 303
        assert "Awaiting approval" in (await client.get("/")).text
    assert queued(cluster) == [("hi from a bot", "honeypot")]


async def test_a_legacy_set_is_held_the_same_way_and_answered_as_usual(cluster: Cluster) -> None:
    async with app_in_process(env_for(cluster, GUESTBOOK_MODERATION="pre")) as (_, client):
        response = await client.get("/guestbook.php", params={"cmd": "set", "value": "a,b,new"})
        assert response.status_code == 200
        assert response.json() == {"message": "Updated"}
        assert (await client.get("/guestbook.php", params={"cmd": "get"})).json() == {"data": ""}
    assert queued(cluster) == [("new", "pre-moderation")]


async def test_the_rate_limit_counts_a_client_across_frontends(cluster: Cluster) -> None:
    env = env_for(cluster, GUESTBOOK_RATE_LIMIT="4")
    async with AsyncExitStack() as stack:
        clients = [(await stack.enter_async_context(app_in_process(env)))[1] for _ in range(2)]
        statuses = [
            (await clients[i % 2].post("/api/messages", json={"text": f"post {i}"})).status_code
            for i in range(6)
        ]
        refused = await clients[0].post("/api/messages", json={"text": "one more"})
    assert statuses == [201, 201, 201, 201, 429, 429]
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["detail"].startswith("Too many posts: at most 4 a minute.")
    assert len(stored(cluster)) == 4


async def test_x_forwarded_for_names_the_client_only_behind_a_trusted_proxy(
    cluster: Cluster,
) -> None:
    """The in-process client's socket address is 127.0.0.1: a proxy when trusted."""

    async def statuses(env: dict[str, str], forwarded_for: list[str]) -> list[int]:
        async with app_in_process(env) as (_, client):
            return [
                (
                    await client.post(
                        "/api/messages",
                        json={"text": f"from {who} {i}"},
                        headers={"X-Forwarded-For": f"203.0.113.99, {who}"},
                    )
                ).status_code
                for i, who in enumerate(forwarded_for)
            ]

    limited = env_for(cluster, GUESTBOOK_RATE_LIMIT="1")
    # Not trusted: the header is ignored, every post is the peer's, and the second is refused.
    assert await statuses(limited, ["198.51.100.1", "198.51.100.2"]) == [201, 429]
    cluster.leader.client().flushall()
    # Trusted: each forwarded client has a limit of its own; the left-most hop (which the
    # client wrote itself) is not believed.
    trusted = {**limited, "GUESTBOOK_TRUSTED_PROXIES": "127.0.0.0/8"}
    assert await statuses(trusted, ["198.51.100.1", "198.51.100.2", "198.51.100.1"]) == [
        201,
        201,
        429,
    ]


async def test_a_retry_with_the_same_idempotency_key_answers_the_same_message(
    cluster: Cluster,
) -> None:
    async with app_in_process(env_for(cluster)) as (_, client):
        headers = {"Idempotency-Key": "4b8d0d7e-2f0e-4f8a-9d1c-0d0c2c1e7a55"}
        first = await client.post("/api/messages", json={"text": "once"}, headers=headers)
        retry = await client.post("/api/messages", json={"text": "once"}, headers=headers)
        other = await client.post("/api/messages", json={"text": "once"}, headers={})
        bad = await client.post(
            "/api/messages", json={"text": "x"}, headers={"Idempotency-Key": "k" * 300}
        )
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert other.status_code == 202  # without the key it is a second, duplicate post
    assert bad.status_code == 400
    assert stored(cluster) == ["once"]


async def test_posts_that_find_the_block_list_due_share_one_read_of_it(cluster: Cluster) -> None:
    async with app_in_process(env_for(cluster)) as (app, client):
        state = app.state.guestbook
        cluster.leader.client().sadd("guestbook:blocked", "casino")

        def reads_of_the_list() -> float:
            return sum(
                sample.value
                for metric in state.metrics.registry.collect()
                for sample in metric.samples
                if sample.name == "guestbook_store_calls_total"
                and sample.labels["operation"] == "blocked"
            )

        state.blocklist_until = 0.0  # due now
        before = reads_of_the_list()
        answers = await asyncio.gather(
            *(client.post("/api/messages", json={"text": f"casino {i}"}) for i in range(20)),
            *(client.post("/api/messages", json={"text": f"hello {i}"}) for i in range(20)),
        )
        assert reads_of_the_list() - before == 1
        # Every one of them was judged by the list read: the 20 with the pattern held.
        assert [a.status_code for a in answers] == [202] * 20 + [201] * 20
        assert state.blocklist_read is None
