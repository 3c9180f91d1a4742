"""Removals over real HTTP: two `guestbook serve` frontends on one leader with two followers, a
message removed on the store (`moderation.remove`, as `DELETE /api/messages/{id}` and
`guestbook remove` do). It is gone from both frontends' first page (API and HTML), older pages,
the legacy `get` and their live clients; a client resuming from before the removal is told of
it; removing the newest message reloads nothing. The time from the removal to every live client
having its `remove` event is measured and printed."""

from __future__ import annotations

import asyncio
import json
import queue
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from conftest import Cluster, Frontend, MakeFrontend, posted, wait_until
from guestbook import moderation
from guestbook.store import MessageStore
from test_live import Event, Stream, metric

STREAM = "guestbook:messages"
# The contract says within a second; polled this long so a slow machine does not fail it.
PATIENCE = 5.0


class Arrivals(queue.Queue[Event | None]):
    """A stream's queue that notes when the reader thread took each `remove` off the socket."""

    def __init__(self) -> None:
        super().__init__()
        self.removed_at: dict[str, float] = {}

    def put(self, item: Event | None, block: bool = True, timeout: float | None = None) -> None:
        if item is not None and item.kind == "remove":
            self.removed_at.setdefault(json.loads(item.data)["id"], time.monotonic())
        super().put(item, block, timeout)


@pytest.fixture
def streams() -> Iterator[Callable[..., Stream]]:
    opened: list[Stream] = []

    def open_stream(frontend: Frontend, query: str = "", **kwargs: Any) -> Stream:
        stream = Stream(frontend, query, read=False, **kwargs)
        stream.items = Arrivals()
        stream.start()
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


@pytest.fixture
def frontends(cluster: Cluster, make_frontend: MakeFrontend) -> tuple[Frontend, Frontend]:
    return make_frontend(cluster), make_frontend(cluster)


def store_of(cluster: Cluster) -> MessageStore:
    return MessageStore(cluster.leader.url, cluster.follower_urls().split(","), timeout=0.5)


def remove(cluster: Cluster, *message_ids: str) -> None:
    """Remove messages as a moderator does, on the store."""

    async def run() -> None:
        store = store_of(cluster)
        try:
            for message_id in message_ids:
                assert await moderation.remove(store, message_id, by="tests", reason="spam")
        finally:
            await store.close()

    asyncio.run(run())


def events(stream: Stream, count: int, timeout: float = 15) -> list[tuple[str, Any]]:
    """The next `count` `message` and `remove` events (comments, retry and status skipped) as
    (kind, data), checking their `id:` lines: a message's id, none for a removal (it must not
    move the client's resume point)."""
    found: list[tuple[str, Any]] = []
    while len(found) < count:
        event = stream.next(timeout)
        assert event is not None, f"the stream ended after {found}"
        if event.kind == "remove":
            assert event.id is None, event
            assert event.data == json.dumps(json.loads(event.data), separators=(",", ":"))
        elif event.kind == "message":
            assert event.id == event.message()["id"]
        else:
            continue
        found.append((event.kind, json.loads(event.data)))
    return found


def removal(message_id: str) -> tuple[str, Any]:
    return ("remove", {"id": message_id})


def message(value: dict[str, Any]) -> tuple[str, Any]:
    return ("message", value)


def api(frontend: Frontend, query: str = "") -> dict[str, Any]:
    response = httpx.get(f"{frontend.url}/api/messages{query}", timeout=10)
    assert response.status_code == 200, response.text
    value = response.json()
    assert isinstance(value, dict)
    return value


def html(frontend: Frontend, query: str = "") -> str:
    response = httpx.get(f"{frontend.url}/{query}", headers={"Accept": "text/html"}, timeout=10)
    assert response.status_code == 200
    return response.text


def legacy(frontend: Frontend) -> list[str]:
    response = httpx.get(f"{frontend.url}/guestbook.php?cmd=get&key=messages", timeout=10)
    assert response.status_code == 200
    data = response.json()["data"]
    assert isinstance(data, str)
    return data.split(",") if data else []


def post_many(frontend: Frontend, count: int, prefix: str = "message") -> list[dict[str, Any]]:
    return [posted(frontend, f"{prefix} {i:02d}") for i in range(count)]


def caught_up(frontends: tuple[Frontend, ...], newest: str) -> None:
    for frontend in frontends:
        wait_until(lambda f=frontend: api(f, "?limit=1")["messages"][0]["id"] == newest)


# --- gone everywhere ----------------------------------------------------------------------


def test_a_removed_message_is_gone_from_every_read_of_both_frontends_and_their_live_clients(
    cluster: Cluster, frontends: tuple[Frontend, Frontend], streams: Callable[..., Stream]
) -> None:
    messages = post_many(frontends[0], 30)
    newest = messages[-1]["id"]
    caught_up(frontends, newest)
    live = [streams(f, f"?after={newest}") for f in frontends for _ in range(2)]
    victim = messages[-3]  # on the first page, and on the page older than the newest
    kept = [m for m in reversed(messages) if m != victim]

    started = time.monotonic()
    remove(cluster, victim["id"])

    def gone_from(frontend: Frontend) -> bool:
        page = html(frontend)
        older_page = html(frontend, f"?before={newest}")
        return (
            api(frontend, "?limit=10") == {"messages": kept[:10], "next": kept[9]["id"]}
            and api(frontend, f"?before={newest}")["messages"] == kept[1:]
            and victim["text"] not in page
            and kept[19]["text"] in page  # the next older message took its place (20 shown)
            and victim["text"] not in older_page
            and kept[1]["text"] in older_page
            and legacy(frontend) == [m["text"] for m in reversed(kept)]
        )

    for frontend in frontends:
        wait_until(lambda f=frontend: gone_from(f), timeout=PATIENCE)
    elapsed = time.monotonic() - started
    print(f"\nevery read of both frontends checked clean {elapsed:.3f} s after the remove call")
    for stream in live:
        assert events(stream, 1, timeout=PATIENCE) == [removal(victim["id"])]


def test_a_message_posted_after_a_removal_reaches_live_clients_after_the_remove_event(
    cluster: Cluster, frontends: tuple[Frontend, Frontend], streams: Callable[..., Stream]
) -> None:
    messages = post_many(frontends[0], 3)
    caught_up(frontends, messages[-1]["id"])
    live = [streams(f, f"?after={messages[-1]['id']}") for f in frontends]

    remove(cluster, messages[0]["id"])
    later = posted(frontends[1], "later")

    for stream in live:
        assert events(stream, 2) == [removal(messages[0]["id"]), message(later)]


# --- resuming -----------------------------------------------------------------------------


def test_a_client_resuming_from_before_a_removal_is_told_of_it_first_on_either_frontend(
    cluster: Cluster, frontends: tuple[Frontend, Frontend], streams: Callable[..., Stream]
) -> None:
    messages = post_many(frontends[0], 5)
    caught_up(frontends, messages[-1]["id"])
    seen = messages[2]["id"]  # the client had messages 0-2 and lost its connection
    before = [metric(f, 'guestbook_store_calls_total{operation="removed_since"') for f in frontends]

    # One it has (it must drop it), one it never had (it must never get it).
    remove(cluster, messages[1]["id"], messages[3]["id"])
    caught_up(frontends, messages[-1]["id"])
    for frontend in frontends:
        wait_until(lambda f=frontend: len(api(f)["messages"]) == 3)
    resumed = [streams(f, last_event_id=seen) for f in frontends]
    by_query = [streams(f, f"?after={seen}") for f in frontends]
    later = posted(frontends[1], "later")

    for stream in (*resumed, *by_query):
        assert events(stream, 3) == [
            removal(messages[1]["id"]),
            message(messages[4]),
            message(later),
        ]
    # The feeds remembered the removals: no store read was needed to tell the clients.
    after = [metric(f, 'guestbook_store_calls_total{operation="removed_since"') for f in frontends]
    assert after == before


def test_a_client_resuming_from_before_what_the_feed_remembers_is_told_by_the_store(
    cluster: Cluster, frontends: tuple[Frontend, Frontend], streams: Callable[..., Stream]
) -> None:
    a, _ = frontends
    messages = post_many(a, 2)
    remove(cluster, messages[0]["id"])
    # More removals than a feed remembers (1000), of messages newer than the client has.
    leader = cluster.leader.client()
    pipe = leader.pipeline(transaction=False)
    for i in range(1001):
        pipe.xadd(STREAM, {"t": f"filler {i}"})
    remove(cluster, *[str(i) for i in pipe.execute()])
    tail = posted(a, "tail")
    caught_up(frontends, tail["id"])
    store_reads = metric(a, 'guestbook_store_calls_total{operation="removed_since"')

    stream = streams(a, last_event_id=messages[1]["id"])

    assert events(stream, 2) == [removal(messages[0]["id"]), message(tail)]
    assert metric(a, 'guestbook_store_calls_total{operation="removed_since"') == store_reads + 1


# --- the newest message -------------------------------------------------------------------


def test_removing_the_newest_message_shows_the_previous_one_and_reloads_nothing(
    cluster: Cluster, frontends: tuple[Frontend, Frontend], streams: Callable[..., Stream]
) -> None:
    messages = post_many(frontends[0], 3)
    caught_up(frontends, messages[-1]["id"])
    live = [streams(f, f"?after={messages[-1]['id']}") for f in frontends]
    checks = [metric(f, 'guestbook_store_calls_total{operation="last_id"') for f in frontends]

    remove(cluster, messages[-1]["id"])

    for frontend, stream, checked in zip(frontends, live, checks, strict=True):
        wait_until(lambda f=frontend: api(f)["messages"] == messages[1::-1], timeout=PATIENCE)
        assert events(stream, 1) == [removal(messages[-1]["id"])]
        # Until each feed has checked the stream for going back in time (every 5 s when idle)
        # at least once since: it must not have reloaded (a sync reads the removal head).
        wait_until(
            lambda f=frontend, c=checked: (
                metric(f, 'guestbook_store_calls_total{operation="last_id"') > c
            ),
            timeout=15,
        )
        assert metric(frontend, 'guestbook_store_calls_total{operation="removal_head"') == 1
        assert "older than this frontend's copy" not in frontend.logs()
        assert api(frontend)["messages"] == messages[1::-1]
        assert "message 02" not in html(frontend)
        assert "message 01" in html(frontend)


# --- how long it takes --------------------------------------------------------------------


def test_every_live_client_of_both_frontends_gets_each_of_twenty_removals(
    cluster: Cluster, frontends: tuple[Frontend, Frontend], streams: Callable[..., Stream]
) -> None:
    messages = post_many(frontends[0], 20)
    caught_up(frontends, messages[-1]["id"])
    live = [streams(f, "?after=0-0") for f in frontends for _ in range(2)]
    for stream in live:
        assert events(stream, 20) == [message(m) for m in messages]
    arrivals = [stream.items for stream in live]
    assert all(isinstance(a, Arrivals) for a in arrivals)
    removed_at = [a.removed_at for a in arrivals if isinstance(a, Arrivals)]
    latencies: list[float] = []
    calls: list[float] = []

    with asyncio.Runner() as runner:
        store = runner.run(_open(cluster))
        try:
            for victim in messages:
                started = time.monotonic()
                runner.run(moderation.remove(store, victim["id"], by="tests"))
                calls.append(time.monotonic() - started)
                deadline = started + PATIENCE
                while not all(victim["id"] in r for r in removed_at):
                    assert time.monotonic() < deadline, "a live client missed a removal"
                    time.sleep(0.0005)
                latencies.append(max(r[victim["id"]] for r in removed_at) - started)
        finally:
            runner.run(store.close())

    for frontend in frontends:
        assert api(frontend)["messages"] == []
    ms = [s * 1000 for s in latencies]
    print(
        f"\nremove call -> all {len(live)} live clients on 2 frontends, {len(ms)} removals: "
        f"median {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms, min {min(ms):.1f} ms "
        f"(the remove call itself: median {statistics.median(calls) * 1000:.1f} ms)"
    )


async def _open(cluster: Cluster) -> MessageStore:
    return store_of(cluster)
