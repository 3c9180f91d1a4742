"""Posting through the store, in process, against real servers: the rate limit shared by every
frontend, duplicates, idempotent retries (after a WAIT shortfall, a stalled leader, a leader
restarted from its file), and what one post costs in round trips."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from conftest import Cluster, RedisServer, wait_until
from guestbook import moderation
from guestbook.errors import (
    IdempotencyConflict,
    LeaderUnavailable,
    RateLimited,
    ReplicationTimeout,
)
from guestbook.keys import rate_key
from guestbook.messages import id_key, iso_from_ms
from guestbook.scripts import SUBMIT_SCRIPT
from guestbook.store import MessageStore, PostResult
from proxy import LosingProxy

pytestmark = pytest.mark.anyio

CLIENT = "198.51.100.7"
OTHER = "2001:db8::1"


@pytest.fixture
async def store(cluster: Cluster) -> AsyncIterator[MessageStore]:
    store = MessageStore(cluster.leader.url, cluster.follower_urls().split(","), timeout=0.5)
    yield store
    await store.close()


@pytest.fixture
def lone(tmp_path: Path) -> Iterator[RedisServer]:
    """A leader without followers: nothing else talks to it (no replica acknowledgements), so
    its counters move only for what the test does."""
    server = RedisServer(tmp_path / "lone").start()
    yield server
    server.kill()


def messages(server: RedisServer) -> list[str]:
    return [entry_id for entry_id, _ in server.client().xrange("guestbook:messages")]


# --- publishing ----------------------------------------------------------------------------


async def test_a_post_is_published_with_the_time_of_its_id(
    cluster: Cluster, store: MessageStore
) -> None:
    result = await store.submit("hello", CLIENT, rate_limit=30)

    assert (result.status, result.held, result.reason, result.replayed) == (
        "published",
        False,
        None,
        False,
    )
    assert result.message.text == "hello"
    assert result.message.created_at == iso_from_ms(id_key(result.message.id)[0])
    assert messages(cluster.leader) == [result.message.id]
    assert (await store.page(5, must_include=result.message.id)).messages == [result.message]


async def test_a_dead_leader_makes_posts_raise_leader_unavailable(
    cluster: Cluster, store: MessageStore
) -> None:
    cluster.leader.kill()
    with pytest.raises(LeaderUnavailable):
        await store.submit("lost?", CLIENT, rate_limit=30, idempotency_key="k")


async def test_an_unknown_hold_reason_is_refused_before_any_store_call(
    store: MessageStore,
) -> None:
    with pytest.raises(ValueError, match="hold reason"):
        await store.submit("hi", CLIENT, hold_reason="because")


# --- the rate limit ------------------------------------------------------------------------


async def test_two_frontends_on_one_leader_share_one_limit_of_thirty_a_minute(
    cluster: Cluster,
) -> None:
    urls = cluster.follower_urls().split(",")
    frontends = [MessageStore(cluster.leader.url, urls, timeout=0.5) for _ in range(2)]
    try:
        for i in range(30):
            await frontends[i % 2].submit(f"post {i}", CLIENT, rate_limit=30)
        refused = 0
        for i in range(30, 60):
            try:
                await frontends[i % 2].submit(f"post {i}", CLIENT, rate_limit=30)
            except RateLimited:
                refused += 1
    finally:
        for frontend in frontends:
            await frontend.close()
    assert refused == 30
    assert cluster.leader.client().xlen("guestbook:messages") == 30


async def test_a_refused_post_stores_nothing_and_says_when_a_slot_frees(
    cluster: Cluster, store: MessageStore
) -> None:
    for i in range(3):
        await store.submit(f"post {i}", CLIENT, rate_limit=3)

    with pytest.raises(RateLimited) as refused:
        await store.submit("one too many", CLIENT, rate_limit=3)

    assert 1 <= refused.value.retry_after <= 60
    assert cluster.leader.client().xlen("guestbook:messages") == 3
    assert cluster.leader.client().zcard(f"guestbook:rate:{CLIENT}") == 3


async def test_the_limit_is_per_client(cluster: Cluster, store: MessageStore) -> None:
    for i in range(3):
        await store.submit(f"post {i}", CLIENT, rate_limit=3)

    result = await store.submit("mine", OTHER, rate_limit=3)

    assert result.status == "published"
    with pytest.raises(RateLimited):
        await store.submit("again", CLIENT, rate_limit=3)


async def test_a_post_leaving_the_minute_frees_one_slot(
    cluster: Cluster, store: MessageStore
) -> None:
    for i in range(3):
        await store.submit(f"post {i}", CLIENT, rate_limit=3)
    key = f"guestbook:rate:{CLIENT}"
    leader = cluster.leader.client()
    # Age the oldest post by a minute instead of waiting one.
    oldest, score = leader.zrange(key, 0, 0, withscores=True)[0]
    leader.zadd(key, {oldest: score - 60_000})

    await store.submit("a slot freed", CLIENT, rate_limit=3)

    with pytest.raises(RateLimited):
        await store.submit("and no more", CLIENT, rate_limit=3)
    assert leader.xlen("guestbook:messages") == 4


async def test_held_posts_count_towards_the_limit(store: MessageStore) -> None:
    for i in range(3):
        await store.submit(f"http://spam/{i}", CLIENT, hold_reason="links", rate_limit=3)

    with pytest.raises(RateLimited):
        await store.submit("http://spam/3", CLIENT, hold_reason="links", rate_limit=3)


async def test_a_limit_of_zero_never_refuses_and_keeps_no_count(
    cluster: Cluster, store: MessageStore
) -> None:
    for i in range(40):
        await store.submit(f"post {i}", CLIENT, rate_limit=0)

    assert cluster.leader.client().xlen("guestbook:messages") == 40
    assert cluster.leader.client().exists(f"guestbook:rate:{CLIENT}") == 0


# --- duplicates ----------------------------------------------------------------------------


async def test_the_same_text_from_the_same_client_within_ten_minutes_is_held_as_a_duplicate(
    cluster: Cluster, store: MessageStore
) -> None:
    first = await store.submit("hello", CLIENT)

    again = await store.submit("hello", CLIENT)

    assert first.status == "published"
    assert (again.status, again.reason) == ("held", "duplicate")
    assert cluster.leader.client().xlen("guestbook:messages") == 1
    key = "guestbook:dup:" + hashlib.sha256(f"{CLIENT}\0hello".encode()).hexdigest()
    assert 0 < cluster.leader.client().pttl(key) <= 600_000


async def test_the_same_text_from_another_client_or_another_text_is_published(
    store: MessageStore,
) -> None:
    await store.submit("hello", CLIENT)

    assert (await store.submit("hello", OTHER)).status == "published"
    assert (await store.submit("hello there", CLIENT)).status == "published"


async def test_a_duplicate_once_ten_minutes_passed_is_published(
    cluster: Cluster, store: MessageStore
) -> None:
    await store.submit("hello", CLIENT)
    key = "guestbook:dup:" + hashlib.sha256(f"{CLIENT}\0hello".encode()).hexdigest()
    cluster.leader.client().delete(key)  # what its expiry does ten minutes on

    assert (await store.submit("hello", CLIENT)).status == "published"


async def test_a_spam_reason_wins_over_duplicate_and_duplicate_over_pre_moderation(
    store: MessageStore,
) -> None:
    await store.submit("hello", CLIENT)

    as_links = await store.submit("hello", CLIENT, hold_reason="links")
    as_pre = await store.submit("hello", CLIENT, hold_reason="pre-moderation")

    assert as_links.reason == "links"
    assert as_pre.reason == "duplicate"


# --- idempotent retries --------------------------------------------------------------------


async def test_a_retry_with_the_same_key_answers_the_same_message_and_stores_nothing(
    cluster: Cluster, store: MessageStore
) -> None:
    first = await store.submit("hello", CLIENT, idempotency_key="key-1")

    retry = await store.submit("hello", CLIENT, idempotency_key="key-1")

    assert retry.message == first.message
    assert (retry.status, retry.replayed) == ("published", True)
    assert messages(cluster.leader) == [first.message.id]
    assert cluster.leader.client().xlen("guestbook:held") == 0  # not even as a duplicate
    key = "guestbook:idem:" + hashlib.sha256(b"key-1").hexdigest()
    assert 86_000 < cluster.leader.client().ttl(key) <= 86_400


async def test_another_key_is_another_post(cluster: Cluster, store: MessageStore) -> None:
    first = await store.submit("hello", CLIENT, idempotency_key="key-1")

    second = await store.submit("hello again", CLIENT, idempotency_key="key-2")

    assert second.message.id != first.message.id
    assert second.replayed is False
    assert messages(cluster.leader) == [first.message.id, second.message.id]


async def test_the_same_key_for_another_text_is_a_conflict_and_stores_nothing(
    cluster: Cluster, store: MessageStore
) -> None:
    await store.submit("hello", CLIENT, idempotency_key="key-1")

    with pytest.raises(IdempotencyConflict):
        await store.submit("something else", CLIENT, idempotency_key="key-1")

    assert cluster.leader.client().xlen("guestbook:messages") == 1


async def test_a_retry_of_a_held_post_answers_the_same_held_post(
    cluster: Cluster, store: MessageStore
) -> None:
    first = await store.submit("hi", CLIENT, hold_reason="links", idempotency_key="key-1")

    retry = await store.submit("hi", CLIENT, hold_reason="links", idempotency_key="key-1")

    assert (retry.status, retry.reason, retry.replayed) == ("held", "links", True)
    assert retry.message == first.message
    assert cluster.leader.client().xlen("guestbook:held") == 1


async def test_a_retry_does_not_use_up_the_rate_limit(store: MessageStore) -> None:
    await store.submit("hello", CLIENT, rate_limit=2, idempotency_key="key-1")
    for _ in range(5):
        await store.submit("hello", CLIENT, rate_limit=2, idempotency_key="key-1")

    result = await store.submit("second", CLIENT, rate_limit=2)

    assert result.status == "published"


async def test_a_retry_after_a_wait_shortfall_with_hung_followers_stores_nothing_new(
    cluster: Cluster,
) -> None:
    store = MessageStore(
        cluster.leader.url, cluster.follower_urls().split(","), timeout=0.5, write_replicas=2
    )
    try:
        for follower in cluster.followers:
            follower.hang()
        try:
            with pytest.raises(ReplicationTimeout):
                await store.submit("hello", CLIENT, idempotency_key="key-1")
            # Still short: the retry says so again rather than storing a second copy.
            with pytest.raises(ReplicationTimeout):
                await store.submit("hello", CLIENT, idempotency_key="key-1")
        finally:
            for follower in cluster.followers:
                follower.resume()
        # Resumed followers take a moment to read what they missed; the retry's WAIT (0.4 s)
        # must find them caught up, which is what this test is about, not how fast they catch up.
        [written] = messages(cluster.leader)
        for follower in cluster.followers:
            wait_until(lambda f=follower: messages(f) == [written])

        retry = await store.submit("hello", CLIENT, idempotency_key="key-1")
    finally:
        await store.close()
    assert retry.replayed is True
    assert messages(cluster.leader) == [retry.message.id]
    for follower in cluster.followers:
        assert messages(follower) == [retry.message.id]


async def test_a_retry_after_a_wait_shortfall_with_killed_followers_stores_nothing_new(
    cluster: Cluster,
) -> None:
    # WAIT gets 80 % of the timeout: room for freshly resynced followers to acknowledge.
    store = MessageStore(
        cluster.leader.url, cluster.follower_urls().split(","), timeout=2, write_replicas=2
    )
    try:
        for follower in cluster.followers:
            follower.kill()
        with pytest.raises(ReplicationTimeout):
            await store.submit("hello", CLIENT, idempotency_key="key-1")
        [written] = messages(cluster.leader)
        for follower in cluster.followers:
            follower.start()
        # The followers say their link is up before the leader counts them as online.
        wait_until(
            lambda: (
                sum(
                    isinstance(v, dict) and v.get("state") == "online"
                    for k, v in cluster.leader.client().info("replication").items()
                    if k.startswith("slave")
                )
                == 2
            )
        )

        retry = await store.submit("hello", CLIENT, idempotency_key="key-1")
    finally:
        await store.close()
    assert retry.message.id == written
    assert messages(cluster.leader) == [written]


async def test_a_retry_after_the_leader_died_before_answering_answers_the_stored_message(
    cluster: Cluster, store: MessageStore
) -> None:
    # The answer that the client never got: the post is on the leader, in its append-only
    # file (appendfsync always), when the leader dies.
    lost_answer = await store.submit("hello", CLIENT, idempotency_key="key-1")
    cluster.leader.restart()

    retry = await store.submit("hello", CLIENT, idempotency_key="key-1")

    assert retry.message == lost_answer.message
    assert retry.replayed is True
    assert messages(cluster.leader) == [lost_answer.message.id]


async def test_a_post_answered_503_by_a_stalled_leader_is_stored_once_though_retried(
    cluster: Cluster, store: MessageStore
) -> None:
    # A connection made before the stall, so the post itself reaches the leader's socket (a
    # new one would stall in its handshake, and the post would never be sent).
    await store.on_leader(lambda c: c.ping(), "ping")
    cluster.leader.hang()
    try:
        with pytest.raises(LeaderUnavailable):
            await store.submit("hello", CLIENT, idempotency_key="key-1")
    finally:
        cluster.leader.resume()
    # The stalled leader still runs the post it had received: answered 503, stored anyway.
    wait_until(lambda: cluster.leader.client().xlen("guestbook:messages") == 1)

    retry = await store.submit("hello", CLIENT, idempotency_key="key-1")

    assert retry.replayed is True
    assert messages(cluster.leader) == [retry.message.id]


# --- cost and keys -------------------------------------------------------------------------


def reads_processed(probe: redis.Redis) -> int:
    """Requests the server has read from its sockets: one per round trip of any client."""
    return int(probe.info("stats")["total_reads_processed"])


def command_calls(probe: redis.Redis, command: str) -> int:
    stats = probe.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def script_calls(probe: redis.Redis) -> int:
    """Runs of a script, whether sent whole (EVAL) or by its digest (EVALSHA)."""
    return command_calls(probe, "eval") + command_calls(probe, "evalsha")


async def test_a_post_is_one_script_call_in_one_round_trip(lone: RedisServer) -> None:
    store = MessageStore(lone.url, timeout=0.5)
    probe = lone.client()
    try:
        await store.submit("warm-up", CLIENT, rate_limit=30)  # opens the pooled connection
        evals, waits = script_calls(probe), command_calls(probe, "wait")
        # The fewest socket reads over three posts: on a busy machine one post's bytes can
        # arrive in two reads, but a second round trip would show in every one of them.
        round_trips = []
        for attempt in range(3):
            # Each INFO is one read of its own; that is the baseline to subtract.
            baseline = -reads_processed(probe) + reads_processed(probe)
            reads = reads_processed(probe)  # last before the post, first after
            await store.submit(
                f"hello {attempt}", CLIENT, rate_limit=30, idempotency_key=f"k{attempt}"
            )
            round_trips.append(reads_processed(probe) - reads - baseline)
        assert min(round_trips) == 1, round_trips
        assert script_calls(probe) - evals == 3
        assert command_calls(probe, "wait") == waits
    finally:
        await store.close()


async def test_with_write_replicas_the_wait_rides_in_the_posts_round_trip(
    lone: RedisServer,
) -> None:
    store = MessageStore(lone.url, timeout=0.5, write_replicas=1)
    probe = lone.client()
    try:
        with pytest.raises(ReplicationTimeout):
            await store.submit("warm-up", CLIENT)
        evals, waits = script_calls(probe), command_calls(probe, "wait")
        # The fewest socket reads over three posts, as for a post without WAIT: a busy
        # machine may split one post's bytes, never in every attempt.
        round_trips = []
        for attempt in range(3):
            baseline = -reads_processed(probe) + reads_processed(probe)
            reads = reads_processed(probe)  # last before the post, first after
            # No follower confirms: the post is stored, and the answer says it is not safe yet.
            with pytest.raises(ReplicationTimeout):
                await store.submit(f"hello {attempt}", CLIENT)
            round_trips.append(reads_processed(probe) - reads - baseline)
        assert min(round_trips) == 1, round_trips
        assert script_calls(probe) - evals == 3
        assert command_calls(probe, "wait") - waits == 3
    finally:
        await store.close()


async def test_every_key_posting_and_moderation_use_is_under_the_guestbook_prefix(
    lone: RedisServer,
) -> None:
    probe = lone.client()
    probe.set("someone-else", "untouched")
    store = MessageStore(lone.url, timeout=0.5)
    try:
        posted = await store.submit("hello", CLIENT, rate_limit=30, idempotency_key="k")
        held = await store.submit("hello", CLIENT, rate_limit=30)
        await moderation.block_add(store, "casino")
        await moderation.approve(store, held.message.id, by="alice")
        await moderation.remove(store, posted.message.id, by="alice")
        rejected = await store.submit("x", CLIENT, hold_reason="honeypot", rate_limit=30)
        await moderation.reject(store, rejected.message.id, by="alice")
    finally:
        await store.close()
    keys = set(probe.keys("*"))
    assert keys - {"someone-else"}
    assert all(k.startswith("guestbook:") for k in keys - {"someone-else"})
    assert probe.get("someone-else") == "untouched"


# --- posts made together -------------------------------------------------------------------


async def test_posts_made_together_share_one_round_trip_and_each_is_stored(
    lone: RedisServer,
) -> None:
    store = MessageStore(lone.url, timeout=0.5)
    probe = lone.client()
    try:
        await store.submit("warm-up", CLIENT, rate_limit=30)  # the connection, the script
        scripts = script_calls(probe)
        round_trips = []
        results = []
        for attempt in range(3):
            baseline = -reads_processed(probe) + reads_processed(probe)
            reads = reads_processed(probe)
            results += await asyncio.gather(
                *(store.submit(f"post {attempt}.{n}", CLIENT, rate_limit=0) for n in range(20))
            )
            round_trips.append(reads_processed(probe) - reads - baseline)
    finally:
        await store.close()
    # As with one post: a busy machine may split the bytes, never in every attempt.
    assert min(round_trips) == 1, round_trips
    assert script_calls(probe) - scripts == 60
    assert [r.status for r in results] == ["published"] * 60
    ids = [r.message.id for r in results]
    assert sorted(ids, key=id_key) == ids  # answered in the order they were made
    assert messages(lone)[1:] == ids


async def test_with_write_replicas_posts_made_together_share_one_wait(lone: RedisServer) -> None:
    store = MessageStore(lone.url, timeout=0.5, write_replicas=1)
    probe = lone.client()
    try:
        with pytest.raises(ReplicationTimeout):
            await store.submit("warm-up", CLIENT)
        waits = command_calls(probe, "wait")

        outcomes = await asyncio.gather(
            *(store.submit(f"post {n}", CLIENT) for n in range(5)), return_exceptions=True
        )
    finally:
        await store.close()
    # No follower: each is stored, and each answer says it is not copied yet.
    assert all(isinstance(o, ReplicationTimeout) for o in outcomes), outcomes
    assert command_calls(probe, "wait") - waits == 1
    assert len(messages(lone)) == 6


async def test_posts_after_the_server_forgot_the_script_are_each_stored_once(
    lone: RedisServer,
) -> None:
    store = MessageStore(lone.url, timeout=0.5)
    probe = lone.client()
    try:
        await store.submit("warm-up", CLIENT)
        probe.script_flush()  # as a restart, or another client, would leave it

        results = await asyncio.gather(*(store.submit(f"post {n}", CLIENT) for n in range(3)))
        after = await store.submit("and then", CLIENT)
    finally:
        await store.close()
    stored = [r.message.id for r in [*results, after]]
    assert messages(lone)[1:] == stored
    assert probe.script_exists(hashlib.sha1(SUBMIT_SCRIPT.encode()).hexdigest()) == [True]


async def test_a_post_cancelled_before_its_batch_is_sent_stores_nothing(
    lone: RedisServer,
) -> None:
    store = MessageStore(lone.url, timeout=0.5)
    try:
        await store.submit("warm-up", CLIENT)
        kept = asyncio.create_task(store.submit("kept", CLIENT))
        dropped = asyncio.create_task(store.submit("dropped", CLIENT))
        await asyncio.sleep(0)  # both are queued; their batch goes at the next turn
        dropped.cancel()
        published = await kept
        with pytest.raises(asyncio.CancelledError):
            await dropped
    finally:
        await store.close()
    texts = [fields["t"] for _, fields in lone.client().xrange("guestbook:messages")]
    assert texts == ["warm-up", "kept"]
    assert published.message.text == "kept"


async def test_a_post_the_server_refuses_fails_alone_in_its_batch(lone: RedisServer) -> None:
    store = MessageStore(lone.url, timeout=0.5)
    try:
        await store.submit("warm-up", OTHER, rate_limit=30)
        # Not a sorted set: this client's rate-limit step fails on the server.
        lone.client().set(rate_key(CLIENT), "not a sorted set")

        refused, published = await asyncio.gather(
            store.submit("from the broken client", CLIENT, rate_limit=30),
            store.submit("from another", OTHER, rate_limit=30),
            return_exceptions=True,
        )
    finally:
        await store.close()
    assert isinstance(refused, redis.ResponseError), refused
    assert isinstance(published, PostResult)
    assert published.status == "published"
    assert messages(lone)[1:] == [published.message.id]


# --- an answer lost with its connection ----------------------------------------------------


@pytest.fixture
async def losing(lone: RedisServer) -> AsyncIterator[LosingProxy]:
    proxy = await LosingProxy(lone.port).start()
    yield proxy
    await proxy.stop()


@pytest.mark.parametrize(
    ("hold_reason", "status"), [(None, "published"), ("links", "held")], ids=["published", "held"]
)
async def test_a_post_whose_answer_was_lost_with_its_connection_is_answered_as_stored_once(
    lone: RedisServer, losing: LosingProxy, hold_reason: str | None, status: str
) -> None:
    # The store sends the batch again on a fresh connection (its one retry): the leader runs
    # the post a second time, and must know it for the same post, not a duplicate of it.
    store = MessageStore(losing.url, timeout=2)
    try:
        warm_up = await store.submit("warm-up", CLIENT, rate_limit=2)  # the script known
        losing.lose_next_reply_to(b"EVALSHA")
        # The last slot of the client's minute: the post sent again must not be refused.
        result = await store.submit("hello", CLIENT, hold_reason=hold_reason, rate_limit=2)
    finally:
        await store.close()
    assert losing.lost == 1
    assert (result.status, result.reason, result.replayed) == (status, hold_reason, False)
    held = [entry_id for entry_id, _ in lone.client().xrange("guestbook:held")]
    stored = [*messages(lone), *held]
    assert stored == [warm_up.message.id, result.message.id]
