"""Moderation on the store, in process, against a real leader and two followers: removals and
their records, the queue of held posts, approval and rejection, the audit log, the block list,
and the spam rules that decide a hold."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conftest import Cluster, RedisServer, wait_until
from guestbook import moderation
from guestbook.errors import InvalidCursor, InvalidPattern
from guestbook.messages import id_key
from guestbook.moderation import CLI_ACTOR, hold_reason
from guestbook.store import MessageStore

pytestmark = pytest.mark.anyio

CLIENT = "198.51.100.7"


@pytest.fixture
async def store(cluster: Cluster) -> AsyncIterator[MessageStore]:
    store = MessageStore(cluster.leader.url, cluster.follower_urls().split(","), timeout=2)
    yield store
    await store.close()


def server_ms(server: RedisServer) -> int:
    seconds, micros = server.client().time()
    return int(seconds) * 1000 + int(micros) // 1000


def wait_past(server: RedisServer, entry_id: str) -> None:
    """Until the server's clock is past the id's millisecond, so the next id is newer in time,
    not only in sequence."""
    ms = id_key(entry_id)[0]
    wait_until(lambda: server_ms(server) > ms)


def wait_replicated(cluster: Cluster, key: str) -> None:
    """Until every follower holds as many entries of `key` as the leader: reads go to them."""
    want = cluster.leader.client().xlen(key)
    wait_until(lambda: all(f.client().xlen(key) == want for f in cluster.followers))


def audit_stream(server: RedisServer) -> list[dict[str, str]]:
    return [fields for _, fields in server.client().xrange("guestbook:audit")]


# --- removal -------------------------------------------------------------------------------


async def test_a_removed_message_is_gone_from_the_leader_and_every_follower(
    cluster: Cluster, store: MessageStore
) -> None:
    kept = await store.append("kept")
    spam = await store.append("spam")

    removed = await moderation.remove(store, spam.id, by="alice", reason="advertising")

    assert removed == spam
    assert [e[0] for e in cluster.leader.client().xrange("guestbook:messages")] == [kept.id]
    for follower in cluster.followers:
        wait_until(lambda f=follower: f.client().xlen("guestbook:messages") == 1)
        assert [e[0] for e in follower.client().xrange("guestbook:messages")] == [kept.id]


async def test_a_removal_writes_a_removal_record_and_an_audit_entry_with_the_text(
    cluster: Cluster, store: MessageStore
) -> None:
    spam = await store.append("buy now")

    await moderation.remove(store, spam.id, by="alice", reason="advertising")

    records = cluster.leader.client().xrange("guestbook:removed")
    assert [fields for _, fields in records] == [{"id": spam.id}]
    assert audit_stream(cluster.leader) == [
        {
            "action": "remove",
            "id": spam.id,
            "by": "alice",
            "reason": "advertising",
            "text": "buy now",
        }
    ]
    [entry] = await moderation.audit(store)
    assert entry.as_dict() == {
        "at": entry.at,
        "action": "remove",
        "id": spam.id,
        "by": "alice",
        "reason": "advertising",
        "text": "buy now",
    }
    assert id_key(entry.entry_id)[0] >= id_key(spam.id)[0]


async def test_a_removed_message_leaves_pages_the_legacy_view_resumes_and_exports(
    cluster: Cluster, store: MessageStore
) -> None:
    first = await store.append("first")
    spam = await store.append("spam")
    last = await store.append("last")

    await moderation.remove(store, spam.id, by=CLI_ACTOR)
    # The reads below go to a follower: each must have the removal first (this test is
    # about what a removal leaves, not how fast followers replicate it).
    for follower in cluster.followers:
        wait_until(lambda f=follower: f.client().xlen("guestbook:messages") == 2)

    page = await store.page(10, must_include=last.id)
    assert [m.text for m in page.messages] == ["last", "first"]
    assert [m.text for m in await store.newest_oldest_first(10)] == ["first", "last"]
    assert [m.text for m in await store.after(first.id)] == ["last"]
    assert [m.text for m in await store.iter_all()] == ["first", "last"]


async def test_removing_an_unknown_id_answers_none_and_records_nothing(
    cluster: Cluster, store: MessageStore
) -> None:
    message = await store.append("here")

    assert await moderation.remove(store, "1-0", by="alice") is None

    leader = cluster.leader.client()
    assert leader.xlen("guestbook:messages") == 1
    assert leader.exists("guestbook:removed", "guestbook:audit") == 0
    assert await moderation.remove(store, message.id, by="alice") == message
    assert await moderation.remove(store, message.id, by="alice") is None
    assert len(audit_stream(cluster.leader)) == 1


async def test_a_malformed_id_is_refused_before_any_store_call(cluster: Cluster) -> None:
    cluster.leader.kill()
    store = MessageStore(cluster.leader.url, timeout=0.5)
    try:
        for call in (
            moderation.remove(store, "yesterday", by="alice"),
            moderation.approve(store, "1-x", by="alice"),
            moderation.reject(store, "", by="alice"),
            moderation.held_message(store, "\u0661-\u0660"),  # Arabic-Indic digits
        ):
            with pytest.raises(InvalidCursor):
                await call
    finally:
        await store.close()


async def test_an_action_by_nobody_is_refused_before_any_store_call(
    cluster: Cluster, store: MessageStore
) -> None:
    message = await store.append("here")

    with pytest.raises(ValueError, match="who"):
        await moderation.remove(store, message.id, by=" ")

    assert cluster.leader.client().xlen("guestbook:messages") == 1


async def test_an_id_with_leading_zeros_removes_the_message_under_its_own_id(
    cluster: Cluster, store: MessageStore
) -> None:
    message = await store.append("padded")
    ms, seq = message.id.split("-")

    removed = await moderation.remove(store, f"000{ms}-0{seq}", by="alice")

    assert removed is not None
    assert removed.id == message.id
    assert audit_stream(cluster.leader)[0]["id"] == message.id


async def test_removed_since_names_removals_recorded_after_the_resume_point_of_older_messages(
    cluster: Cluster, store: MessageStore
) -> None:
    # Removed before the client could have seen `seen`: its page never held it.
    early = await store.append("early")
    await moderation.remove(store, early.id, by="alice")
    record = cluster.leader.client().xrevrange("guestbook:removed", count=1)[0][0]
    wait_past(cluster.leader, record)
    older = await store.append("older")
    seen = await store.append("seen")
    newer = await store.append("newer")
    wait_past(cluster.leader, newer.id)

    await moderation.remove(store, older.id, by="alice")
    await moderation.remove(store, newer.id, by="alice")
    await moderation.remove(store, seen.id, by="alice")
    wait_replicated(cluster, "guestbook:removed")

    assert await store.removed_since(seen.id) == [older.id, seen.id]
    assert await store.removed_since(older.id) == [older.id]


async def test_removals_after_lists_the_records_newer_than_a_record_and_the_head_is_the_last(
    cluster: Cluster, store: MessageStore
) -> None:
    def followers_hold(records: int) -> None:
        # The reads go to a follower: each must have the removal records first.
        for follower in cluster.followers:
            wait_until(lambda f=follower: f.client().xlen("guestbook:removed") == records)

    assert await store.removal_head() == "0-0"
    one = await store.append("one")
    two = await store.append("two")
    await moderation.remove(store, one.id, by="alice")
    followers_hold(1)
    head = await store.removal_head()
    await moderation.remove(store, two.id, by="alice")
    followers_hold(2)

    after = await store.removals_after(head)
    everything = await store.removals_after("0-0")

    assert [r.message_id for r in after] == [two.id]
    assert [r.message_id for r in everything] == [one.id, two.id]
    assert everything[0].record_id == head
    assert await store.removal_head() == after[0].record_id


async def test_watching_for_changes_reports_new_messages_and_removal_records_together(
    cluster: Cluster, store: MessageStore
) -> None:
    old = await store.append("old")
    removals_from = await store.removal_head()
    await moderation.remove(store, old.id, by="alice")
    new = await store.append("new")
    for follower in cluster.followers:
        wait_until(lambda f=follower: f.client().xlen("guestbook:removed") == 1)
        wait_until(lambda f=follower: f.client().xlen("guestbook:messages") == 1)

    changes = await store.watch_changes(old.id, removals_from)

    assert changes.messages == [new]
    assert [r.message_id for r in changes.removals] == [old.id]
    assert changes.source == "follower"


async def test_removing_the_newest_message_does_not_move_the_last_generated_id_back(
    cluster: Cluster, store: MessageStore
) -> None:
    assert await store.last_generated_id() == "0-0"
    await store.append("older")
    newest = await store.append("newest")

    await moderation.remove(store, newest.id, by="alice")
    wait_replicated(cluster, "guestbook:removed")  # `head` reads a follower
    wait_replicated(cluster, "guestbook:messages")

    assert [m.text for m in (await store.head(5))[0]] == ["older"]
    assert await store.last_generated_id() == newest.id


async def test_importing_an_export_taken_before_a_removal_does_not_bring_the_message_back(
    cluster: Cluster, store: MessageStore
) -> None:
    await store.append("kept")
    await store.append("spam")
    export = list(await store.iter_all())
    spam = export[1]
    await moderation.remove(store, spam.id, by="alice")

    brought = [
        await store.import_message(f"file:{m.id}", m.text, id_key(m.id)[0], m.id) for m in export
    ]

    assert brought == [None, None]
    assert [m.text for m in await store.iter_all()] == ["kept"]


# --- held posts ----------------------------------------------------------------------------


async def test_a_held_post_waits_in_the_queue_with_its_reason_and_is_audited(
    cluster: Cluster, store: MessageStore
) -> None:
    result = await store.submit("see http://a http://b http://c", CLIENT, hold_reason="links")

    assert result.status == "held"
    assert result.reason == "links"
    assert cluster.leader.client().xlen("guestbook:messages") == 0
    [post] = await moderation.held(store)
    assert post.message == result.message
    assert (post.reason, post.client) == ("links", CLIENT)
    assert post.as_dict() == {**result.message.as_dict(), "reason": "links"}
    assert audit_stream(cluster.leader) == [
        {
            "action": "hold",
            "id": result.message.id,
            "by": "guestbook",
            "reason": "links",
            "text": "see http://a http://b http://c",
        }
    ]


async def test_approving_publishes_the_post_with_a_new_id_and_its_original_time(
    cluster: Cluster, store: MessageStore
) -> None:
    held = (await store.submit("hello", CLIENT, hold_reason="pre-moderation")).message
    wait_past(cluster.leader, held.id)

    published = await moderation.approve(store, held.id, by="alice")

    assert published is not None
    assert published.text == "hello"
    assert published.created_at == held.created_at
    assert id_key(published.id) > id_key(held.id)
    assert [m.id for m in (await store.page(5)).messages] == [published.id]
    assert await moderation.held(store) == []
    assert audit_stream(cluster.leader)[-1] == {
        "action": "approve",
        "id": held.id,
        "by": "alice",
        "reason": "pre-moderation",
        "text": "hello",
    }


async def test_an_approved_post_reaches_the_followers_and_the_live_watch(
    cluster: Cluster, store: MessageStore
) -> None:
    before = await store.append("before")
    held = (await store.submit("hello", CLIENT, hold_reason="pre-moderation")).message

    published = await moderation.approve(store, held.id, by="alice")

    assert published is not None
    for follower in cluster.followers:
        wait_until(lambda f=follower: f.client().xlen("guestbook:messages") == 2)
    messages, _ = await store.watch(before.id)
    assert messages == [published]


async def test_rejecting_drops_the_post_and_audits_the_moderators_reason(
    cluster: Cluster, store: MessageStore
) -> None:
    held = (await store.submit("buy pills", CLIENT, hold_reason="blocked-pattern")).message

    rejected = await moderation.reject(store, held.id, by="alice", reason="spam")

    assert rejected is not None
    assert (rejected.message, rejected.reason) == (held, "blocked-pattern")
    assert await moderation.held(store) == []
    assert cluster.leader.client().xlen("guestbook:messages") == 0
    assert audit_stream(cluster.leader)[-1] == {
        "action": "reject",
        "id": held.id,
        "by": "alice",
        "reason": "spam",
        "text": "buy pills",
    }


async def test_rejecting_without_a_reason_audits_the_reason_it_was_held_for(
    cluster: Cluster, store: MessageStore
) -> None:
    held = (await store.submit("hi", CLIENT, hold_reason="honeypot")).message

    await moderation.reject(store, held.id, by=CLI_ACTOR)

    assert audit_stream(cluster.leader)[-1]["reason"] == "honeypot"
    assert audit_stream(cluster.leader)[-1]["by"] == "cli"


async def test_approving_or_rejecting_an_unknown_id_answers_none_and_records_nothing(
    cluster: Cluster, store: MessageStore
) -> None:
    held = (await store.submit("hi", CLIENT, hold_reason="links")).message
    assert await moderation.approve(store, held.id, by="alice") is not None

    assert await moderation.approve(store, held.id, by="alice") is None
    assert await moderation.reject(store, held.id, by="alice") is None
    assert await moderation.approve(store, "1-0", by="alice") is None

    assert [e["action"] for e in audit_stream(cluster.leader)] == ["hold", "approve"]
    assert cluster.leader.client().xlen("guestbook:messages") == 1


async def test_the_queue_is_oldest_first_with_each_posts_reason_and_pages_on(
    store: MessageStore,
) -> None:
    reasons = ["pre-moderation", "links", "blocked-pattern", "honeypot"]
    held = [
        (await store.submit(f"post {i}", CLIENT, hold_reason=reason)).message
        for i, reason in enumerate(reasons)
    ]
    await store.submit("post 0", CLIENT)  # the same text again: a duplicate

    queue = await moderation.held(store)
    rest = await moderation.held(store, limit=2, after=held[1].id)

    assert [(p.text, p.reason) for p in queue] == [
        ("post 0", "pre-moderation"),
        ("post 1", "links"),
        ("post 2", "blocked-pattern"),
        ("post 3", "honeypot"),
        ("post 0", "duplicate"),
    ]
    assert [p.id for p in queue[:4]] == [m.id for m in held]
    assert [p.text for p in rest] == ["post 2", "post 3"]


async def test_the_poster_sees_their_held_post_though_the_followers_lag_until_it_is_approved(
    cluster: Cluster, store: MessageStore
) -> None:
    held = (await store.submit("mine", CLIENT, hold_reason="pre-moderation")).message
    for follower in cluster.followers:
        follower.hang()
    try:
        seen = await moderation.held_message(store, held.id)
    finally:
        for follower in cluster.followers:
            follower.resume()

    assert seen is not None
    assert (seen.message, seen.reason) == (held, "pre-moderation")
    await moderation.approve(store, held.id, by="alice")
    assert await moderation.held_message(store, held.id) is None


# --- audit ---------------------------------------------------------------------------------


async def test_the_audit_is_newest_first_and_pages_back_with_before(store: MessageStore) -> None:
    one = await store.append("one")
    held = (await store.submit("two", CLIENT, hold_reason="links")).message
    await moderation.reject(store, held.id, by="bob", reason="spam")
    await moderation.remove(store, one.id, by="alice", reason="rude")

    entries = await moderation.audit(store)
    older = await moderation.audit(store, limit=2, before=entries[1].entry_id)

    assert [(e.action, e.by, e.text) for e in entries] == [
        ("remove", "alice", "one"),
        ("reject", "bob", "two"),
        ("hold", "guestbook", "two"),
    ]
    assert [e.action for e in older] == ["hold"]
    assert [e.at for e in entries] == sorted((e.at for e in entries), reverse=True)
    assert entries[0].at.endswith("Z")


# --- block list ----------------------------------------------------------------------------


async def test_blocked_patterns_are_kept_case_folded_and_reach_the_followers(
    cluster: Cluster, store: MessageStore
) -> None:
    assert await moderation.block_add(store, "  Casino ") is True
    assert await moderation.block_add(store, "CASINO") is False
    assert await moderation.block_add(store, "pills") is True
    for follower in cluster.followers:
        wait_until(lambda f=follower: f.client().scard("guestbook:blocked") == 2)

    patterns = await moderation.blocked_patterns(store)

    assert patterns == {"casino", "pills"}
    assert await moderation.block_remove(store, "Pills") is True
    assert await moderation.block_remove(store, "pills") is False
    assert cluster.leader.client().smembers("guestbook:blocked") == {"casino"}


async def test_an_empty_or_overlong_pattern_is_refused(store: MessageStore) -> None:
    with pytest.raises(InvalidPattern):
        await moderation.block_add(store, "   ")
    with pytest.raises(InvalidPattern):
        await moderation.block_add(store, "x" * 201)


# --- spam rules ----------------------------------------------------------------------------


def test_a_blocked_pattern_matches_any_case_anywhere_in_the_text() -> None:
    assert hold_reason("Visit our CaSiNo today", max_links=2, blocked={"casino"}) == (
        "blocked-pattern"
    )
    assert hold_reason("a quiet evening", max_links=2, blocked={"casino"}) is None


def test_more_links_than_allowed_are_held_and_www_after_a_scheme_is_one_link() -> None:
    assert moderation.count_links("https://www.a.example and www.b.example, HTTP://c") == 3
    assert hold_reason("http://a http://b", max_links=2) is None
    assert hold_reason("http://a http://b www.c", max_links=2) == "links"
    assert hold_reason("http://a", max_links=0) == "links"


def test_a_filled_honeypot_is_held_and_a_blank_one_is_not() -> None:
    assert hold_reason("hi", honeypot="http://spam.example", max_links=2) == "honeypot"
    assert hold_reason("hi", honeypot="  ", max_links=2) is None


def test_the_most_telling_reason_wins_and_pre_moderation_holds_the_rest() -> None:
    text = "casino http://a http://b http://c"
    assert hold_reason(text, honeypot="x", max_links=2, blocked={"casino"}) == "honeypot"
    assert hold_reason(text, max_links=2, blocked={"casino"}, pre_moderation=True) == (
        "blocked-pattern"
    )
    assert hold_reason(text, max_links=2, pre_moderation=True) == "links"
    assert hold_reason("hello", max_links=2, pre_moderation=True) == "pre-moderation"
