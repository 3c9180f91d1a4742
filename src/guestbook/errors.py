"""Every way the store fails, in one place.

GuestbookError
├── InvalidMessage       the text is empty, too long or has forbidden characters (422)
├── InvalidCursor        a paging id that is not a stream id (400)
└── StoreError
    ├── StoreUnavailable     no server could answer: connection refused, reset or timed out (503)
    │   └── LeaderUnavailable    the leader is down or hung, so writes cannot be taken (503)
    └── ReplicationTimeout   the leader took the write, but fewer followers than
                             GUESTBOOK_WRITE_REPLICAS confirmed it in time (503)
"""

from __future__ import annotations


class GuestbookError(Exception):
    """Base of everything the store raises on purpose."""


class InvalidMessage(GuestbookError):
    """The text cannot be stored; the message says why, in words fit for a user."""


class InvalidCursor(GuestbookError):
    """A `before`/`after` id that is not of the form `<milliseconds>-<sequence>`."""


class StoreError(GuestbookError):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """No server could answer in time."""


class LeaderUnavailable(StoreUnavailable):
    """The leader could not take a write in time."""


class ReplicationTimeout(StoreError):
    """The write is on the leader but not yet on enough followers."""
