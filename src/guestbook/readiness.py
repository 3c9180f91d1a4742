"""The one readiness rule: whether this frontend can serve reads now. `/readyz` answers it and
the `guestbook_ready` gauge reports it, so an alert on the gauge and a probe never disagree.

Its own module because both readers are far apart: `ops` (the probe) imports the app's state,
which imports `metrics` (the gauge), so the rule cannot live in either without a cycle.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import StoreUnavailable

if TYPE_CHECKING:
    from .state import AppState

# While the feed reader keeps up, a readiness ping slower than this counts as an answer: well
# inside a probe's timeout (2 s in the manifests), and a slow store is not a store gone.
SLOW_PING = 0.5


SHUTTING_DOWN = "shutting down"
STORE_UNAVAILABLE = "store unavailable"


async def not_ready(state: AppState) -> str | None:
    """Why this frontend is not ready (`SHUTTING_DOWN`, `STORE_UNAVAILABLE`), or None when it
    is: not stopping, and a store server answers now."""
    if state.shutting_down.is_set():
        return SHUTTING_DOWN
    if not await store_answers(state):
        return STORE_UNAVAILABLE
    return None


async def _ping(client: Redis) -> object:
    return await client.ping()


async def store_answers(state: AppState) -> bool:
    """Whether a store server answers now. Asked even while the feed reader is live: the
    reader learns that its server died only when its blocking read fails, and meanwhile (the
    embedded store's restart gap, say) a live flag alone would say ready with nothing there.

    While the reader keeps up, a ping that is only slow (past SLOW_PING, or timed out in the
    store) still counts, so one slow call does not flap readiness; a server that refuses the
    connection or is still loading its data does not answer, however live the reader was.
    """
    if not state.feed.live:
        return await state.store.readable()
    try:
        async with asyncio.timeout(SLOW_PING):
            await state.store.on_reader(_ping, "ping")
    except TimeoutError:
        return True
    except StoreUnavailable as exc:
        return _timed_out(exc)
    return True


def _timed_out(exc: BaseException) -> bool:
    """The store's failure was a timeout (slow), not a refusal (gone): told by its cause."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (TimeoutError, RedisTimeoutError)):
            return True
        cause = cause.__cause__
    return False
