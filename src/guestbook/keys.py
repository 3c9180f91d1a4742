"""The store's layout: every key guestbook keeps in Redis, what each holds, and the windows
and caps that bound them. Everything is under `guestbook:`, so a guestbook can share a server
with other data and `guestbook:*` names all of it."""

from __future__ import annotations

import hashlib

PREFIX = "guestbook:"
STREAM = PREFIX + "messages"
IMPORTED = PREFIX + "imported"
# Posts waiting for a moderator: {t: text, reason, client, c: created ms}; the id is the one
# the poster's 202 names.
HELD = PREFIX + "held"
# One record {id} per removal, read by every frontend's feed beside the messages stream.
REMOVED = PREFIX + "removed"
# Every removed id, for good: an import of an older export must not bring one back.
REMOVED_IDS = PREFIX + "removed-ids"
# {action, id, by, reason, text}; the entry's own id is when it happened.
AUDIT = PREFIX + "audit"
BLOCKED = PREFIX + "blocked"
RATE_PREFIX = PREFIX + "rate:"
DUPLICATE_PREFIX = PREFIX + "dup:"
IDEMPOTENCY_PREFIX = PREFIX + "idem:"
# Approximate caps (MAXLEN ~): the removal records only serve feeds and resuming clients, the
# audit keeps the latest hundred thousand decisions.
REMOVED_MAXLEN = 10_000
AUDIT_MAXLEN = 100_000
RATE_WINDOW_MS = 60_000
DUPLICATE_WINDOW_MS = 600_000
IDEMPOTENCY_TTL = 86_400
# Why a post is held. The caller decides all but `duplicate`, which only the store can see.
HOLD_REASONS = ("pre-moderation", "links", "blocked-pattern", "honeypot", "duplicate")
# Who holds a post that the guestbook's own rules sent to the queue, in the audit.
SYSTEM_ACTOR = "guestbook"


def digest(value: str) -> str:
    """A text's SHA-256 in hex, lone surrogates kept (JSON can carry them): what the post
    script compares texts by, and how keys made of client input stay short."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def idempotency_key_name(key: str) -> str:
    """Where a post's answer is kept for its Idempotency-Key: hashed, so any header value makes
    a short key and none is stored as it was sent."""
    return IDEMPOTENCY_PREFIX + digest(key)


# KEYS[4] of a post without a key: hashed once, not at every post.
NO_KEY = idempotency_key_name("")


def rate_key(client: str) -> str:
    """The sorted set of one client's posts in the last minute (scores: the server's ms)."""
    return RATE_PREFIX + client


def duplicate_key(client: str, text: str) -> str:
    """Set while `client` posted `text` within the last ten minutes. The NUL keeps
    ("a", "bc") and ("ab", "c") apart; neither a client address nor a text contains one."""
    return DUPLICATE_PREFIX + digest(client + "\0" + text)
