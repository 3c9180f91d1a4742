"""The feed in process: one `Feed` on a `MessageStore` against a real leader and two followers.
A removal leaves its memory and reaches its subscribers, the window is topped up from the store
with one read, the removals it remembers answer a resuming client as the store would, and
removing the newest message is not taken for a store gone back in time."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from conftest import Cluster
from guestbook import feed as feed_module
from guestbook import moderation
from guestbook.feed import KEEP, Feed
from guestbook.messages import MAX_PAGE, Message
from guestbook.store import MessageStore

pytestmark = pytest.mark.anyio

STREAM = "guestbook:messages"


class Calls:
    """The store's observer: calls made, by operation (as the app's metrics count them)."""

    def __init__(self) -> None:
        self.made: Counter[str] = Counter()

    def __call__(self, operation: str, role: str, error: str | None) -> None:
        if error is None:
            self.made[operation] += 1


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
async def store(cluster: Cluster, calls: Calls) -> AsyncIterator[MessageStore]:
    store = MessageStore(
        cluster.leader.url, cluster.follower_urls().split(","), timeout=2, observer=calls
    )
    yield store
    await store.close()


@pytest.fixture
async def feed(store: MessageStore) -> AsyncIterator[Feed]:
    # The smallest window, so that a few hundred messages overflow it.
    feed = Feed(store, keep=KEEP)
    feed.start()
    yield feed
    await feed.stop()


def append(cluster: Cluster, count: int) -> list[str]:
    """`count` messages `message <i>` straight on the leader; their ids, oldest first."""
    pipe = cluster.leader.client().pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(STREAM, {"t": f"message {i}"})
    return [str(i) for i in pipe.execute()]


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def ids_of(messages: list[Message] | None) -> list[str]:
    assert messages is not None, "memory did not answer"
    return [m.id for m in messages]


async def test_a_removed_message_leaves_the_first_page_and_one_read_tops_the_window_up(
    cluster: Cluster, store: MessageStore, feed: Feed, calls: Calls
) -> None:
    ids = append(cluster, 250)
    await until(lambda: feed.head_id == ids[-1] and feed.live)
    assert len(feed.recent) == KEEP
    reads = calls.made["page"]
    victim = ids[-5]

    await moderation.remove(store, victim, by="tests")

    await until(lambda: victim not in ids_of(list(feed.recent)) and len(feed.recent) == KEEP)
    remaining = [i for i in reversed(ids) if i != victim]
    assert ids_of(feed.first_page(MAX_PAGE, None)) == remaining[: MAX_PAGE + 1]
    assert ids_of(feed.first_page(10, None)) == remaining[:11]
    # The message that was just older than the window is in it now, read once.
    assert feed.recent[0].id == remaining[KEEP - 1]
    assert feed.recent[0].text == f"message {ids.index(remaining[KEEP - 1])}"
    assert calls.made["page"] == reads + 1


async def test_many_removals_from_the_window_leave_it_the_newest_that_remain(
    cluster: Cluster, store: MessageStore, feed: Feed
) -> None:
    ids = append(cluster, 300)
    await until(lambda: feed.head_id == ids[-1] and feed.live)
    victims = ids[-150:-10]

    await asyncio.gather(*(moderation.remove(store, i, by="tests") for i in victims))

    remaining = [i for i in reversed(ids) if i not in set(victims)]
    await until(lambda: list(reversed(ids_of(list(feed.recent)))) == remaining[:KEEP])
    assert ids_of(feed.first_page(MAX_PAGE, None)) == remaining[: MAX_PAGE + 1]


async def test_subscribers_hear_of_every_removal_also_of_messages_older_than_memory(
    cluster: Cluster, store: MessageStore, feed: Feed
) -> None:
    ids = append(cluster, 250)
    await until(lambda: feed.head_id == ids[-1] and feed.live)
    heard: list[tuple[list[Message], list[str]]] = []
    feed.subscribe(lambda messages, removed: heard.append((messages, removed)))
    oldest, newest = ids[0], ids[-1]  # the oldest is not in memory

    await moderation.remove(store, oldest, by="tests")
    await moderation.remove(store, newest, by="tests")

    await until(lambda: sum(len(removed) for _, removed in heard) == 2)
    assert [i for _, removed in heard for i in removed] == [oldest, newest]
    assert [m for messages, _ in heard for m in messages] == []
    assert ids_of(feed.first_page(1, None)) == [ids[-2], ids[-3]]


async def test_removing_the_newest_message_does_not_reload_the_feed(
    cluster: Cluster,
    store: MessageStore,
    feed: Feed,
    calls: Calls,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Check the stream for going back in time after every idle read, not every 5 s.
    monkeypatch.setattr(feed_module, "CHECK_EVERY", 0.0)
    ids = append(cluster, 3)
    await until(lambda: feed.head_id == ids[-1] and feed.live)
    version = feed.version

    await moderation.remove(store, ids[-1], by="tests")

    await until(lambda: ids_of(feed.first_page(50, None)) == [ids[1], ids[0]])
    assert feed.version == version + 1
    checks = calls.made["last_id"]
    await until(lambda: calls.made["last_id"] >= checks + 2)
    assert calls.made["removal_head"] == 1  # read by the one sync at start, never again
    assert feed.version == version + 1
    assert ids_of(feed.first_page(50, None)) == [ids[1], ids[0]]
    assert not [r for r in caplog.records if r.name == "guestbook.feed"]


async def test_a_message_posted_after_a_removal_is_published_and_shown_first(
    cluster: Cluster, store: MessageStore, feed: Feed
) -> None:
    ids = append(cluster, 3)
    await until(lambda: feed.head_id == ids[-1] and feed.live)
    heard: list[tuple[list[str], list[str]]] = []
    feed.subscribe(lambda messages, removed: heard.append(([m.id for m in messages], removed)))

    await moderation.remove(store, ids[-1], by="tests")
    later = await store.append("later")

    await until(lambda: feed.head_id == later.id)
    assert [i for messages, _ in heard for i in messages] == [later.id]
    assert [i for _, removed in heard for i in removed] == [ids[-1]]
    assert ids_of(feed.first_page(50, None)) == [later.id, ids[1], ids[0]]


async def test_remembered_removals_answer_a_resume_as_the_store_does_until_forgotten(
    cluster: Cluster, store: MessageStore, feed: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "REMOVALS_KEPT", 2)
    ids = append(cluster, 4)
    await until(lambda: feed.head_id == ids[-1] and feed.live)

    await moderation.remove(store, ids[0], by="tests")
    await until(lambda: feed.is_removed(ids[0]))

    # A client that has seen ids[1] must drop ids[0]; one that has seen nothing, nothing.
    assert feed.removed_since(ids[1]) == ([ids[0]], True)
    assert feed.removed_since(ids[1])[0] == await store.removed_since(ids[1])
    assert feed.removed_since("0-0") == ([], True)

    await moderation.remove(store, ids[2], by="tests")
    await moderation.remove(store, ids[3], by="tests")
    await until(lambda: feed.is_removed(ids[3]))

    # Memory keeps the last two: the removal of ids[0] is the store's to tell now.
    assert not feed.is_removed(ids[0])
    assert feed.removed_since(ids[1]) == ([], False)
    assert await store.removed_since(ids[1]) == [ids[0]]
    # What memory has, and that it is not all: ids[0] went after ids[3] was posted, too.
    assert feed.removed_since(ids[3]) == ([ids[2], ids[3]], False)
    assert await store.removed_since(ids[3]) == [ids[0], ids[2], ids[3]]


async def test_a_feed_started_after_removals_keeps_the_removed_out(
    cluster: Cluster, store: MessageStore, caplog: pytest.LogCaptureFixture
) -> None:
    ids = append(cluster, 5)
    await moderation.remove(store, ids[1], by="tests")
    await moderation.remove(store, ids[4], by="tests")
    caplog.set_level(logging.WARNING)

    feed = Feed(store)
    feed.start()
    try:
        await until(lambda: feed.live and feed.is_removed(ids[4]))
        assert ids_of(feed.first_page(50, None)) == [ids[3], ids[2], ids[0]]
        assert feed.removed_since(ids[4]) == ([ids[1], ids[4]], True)
    finally:
        await feed.stop()
    assert not [r for r in caplog.records if r.name == "guestbook.feed"]
