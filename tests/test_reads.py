"""Reads from the feed's memory, in process against a real leader and two followers: every page
within the window equals the page the store holds, across removals and new posts; a page
beyond the window is read from the store and is just as right; and reading the first page
costs the store nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from starlette.responses import Response

from conftest import Cluster, app_in_process
from guestbook import moderation
from guestbook.app import GuestbookApp
from guestbook.feed import WINDOW
from guestbook.pages import PAGE_SIZE, render_page
from guestbook.reads import WROTE_COOKIE, WROTE_MAX_AGE, remember_write
from guestbook.state import AnswerCache, AppState
from guestbook.store import MessageStore

pytestmark = pytest.mark.anyio

STREAM = "guestbook:messages"
# Store operations the app makes whether or not anyone reads: the feed's blocking read and
# its head check, and this frontend's presence record.
BACKGROUND = {"watch", "last_id", "presence"}


def env_for(cluster: Cluster) -> dict[str, str]:
    return {
        "GUESTBOOK_REDIS_LEADER_URL": cluster.leader.url,
        "GUESTBOOK_REDIS_FOLLOWER_URL": cluster.follower_urls(),
        "GUESTBOOK_RATE_LIMIT": "0",
    }


def seed(cluster: Cluster, count: int) -> list[str]:
    """`count` messages straight on the leader, as the benchmark seeds them; ids oldest first."""
    ids: list[str] = []
    client = cluster.leader.client()
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(count, start + 5000)):
            pipe.xadd(STREAM, {"t": f"message {i}, with a comma"})
        ids += [str(i) for i in pipe.execute()]
    return ids


@pytest.fixture
async def truth(cluster: Cluster) -> AsyncIterator[MessageStore]:
    """The store read on the leader alone: what every page must equal."""
    store = MessageStore(cluster.leader.url, (), timeout=5)
    yield store
    await store.close()


async def until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def state_of(app: GuestbookApp) -> AppState:
    state: AppState = app.state.guestbook
    return state


def misses(state: AppState) -> float:
    value = state.metrics.registry.get_sample_value(
        "guestbook_page_cache_total", {"result": "miss"}
    )
    return value or 0.0


def store_calls(state: AppState) -> dict[str, float]:
    """Store calls made so far, by operation."""
    calls: dict[str, float] = {}
    for metric in state.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "guestbook_store_calls_total":
                operation = sample.labels["operation"]
                calls[operation] = calls.get(operation, 0.0) + sample.value
    return calls


async def caught_up(cluster: Cluster, state: AppState, newest: str, removed: list[str]) -> None:
    """Until the followers hold the leader's data and the feed has read `newest` and every
    removal in `removed`."""
    await asyncio.to_thread(lambda: [f.wait_synced() for f in cluster.followers])
    await until(
        lambda: (
            state.feed.live
            and state.feed.head_id == newest
            and all(state.feed.is_removed(i) for i in removed)
        )
    )


async def assert_pages_equal_the_store(
    client: httpx.AsyncClient, truth: MessageStore, cursors: list[str], limit: int
) -> None:
    for before in cursors:
        expected = await truth.page(limit, before)
        answer = await client.get("/api/messages", params={"limit": limit, "before": before})
        assert answer.status_code == 200
        assert answer.json() == {
            "messages": [m.as_dict() for m in expected.messages],
            "next": expected.next,
        }, f"the page before {before}"


async def test_pages_within_the_window_come_from_memory_and_equal_the_stores_across_removals_and_posts(  # noqa: E501
    cluster: Cluster, truth: MessageStore
) -> None:
    ids = seed(cluster, 1200)
    async with app_in_process(env_for(cluster)) as (app, client):
        state = state_of(app)
        await caught_up(cluster, state, ids[-1], [])
        before_reads = misses(state)

        cursors = ids[::37] + ids[:3] + ids[-3:]
        await assert_pages_equal_the_store(client, truth, cursors, 50)
        await assert_pages_equal_the_store(client, truth, ids[::101], 200)
        assert misses(state) == before_reads, "a page within the window was read from the store"

        # Removals inside pages and at their edges, then new posts on top.
        removed = [ids[5], ids[600], ids[601], ids[1199], ids[1000]]
        for message_id in removed:
            assert await moderation.remove(truth, message_id, by="tests") is not None
        newest = ""
        for i in range(30):
            response = await client.post("/api/messages", json={"text": f"new {i}"})
            assert response.status_code == 201
            newest = response.json()["id"]
        await caught_up(cluster, state, newest, removed)
        before_reads = misses(state)

        await assert_pages_equal_the_store(client, truth, cursors + removed + [newest], 50)
        assert misses(state) == before_reads, "a page within the window was read from the store"


async def test_the_older_html_page_from_memory_equals_the_page_of_the_stores_messages(
    cluster: Cluster, truth: MessageStore
) -> None:
    ids = seed(cluster, 300)
    async with app_in_process(env_for(cluster)) as (app, client):
        state = state_of(app)
        await caught_up(cluster, state, ids[-1], [])
        before_reads = misses(state)
        for before in [ids[-1], ids[150], ids[25], ids[0]]:
            expected = await truth.page(PAGE_SIZE + 1, before)
            answer = await client.get("/", params={"before": before})
            assert answer.status_code == 200
            assert answer.text == render_page(state, expected.messages, before=before)
        assert misses(state) == before_reads


async def test_a_page_beyond_the_window_is_read_from_the_store_and_is_right(
    cluster: Cluster, truth: MessageStore
) -> None:
    ids = seed(cluster, WINDOW + 400)
    async with app_in_process(env_for(cluster)) as (app, client):
        state = state_of(app)
        await caught_up(cluster, state, ids[-1], [])
        oldest_in_memory = len(ids) - WINDOW
        # Beyond the window, and straddling its lower edge: the store answers.
        cursors = [ids[10], ids[300], ids[oldest_in_memory], ids[oldest_in_memory + 30]]
        before_reads = misses(state)
        await assert_pages_equal_the_store(client, truth, cursors, 50)
        assert misses(state) == before_reads + len(cursors)
        # Just inside it: memory answers.
        await assert_pages_equal_the_store(client, truth, [ids[oldest_in_memory + 51]], 50)
        assert misses(state) == before_reads + len(cursors)


async def test_a_poster_reads_their_own_message_on_an_older_page_too(
    cluster: Cluster, truth: MessageStore
) -> None:
    ids = seed(cluster, 100)
    async with app_in_process(env_for(cluster)) as (app, client):
        state = state_of(app)
        await caught_up(cluster, state, ids[-1], [])
        cluster.followers[0].hang()
        cluster.followers[1].hang()
        try:
            response = await client.post("/api/messages", json={"text": "my own"})
            assert response.status_code == 201
            mine = response.json()["id"]
            # The feed cannot have read it (its followers are stopped): memory must not answer
            # a page that should hold it, whatever path the answer takes.
            page = await client.get("/api/messages", params={"limit": 5})
            assert page.json()["messages"][0]["id"] == mine
        finally:
            cluster.followers[0].resume()
            cluster.followers[1].resume()
        await caught_up(cluster, state, mine, [])
        await assert_pages_equal_the_store(client, truth, [ids[50], mine], 20)


async def test_first_page_reads_make_no_store_calls(cluster: Cluster) -> None:
    ids = seed(cluster, 500)
    reads = 1000
    async with app_in_process(env_for(cluster)) as (app, client):
        state = state_of(app)
        await caught_up(cluster, state, ids[-1], [])
        before = store_calls(state)
        for i in range(reads):
            path = ("/api/messages", "/", "/api/messages?limit=20", "/guestbook.php?cmd=get")[i % 4]
            assert (await client.get(path)).status_code == 200
        after = store_calls(state)
        caused = {
            op: after[op] - before.get(op, 0.0)
            for op in after
            if op not in BACKGROUND and after[op] != before.get(op, 0.0)
        }
        assert caused == {}, f"{reads} reads from memory made store calls"


async def test_the_answers_kept_stay_bounded_whatever_cursors_clients_send(
    cluster: Cluster, truth: MessageStore
) -> None:
    ids = seed(cluster, 2 * AnswerCache.MAX_ANSWERS)
    async with app_in_process(env_for(cluster)) as (app, client):
        state = state_of(app)
        await caught_up(cluster, state, ids[-1], [])
        for before in ids[1:]:
            answer = await client.get("/api/messages", params={"limit": 1, "before": before})
            assert answer.status_code == 200
            assert len(state.answers) <= AnswerCache.MAX_ANSWERS
        # What is kept is still right: the same cursor twice, the second from the cache.
        await assert_pages_equal_the_store(client, truth, [ids[-2], ids[-2], ids[7], ids[7]], 1)


def test_the_read_your_writes_cookie_is_the_one_starlette_would_set() -> None:
    ours, theirs = Response(), Response()
    remember_write(ours, "1764156357123-0")
    theirs.set_cookie(
        WROTE_COOKIE, "1764156357123-0", max_age=WROTE_MAX_AGE, httponly=True, samesite="lax"
    )
    assert ours.raw_headers == theirs.raw_headers
