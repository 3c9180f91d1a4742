"""The store on its own, against a real leader and followers: bursts beyond its pool."""

from __future__ import annotations

import asyncio

from conftest import Cluster
from guestbook.store import POOL_SIZE, MessageStore


def test_a_burst_larger_than_the_pool_waits_instead_of_failing(cluster: Cluster) -> None:
    writers = POOL_SIZE * 4

    async def burst() -> list[str]:
        store = MessageStore(cluster.leader.url, cluster.follower_urls().split(","), timeout=5)
        try:
            messages = await asyncio.gather(*(store.append(f"m{i}") for i in range(writers)))
            page = await store.page(200)
            assert len(page.messages) == 200
        finally:
            await store.close()
        return [m.id for m in messages]

    ids = asyncio.run(burst())
    assert len(set(ids)) == writers
    assert cluster.leader.client().xlen("guestbook:messages") == writers
