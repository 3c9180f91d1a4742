"""Every way a request or the store fails, in one place; `problems.problem_for` is the one
function that says what each means to a client.

GuestbookError
├── Refused              a request refused as it stands, with the status given where it is
│                        raised: a body too large (413), of the wrong type (415), malformed (400)
├── InvalidMessage       the text is empty, too long or has forbidden characters (422)
├── InvalidCursor        a paging id or message id that is not a stream id (400)
├── InvalidPattern       a block-list pattern that is empty or too long (refused before any call)
├── IdempotencyConflict  an Idempotency-Key already used for a different text (422)
├── RateLimited          too many posts from one client in the last minute; carries
│                        `retry_after`, whole seconds until the next one is taken (429)
└── StoreError
    ├── StoreUnavailable     no server could answer: connection refused, reset or timed out (503)
    │   └── LeaderUnavailable    the leader is down or hung, so writes cannot be taken (503)
    └── ReplicationTimeout   the leader took the write, but fewer followers than
                             GUESTBOOK_WRITE_REPLICAS confirmed it in time (503)

An unknown message or held-post id is not an error of the store: the call answers None, and
the caller says 404.
"""

from __future__ import annotations


class GuestbookError(Exception):
    """Base of everything the store raises on purpose."""


class Refused(GuestbookError):
    """A request that cannot be taken as it is; `status` and `detail` are what the client is told.

    For what only the web layer can see (a body's size and type, a form's fields); everything
    the store decides has a class of its own below.
    """

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


class InvalidMessage(GuestbookError):
    """The text cannot be stored; the message says why, in words fit for a user."""


class InvalidCursor(GuestbookError):
    """A `before`/`after` id that is not of the form `<milliseconds>-<sequence>`."""


class InvalidPattern(GuestbookError):
    """A block-list pattern that cannot be used; the message says why."""


class IdempotencyConflict(GuestbookError):
    """The Idempotency-Key was first used for another text: a client bug, not a retry."""


class RateLimited(GuestbookError):
    """The client posted its limit within the last minute; nothing was stored."""

    def __init__(self, retry_after: int, limit: int | None = None) -> None:
        super().__init__(f"too many posts; the next one is taken in {retry_after} s")
        self.retry_after = retry_after
        self.limit = limit


class StoreError(GuestbookError):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """No server could answer in time."""


class LeaderUnavailable(StoreUnavailable):
    """The leader could not take a write in time."""


class ReplicationTimeout(StoreError):
    """The write is on the leader but not yet on enough followers."""
