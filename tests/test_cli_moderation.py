"""Moderation from the command line, on the store directly (no token): remove, queue, approve,
reject, audit and the block list, as `python -m guestbook` against a real leader and followers,
and against the embedded store."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from conftest import Cluster, cli
from guestbook.store import MessageStore

CLIENT = "203.0.113.7"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def hold(cluster: Cluster, *posts: tuple[str, str]) -> list[str]:
    """Held posts (text, reason) as a frontend's spam rules submit them; their held ids."""

    async def submit() -> list[str]:
        store = MessageStore(cluster.leader.url, timeout=5)
        try:
            return [
                (await store.submit(text, CLIENT, hold_reason=reason)).message.id
                for text, reason in posts
            ]
        finally:
            await store.close()

    return asyncio.run(submit())


def audit(tmp_path: Path, cluster: Cluster | None, **env: str) -> list[dict[str, str]]:
    out = ok(cli(tmp_path, cluster, "audit", "--json", **env))
    return [json.loads(line) for line in out.splitlines()]


def exported_texts(tmp_path: Path, cluster: Cluster | None, **env: str) -> list[str]:
    out = ok(cli(tmp_path, cluster, "export", **env))
    return [json.loads(line)["text"] for line in out.splitlines()]


# --- remove ------------------------------------------------------------------------------------


def test_remove_takes_the_message_out_of_list_and_export_and_audits_it(
    tmp_path: Path, cluster: Cluster
) -> None:
    kept = ok(cli(tmp_path, cluster, "post", "a kind word")).strip()
    spam = ok(cli(tmp_path, cluster, "post", "buy\ncheap pills")).strip()

    removed = cli(tmp_path, cluster, "remove", spam, "--reason", "spam")

    assert ok(removed) == f"removed {spam}: buy⏎cheap pills\n"
    listing = ok(cli(tmp_path, cluster, "list"))
    assert kept in listing
    assert spam not in listing
    assert "pills" not in listing
    assert exported_texts(tmp_path, cluster) == ["a kind word"]
    [entry] = audit(tmp_path, cluster)
    assert {k: v for k, v in entry.items() if k != "at"} == {
        "action": "remove",
        "id": spam,
        "by": "cli",
        "reason": "spam",
        "text": "buy\ncheap pills",
    }
    [line] = ok(cli(tmp_path, cluster, "audit")).splitlines()
    assert line == f"{entry['at']}  remove   {spam}  by: cli  reason: spam  buy⏎cheap pills"


def test_remove_without_a_reason_is_audited_with_none(tmp_path: Path, cluster: Cluster) -> None:
    posted = ok(cli(tmp_path, cluster, "post", "oops")).strip()
    ok(cli(tmp_path, cluster, "remove", posted))
    [entry] = audit(tmp_path, cluster)
    assert (entry["action"], entry["by"], entry["reason"], entry["text"]) == (
        "remove",
        "cli",
        "",
        "oops",
    )
    assert "  reason: -  oops" in ok(cli(tmp_path, cluster, "audit"))


def test_removing_an_unknown_or_removed_id_is_a_clear_error(
    tmp_path: Path, cluster: Cluster
) -> None:
    posted = ok(cli(tmp_path, cluster, "post", "only once")).strip()
    ok(cli(tmp_path, cluster, "remove", posted))

    for unknown in ("1-0", posted):
        result = cli(tmp_path, cluster, "remove", unknown)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == (
            f"guestbook: no message {unknown}: it was never posted or is removed already\n"
        )
    assert [e["action"] for e in audit(tmp_path, cluster)] == ["remove"]


@pytest.mark.parametrize("command", ["remove", "approve", "reject"])
def test_a_malformed_id_is_refused_like_any_bad_input(
    tmp_path: Path, cluster: Cluster, command: str
) -> None:
    ok(cli(tmp_path, cluster, "post", "untouched"))
    result = cli(tmp_path, cluster, command, "not-an-id")
    assert result.returncode == 1
    assert result.stderr == "guestbook: 'id' must be a message id such as 1764156357123-0.\n"
    assert exported_texts(tmp_path, cluster) == ["untouched"]
    assert audit(tmp_path, cluster) == []


# --- the queue ---------------------------------------------------------------------------------


def test_queue_lists_held_posts_oldest_first_with_their_reasons(
    tmp_path: Path, cluster: Cluster
) -> None:
    first, second = hold(
        cluster, ("see http://a http://b http://c", "links"), ("two\nlines", "pre-moderation")
    )

    lines = ok(cli(tmp_path, cluster, "queue")).splitlines()
    held = [json.loads(line) for line in ok(cli(tmp_path, cluster, "queue", "--json")).splitlines()]

    assert [(h["id"], h["reason"], h["text"]) for h in held] == [
        (first, "links", "see http://a http://b http://c"),
        (second, "pre-moderation", "two\nlines"),
    ]
    assert set(held[0]) == {"id", "text", "created_at", "reason"}
    assert lines == [
        f"{held[0]['created_at']}  {first}  links            see http://a http://b http://c",
        f"{held[1]['created_at']}  {second}  pre-moderation   two⏎lines",
    ]
    assert ok(cli(tmp_path, cluster, "list")) == ""


def test_a_full_queue_page_names_the_next_one(tmp_path: Path, cluster: Cluster) -> None:
    ids = hold(cluster, ("one", "links"), ("two", "links"), ("three", "links"))

    page = cli(tmp_path, cluster, "queue", "--limit", "2")
    rest = cli(tmp_path, cluster, "queue", "--limit", "2", "--after", ids[1])

    assert [line.split("  ")[1] for line in page.stdout.splitlines()] == ids[:2]
    assert page.stderr == f"(more: guestbook queue --after {ids[1]})\n"
    assert [line.split("  ")[1] for line in ok(rest).splitlines()] == ids[2:]


def test_approve_publishes_a_held_post_with_a_new_id_and_audits_it(
    tmp_path: Path, cluster: Cluster
) -> None:
    [held_id] = hold(cluster, ("a false positive", "blocked-pattern"))

    approved = ok(cli(tmp_path, cluster, "approve", held_id)).strip()

    assert approved != held_id
    assert f"{approved}  a false positive" in ok(cli(tmp_path, cluster, "list"))
    assert exported_texts(tmp_path, cluster) == ["a false positive"]
    assert ok(cli(tmp_path, cluster, "queue")) == ""
    newest, oldest = audit(tmp_path, cluster)
    assert (oldest["action"], oldest["by"], oldest["id"]) == ("hold", "guestbook", held_id)
    assert {k: v for k, v in newest.items() if k != "at"} == {
        "action": "approve",
        "id": held_id,
        "by": "cli",
        "reason": "blocked-pattern",
        "text": "a false positive",
    }


def test_reject_drops_a_held_post_and_audits_the_reason_given(
    tmp_path: Path, cluster: Cluster
) -> None:
    spam, other = hold(cluster, ("buy pills", "blocked-pattern"), ("hello", "pre-moderation"))

    rejected = cli(tmp_path, cluster, "reject", spam, "--reason", "spam, really")

    assert ok(rejected) == f"rejected {spam}: buy pills\n"
    assert [line.split("  ")[1] for line in ok(cli(tmp_path, cluster, "queue")).splitlines()] == [
        other
    ]
    assert exported_texts(tmp_path, cluster) == []
    newest = audit(tmp_path, cluster)[0]
    assert {k: v for k, v in newest.items() if k != "at"} == {
        "action": "reject",
        "id": spam,
        "by": "cli",
        "reason": "spam, really",
        "text": "buy pills",
    }


def test_reject_without_a_reason_audits_the_reason_it_was_held_for(
    tmp_path: Path, cluster: Cluster
) -> None:
    [held_id] = hold(cluster, ("psst", "honeypot"))
    ok(cli(tmp_path, cluster, "reject", held_id))
    newest = audit(tmp_path, cluster)[0]
    assert (newest["action"], newest["by"], newest["reason"]) == ("reject", "cli", "honeypot")


@pytest.mark.parametrize("command", ["approve", "reject"])
def test_approving_or_rejecting_an_id_not_in_the_queue_is_a_clear_error(
    tmp_path: Path, cluster: Cluster, command: str
) -> None:
    published = ok(cli(tmp_path, cluster, "post", "already on the page")).strip()
    [held_id] = hold(cluster, ("decided once", "links"))
    ok(cli(tmp_path, cluster, command, held_id))

    for unknown in ("1-0", published, held_id):
        result = cli(tmp_path, cluster, command, unknown)
        assert result.returncode == 1
        assert result.stdout == ""
        assert result.stderr == (
            f"guestbook: no held post {unknown}: "
            "`guestbook queue` lists the posts waiting for review\n"
        )
    assert [e["action"] for e in audit(tmp_path, cluster)] == [command, "hold"]


# --- audit -------------------------------------------------------------------------------------


def test_audit_is_newest_first_and_a_full_page_names_the_older_one(
    tmp_path: Path, cluster: Cluster
) -> None:
    ids = [ok(cli(tmp_path, cluster, "post", f"message {i}")).strip() for i in range(3)]
    for message_id in ids:
        ok(cli(tmp_path, cluster, "remove", message_id))

    page = cli(tmp_path, cluster, "audit", "--limit", "2")

    assert page.returncode == 0, page.stderr
    assert [line.split()[2] for line in page.stdout.splitlines()] == [ids[2], ids[1]]
    assert page.stderr.startswith("(older: guestbook audit --before ")
    before = page.stderr.split()[-1].rstrip(")")
    older = ok(cli(tmp_path, cluster, "audit", "--limit", "2", "--before", before))
    assert [line.split()[2] for line in older.splitlines()] == [ids[0]]


def test_audit_of_a_guestbook_without_decisions_is_empty(tmp_path: Path, cluster: Cluster) -> None:
    assert ok(cli(tmp_path, cluster, "audit")) == ""
    assert ok(cli(tmp_path, cluster, "audit", "--json")) == ""


# --- the block list ----------------------------------------------------------------------------


def test_block_add_list_and_remove(tmp_path: Path, cluster: Cluster) -> None:
    assert ok(cli(tmp_path, cluster, "block", "add", "  Cheap PILLS ")) == "blocked 'cheap pills'\n"
    assert ok(cli(tmp_path, cluster, "block", "add", "casino")) == "blocked 'casino'\n"
    again = cli(tmp_path, cluster, "block", "add", "CASINO")
    assert ok(again) == "'casino' was blocked already\n"
    assert ok(cli(tmp_path, cluster, "block", "list")) == "casino\ncheap pills\n"
    assert cluster.leader.client().smembers("guestbook:blocked") == {"casino", "cheap pills"}

    assert ok(cli(tmp_path, cluster, "block", "remove", "Casino")) == "unblocked 'casino'\n"

    assert ok(cli(tmp_path, cluster, "block", "list")) == "cheap pills\n"
    missing = cli(tmp_path, cluster, "block", "remove", "casino")
    assert missing.returncode == 1
    assert missing.stderr == (
        "guestbook: 'casino' is not blocked: `guestbook block list` shows what is\n"
    )


def test_an_empty_pattern_is_refused_and_blocks_nothing(tmp_path: Path, cluster: Cluster) -> None:
    result = cli(tmp_path, cluster, "block", "add", "   ")
    assert result.returncode == 1
    assert result.stderr == (
        "guestbook: A blocked pattern cannot be empty: it would match every post.\n"
    )
    assert ok(cli(tmp_path, cluster, "block", "list")) == ""


# --- the embedded store, help, errors ----------------------------------------------------------


def test_moderation_works_on_the_embedded_store(tmp_path: Path) -> None:
    env = {"GUESTBOOK_DATA_DIR": str(tmp_path / "embedded")}
    kept = ok(cli(tmp_path, None, "post", "stays", **env)).strip()
    spam = ok(cli(tmp_path, None, "post", "goes", **env)).strip()

    assert ok(cli(tmp_path, None, "remove", spam, "--reason", "spam", **env)) == (
        f"removed {spam}: goes\n"
    )

    listing = ok(cli(tmp_path, None, "list", **env))
    assert kept in listing
    assert spam not in listing
    assert exported_texts(tmp_path, None, **env) == ["stays"]
    [entry] = audit(tmp_path, None, **env)
    assert (entry["action"], entry["id"], entry["by"], entry["text"]) == (
        "remove",
        spam,
        "cli",
        "goes",
    )
    ok(cli(tmp_path, None, "block", "add", "casino", **env))
    assert ok(cli(tmp_path, None, "block", "list", **env)) == "casino\n"
    assert ok(cli(tmp_path, None, "queue", **env)) == ""
    unknown = cli(tmp_path, None, "remove", spam, **env)
    assert unknown.returncode == 1
    assert "no message" in unknown.stderr


def test_moderation_commands_say_the_store_is_unreachable(tmp_path: Path) -> None:
    url = "redis://:s3cret-pw@127.0.0.1:1/0"
    for args in (("remove", "1-0"), ("queue",), ("audit",), ("block", "list")):
        result = cli(tmp_path, None, *args, GUESTBOOK_REDIS_LEADER_URL=url)
        assert result.returncode == 1
        assert "the store is unreachable" in result.stderr
        assert "s3cret-pw" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("command", "explains"),
    [
        (("remove",), "audit"),
        (("queue",), "oldest first"),
        (("approve",), "new message id"),
        (("reject",), "never published"),
        (("audit",), "newest first"),
        (("block", "add"), "case-insensitive"),
        (("block", "remove"), "not blocked"),
        (("block", "list"), "one a line"),
    ],
)
def test_each_moderation_command_explains_itself_and_offers_only_store_flags(
    tmp_path: Path, command: tuple[str, ...], explains: str
) -> None:
    result = cli(tmp_path, None, *command, "--help")
    assert result.returncode == 0
    assert explains in " ".join(result.stdout.split())
    for flag in ("--redis-leader-url", "--redis-follower-url", "--data-dir", "--store-timeout"):
        assert flag in result.stdout
    for flag in ("--max-message-chars", "--write-replicas", "--admin-token", "--port"):
        assert flag not in result.stdout


def test_guestbook_help_lists_the_moderation_commands(tmp_path: Path) -> None:
    help_text = ok(cli(tmp_path, None, "--help"))
    for command in ("remove", "queue", "approve", "reject", "audit", "block"):
        assert f"    {command} " in help_text
    assert ok(cli(tmp_path, None, "block", "--help")).count("pattern") >= 3
