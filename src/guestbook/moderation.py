"""What moderators do to the store, and the spam rules that send a post to their queue.

- Remove: one script on the leader reads the message, deletes it from `guestbook:messages`,
  appends a record `{id}` to `guestbook:removed` and an audit entry with the text, so a message
  is never gone without a record of who, when, why and what. Every frontend's feed follows the
  removal records beside the messages (`MessageStore.watch_changes`) and drops the message from
  memory and from its live clients; followers replicate the delete and the record as one
  transaction, so no reader sees one without the other.
- Held posts wait in `guestbook:held` (put there by `MessageStore.submit`). Approving appends
  the post to the messages with a new id, as the stream's ids must grow with time, and keeps
  its original time; approving and rejecting take it out of the queue; each is audited, in the
  same script as the change it records.
- The audit log is the stream `guestbook:audit`, newest first when read.
- The block list is the set `guestbook:blocked` of case-insensitive substrings; frontends read
  it every few seconds (one SMEMBERS) and pass their verdict to `submit` as a hold reason.

Moderators' reads (queue, audit) go to the leader first: they are rare, and a moderator must
see what they have just done. The poster's view of a held post and the block list read a
follower like every other read. The `by` of every action is the caller's: the moderator's
name, or `cli`.

This module knows nothing of HTTP or the command line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from .errors import InvalidPattern, StoreUnavailable
from .keys import AUDIT, AUDIT_MAXLEN, BLOCKED, HELD, REMOVED, REMOVED_IDS, REMOVED_MAXLEN, STREAM
from .messages import Message, id_key, iso_from_ms, parse_id
from .store import Entry, MessageStore

# The actor of command-line moderation, in the audit.
CLI_ACTOR = "cli"
# Audit pages, like message pages, are bounded.
MAX_AUDIT_PAGE = 1000
MAX_QUEUE_PAGE = 1000
MAX_PATTERN_CHARS = 200
# What counts as a link: the contract's three forms. `https://www.x` is one link, not two.
_LINK = re.compile(r"https?://(?:www\.)?|www\.", re.IGNORECASE)

# Remove a message and record it, or do nothing for an id the stream does not hold. Ids come
# normalised (no leading zeros): the removed-ids set must hold what imports compare with.
_REMOVE_SCRIPT = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local text, created = '', ''
local fields = found[1][2]
for i = 1, #fields, 2 do
  if fields[i] == 't' then text = fields[i + 1] end
  if fields[i] == 'c' then created = fields[i + 1] end
end
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'id', ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'action', 'remove', 'id', ARGV[1],
  'by', ARGV[2], 'reason', ARGV[3], 'text', text)
return {text, created}
"""

# Publish a held post: a new id at the end of the messages, its original time in `c` (as an
# import keeps one), out of the queue, audited with the reason it was held for.
_APPROVE_SCRIPT = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local text, reason, created = '', '', ''
local fields = found[1][2]
for i = 1, #fields, 2 do
  local name, value = fields[i], fields[i + 1]
  if name == 't' then text = value end
  if name == 'reason' then reason = value end
  if name == 'c' then created = value end
end
if created == '' then created = string.match(ARGV[1], '^(%d+)') end
local id = redis.call('XADD', KEYS[2], '*', 't', text, 'c', created)
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'action', 'approve', 'id', ARGV[1],
  'by', ARGV[2], 'reason', reason, 'text', text)
return {id, text, created}
"""

# Drop a held post, audited with the moderator's reason, or the hold's when they gave none.
_REJECT_SCRIPT = """
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return false end
local fields = found[1][2]
local reason = ARGV[3]
local text, held_for = '', ''
for i = 1, #fields, 2 do
  if fields[i] == 't' then text = fields[i + 1] end
  if fields[i] == 'reason' then held_for = fields[i + 1] end
end
if reason == '' then reason = held_for end
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'action', 'reject', 'id', ARGV[1],
  'by', ARGV[2], 'reason', reason, 'text', text)
return found[1]
"""


@dataclass(frozen=True)
class HeldPost:
    """A post in the queue. `id` is the one its poster's 202 named."""

    id: str
    text: str
    created_at: str
    reason: str
    client: str

    @property
    def message(self) -> Message:
        return Message(self.id, self.text, self.created_at)

    def as_dict(self) -> dict[str, str]:
        """A message with its reason: what the queue shows. The client address is left out;
        a page that shows it must choose to."""
        return {**self.message.as_dict(), "reason": self.reason}


@dataclass(frozen=True)
class AuditEntry:
    """One decision. `entry_id` is the audit stream's id, the cursor for older entries."""

    entry_id: str
    at: str
    action: str
    id: str
    by: str
    reason: str
    text: str

    def as_dict(self) -> dict[str, str]:
        return {
            "at": self.at,
            "action": self.action,
            "id": self.id,
            "by": self.by,
            "reason": self.reason,
            "text": self.text,
        }


# --- spam rules (no I/O) -------------------------------------------------------------------


def count_links(text: str) -> int:
    return len(_LINK.findall(text))


def normalise_pattern(pattern: str) -> str:
    """A pattern as it is kept and compared: trimmed and case-folded, or `InvalidPattern`."""
    folded = pattern.strip().casefold()
    if not folded:
        raise InvalidPattern("A blocked pattern cannot be empty: it would match every post.")
    if len(folded) > MAX_PATTERN_CHARS:
        raise InvalidPattern(f"A blocked pattern is at most {MAX_PATTERN_CHARS} characters.")
    return folded


def hold_reason(
    text: str,
    *,
    honeypot: str | None = None,
    max_links: int,
    blocked: Iterable[str] = (),
    pre_moderation: bool = False,
) -> str | None:
    """Why this post goes to the queue instead of the page, or None.

    The most telling reason wins, so a moderator sees what is wrong with a post rather than
    that everything is held: a filled-in honeypot (a bot), a blocked pattern, too many links,
    then pre-moderation. `duplicate` is the store's to find (`MessageStore.submit`).
    `blocked` holds normalised patterns, as `blocked_patterns` returns them.
    """
    if honeypot is not None and honeypot.strip():
        return "honeypot"
    folded = text.casefold()
    if any(pattern and pattern in folded for pattern in blocked):
        return "blocked-pattern"
    if count_links(text) > max_links:
        return "links"
    if pre_moderation:
        return "pre-moderation"
    return None


# --- removal -------------------------------------------------------------------------------


async def remove(
    store: MessageStore, message_id: str, *, by: str, reason: str = ""
) -> Message | None:
    """Remove a message, with its removal record and audit entry; None for an unknown id.

    One round trip to the leader. `InvalidCursor` for a malformed id, before any call.
    """
    message_id = _normalised(message_id)
    _check_actor(by)

    async def run(client: Redis) -> Any:
        return await client.eval(
            _REMOVE_SCRIPT,
            4,
            STREAM,
            REMOVED,
            AUDIT,
            REMOVED_IDS,
            message_id,
            by,
            reason,
            str(REMOVED_MAXLEN),
            str(AUDIT_MAXLEN),
        )

    result = await store.on_leader(run, "remove")
    if result is None:
        return None
    text, created = str(result[0]), str(result[1] or "")
    return Message(
        message_id, text, iso_from_ms(int(created) if created else id_key(message_id)[0])
    )


# --- held posts ----------------------------------------------------------------------------


async def held(store: MessageStore, limit: int = 100, after: str | None = None) -> list[HeldPost]:
    """The queue, oldest first: up to `limit` held posts newer than `after`."""
    limit = max(1, min(MAX_QUEUE_PAGE, limit))
    if after is not None:
        parse_id(after, "after")
    low = f"({after}" if after else "-"

    async def fetch(client: Redis) -> list[Entry]:
        return cast(list[Entry], await client.xrange(HELD, low, "+", count=limit))

    entries = await store.leader_first(fetch, "queue")
    return [_held(entry) for entry in entries]


async def held_message(store: MessageStore, held_id: str) -> HeldPost | None:
    """A held post, for its poster's own view; None once it was approved or rejected.

    Read like the poster's own messages: a follower first, the leader when the follower does
    not have it (yet), as a post just made may not have reached the follower.
    """
    held_id = _normalised(held_id)

    async def fetch(client: Redis) -> list[Entry]:
        return cast(list[Entry], await client.xrange(HELD, held_id, held_id))

    entries, role = await store.on_reader(fetch, "held")
    if not entries and role != "leader":
        try:
            entries = await store.on_leader(fetch, "held")
        except StoreUnavailable:
            return None  # the follower's answer stands: not held, as far as it knows
    return _held(entries[0]) if entries else None


async def approve(store: MessageStore, held_id: str, *, by: str) -> Message | None:
    """Publish a held post with a new id and its original time; None for an unknown id."""
    held_id = _normalised(held_id)
    _check_actor(by)

    async def run(client: Redis) -> Any:
        return await client.eval(
            _APPROVE_SCRIPT, 3, HELD, STREAM, AUDIT, held_id, by, str(AUDIT_MAXLEN)
        )

    result = await store.on_leader(run, "approve")
    if result is None:
        return None
    message_id, text, created = str(result[0]), str(result[1]), int(result[2])
    # The approving frontend's own pages then include it, as they do the poster's own write.
    store.note_write(message_id)
    return Message(message_id, text, iso_from_ms(created))


async def reject(
    store: MessageStore, held_id: str, *, by: str, reason: str = ""
) -> HeldPost | None:
    """Drop a held post (audited); the post it was, or None for an unknown id."""
    held_id = _normalised(held_id)
    _check_actor(by)

    async def run(client: Redis) -> Any:
        return await client.eval(
            _REJECT_SCRIPT, 2, HELD, AUDIT, held_id, by, reason, str(AUDIT_MAXLEN)
        )

    result = await store.on_leader(run, "reject")
    if result is None:
        return None
    entry_id, flat = result
    return _held((str(entry_id), dict(zip(flat[::2], flat[1::2], strict=True))))


# --- audit ---------------------------------------------------------------------------------


async def audit(
    store: MessageStore, limit: int = 50, before: str | None = None
) -> list[AuditEntry]:
    """Newest first, up to `limit` audit entries older than `before` (an `entry_id`)."""
    limit = max(1, min(MAX_AUDIT_PAGE, limit))
    if before is not None and parse_id(before, "before") == (0, 0):
        return []  # nothing is older than the first id (and Redis refuses the range "(0-0")
    high = f"({before}" if before else "+"

    async def fetch(client: Redis) -> list[Entry]:
        return cast(list[Entry], await client.xrevrange(AUDIT, high, "-", count=limit))

    entries = await store.leader_first(fetch, "audit")
    return [_audit(entry) for entry in entries]


# --- block list ----------------------------------------------------------------------------


async def block_add(store: MessageStore, pattern: str) -> bool:
    """Block a pattern; False when it was blocked already."""
    folded = normalise_pattern(pattern)
    added = await store.on_leader(lambda c: c.sadd(BLOCKED, folded), "block_add")
    return bool(added)


async def block_remove(store: MessageStore, pattern: str) -> bool:
    """Unblock a pattern; False when it was not blocked."""
    folded = normalise_pattern(pattern)
    removed = await store.on_leader(lambda c: c.srem(BLOCKED, folded), "block_remove")
    return bool(removed)


async def blocked_patterns(store: MessageStore, *, on_leader: bool = False) -> frozenset[str]:
    """Every blocked pattern, normalised: one SMEMBERS on a reader, or on the leader when a
    post asks: a store that does not answer then costs the post one store timeout, as its own
    write does, not one per server it would try (posts must answer within 2 s)."""
    if on_leader:
        members = await store.on_leader(lambda c: c.smembers(BLOCKED), "blocked")
    else:
        members, _ = await store.on_reader(lambda c: c.smembers(BLOCKED), "blocked")
    return frozenset(str(m) for m in members)


# --- entries -------------------------------------------------------------------------------


def _check_actor(by: str) -> None:
    # The audit must say who: an action by nobody would be a removal without a record.
    if not by.strip():
        raise ValueError("a moderation action needs the name of who takes it")


def _normalised(value: str) -> str:
    """A message or held-post id without leading zeros, as the store writes ids; a malformed
    one is `InvalidCursor` (400) before any call."""
    ms, seq = parse_id(value, "id")
    return f"{ms}-{seq}"


def _held(entry: Entry) -> HeldPost:
    entry_id, fields = entry
    created = fields.get("c")
    ms = int(created) if created else id_key(entry_id)[0]
    return HeldPost(
        entry_id,
        fields.get("t", ""),
        iso_from_ms(ms),
        fields.get("reason", ""),
        fields.get("client", ""),
    )


def _audit(entry: Entry) -> AuditEntry:
    entry_id, fields = entry
    return AuditEntry(
        entry_id,
        iso_from_ms(id_key(entry_id)[0]),
        fields.get("action", ""),
        fields.get("id", ""),
        fields.get("by", ""),
        fields.get("reason", ""),
        fields.get("text", ""),
    )
