"""The store on its own, in process, against a real leader and followers: appends, pages,
read-your-writes, follower fallback, and bursts beyond its pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conftest import Cluster
from guestbook.errors import InvalidCursor, LeaderUnavailable
from guestbook.store import COOL_DOWN, MAX_PAGE, POOL_SIZE, MessageStore

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(cluster: Cluster) -> AsyncIterator[MessageStore]:
    store = MessageStore(cluster.leader.url, cluster.follower_urls().split(","), timeout=0.5)
    yield store
    await store.close()


async def test_a_burst_larger_than_the_pool_waits_instead_of_failing(cluster: Cluster) -> None:
    writers = POOL_SIZE * 4
    store = MessageStore(cluster.leader.url, cluster.follower_urls().split(","), timeout=5)
    try:
        messages = await asyncio.gather(*(store.append(f"m{i}") for i in range(writers)))
        page = await store.page(200)
        assert len(page.messages) == 200
    finally:
        await store.close()
    assert len({m.id for m in messages}) == writers
    assert cluster.leader.client().xlen("guestbook:messages") == writers


async def test_pages_are_newest_first_and_next_leads_to_the_older_ones(cluster: Cluster) -> None:
    # The leader alone: an older page is read from a follower, which may not have caught up.
    store = MessageStore(cluster.leader.url, timeout=0.5)
    written = [await store.append(f"message {i}") for i in range(5)]
    first = await store.page(2, must_include=written[-1].id)
    assert [m.text for m in first.messages] == ["message 4", "message 3"]
    assert first.next == written[3].id
    second = await store.page(2, before=first.next, must_include=written[-1].id)
    assert [m.text for m in second.messages] == ["message 2", "message 1"]
    last = await store.page(2, before=second.next, must_include=written[-1].id)
    await store.close()
    assert [m.text for m in last.messages] == ["message 0"]
    assert last.next is None


async def test_a_page_is_capped_at_the_largest_page(store: MessageStore) -> None:
    for i in range(MAX_PAGE + 5):
        await store.append(f"m{i}")
    page = await store.page(10_000)
    assert len(page.messages) == MAX_PAGE


async def test_a_malformed_cursor_is_refused_before_any_store_call(store: MessageStore) -> None:
    with pytest.raises(InvalidCursor):
        await store.page(10, before="yesterday")


async def test_the_writer_sees_its_write_though_every_follower_lags(
    cluster: Cluster, store: MessageStore
) -> None:
    for follower in cluster.followers:
        follower.hang()
    try:
        message = await store.append("mine")
        page = await store.page(5, must_include=message.id)
    finally:
        for follower in cluster.followers:
            follower.resume()
    assert page.messages[0].id == message.id
    assert page.source == "leader"


async def test_reads_fall_back_to_the_leader_when_every_follower_is_gone(
    cluster: Cluster, store: MessageStore
) -> None:
    await store.append("kept")
    for follower in cluster.followers:
        follower.kill()
    page = await store.page(5)
    assert [m.text for m in page.messages] == ["kept"]
    assert page.source == "leader"


async def test_a_dead_leader_makes_appends_raise_leader_unavailable(
    cluster: Cluster, store: MessageStore
) -> None:
    cluster.leader.kill()
    with pytest.raises(LeaderUnavailable):
        await store.append("lost?")


async def test_after_a_hung_followers_cool_down_one_read_probes_it_and_the_rest_wait(
    cluster: Cluster,
) -> None:
    # One follower in this store, so the observer's role names the server of every call.
    follower = cluster.followers[0]
    calls: list[tuple[str, str, str | None]] = []
    store = MessageStore(
        cluster.leader.url,
        [follower.url],
        timeout=1.0,
        observer=lambda op, role, error: calls.append((op, role, error)),
    )
    burst = 16

    def follower_reads() -> int:
        return sum(1 for op, role, error in calls if role == "follower" and error is None)

    try:
        await store.append("m")
        follower.hang()
        await store.count()  # times out on the follower, answered by the leader
        assert follower_reads() == 1
        await asyncio.sleep(COOL_DOWN + 0.2)

        calls.clear()
        counts = await asyncio.gather(*(store.count() for _ in range(burst)))
        assert counts == [1] * burst
        # One probe went to the hung follower; the other reads went to the leader meanwhile.
        assert follower_reads() == 1
        assert sum(1 for _, role, _ in calls if role == "leader") == burst

        follower.resume()
        await asyncio.sleep(COOL_DOWN + 0.2)
        calls.clear()
        await store.count()  # the probe, answered now
        await asyncio.gather(*(store.count() for _ in range(burst)))
        assert follower_reads() == 1 + burst
    finally:
        follower.resume()
        await store.close()
