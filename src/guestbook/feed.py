"""The frontend's one reader of new messages.

A single background task per process follows the stream on a follower (the leader when none
answers) with blocking reads, keeps the newest messages in memory and tells subscribers about
each new one. The first page, the most-read thing in the guestbook, is then served from memory,
so its cost does not depend on how many messages exist or how many clients ask; live clients
share this one reader instead of holding a store connection each.

The memory copy is trusted only while the reader is keeping up; otherwise reads go to the
store. It never serves a page that lacks an id the reader is known to need (its own write).
When the store cannot answer at all, `last_seen` still hands out the copy, for a page that says
it may be out of date; `unavailable` tells the live clients that the store is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from .errors import StoreUnavailable
from .messages import MAX_PAGE, Message, id_key
from .store import BLOCK_MS, MessageStore

log = logging.getLogger("guestbook.feed")

Subscriber = Callable[[list[Message]], None]
# One more than the largest page, so a full page knows whether older messages exist.
KEEP = MAX_PAGE + 1
# While nothing new arrives, how often to check that the store still holds our newest id.
CHECK_EVERY = 5.0


class Feed:
    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.recent: deque[Message] = deque(maxlen=KEEP)  # oldest first
        self.head_id: str | None = None
        self.source = "leader"
        self.version = 0
        self._synced = False
        self._fresh_at = 0.0
        self._failing = False
        self.seen_at: float | None = None  # wall-clock time of the store's last answer
        self._stale_after = BLOCK_MS / 1000 + store.timeout + 0.5
        self._subscribers: set[Subscriber] = set()
        self._stopping = False
        self._check_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._newest_first: list[Message] = []
        self._newest_first_version = -1

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="guestbook-feed")

    async def stop(self) -> None:
        # The flag as well as the cancel: a cancel that lands while a client library's own
        # read timeout fires can be lost, and the loop must still end after that read.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, self._stale_after + 1)
            self._task = None

    @property
    def live(self) -> bool:
        return self._synced and time.monotonic() - self._fresh_at < self._stale_after

    @property
    def unavailable(self) -> bool:
        """True from the moment a read finds no server answering until a read succeeds again.

        Not simply `not live`: a reader that waits out one hung follower before moving on falls
        behind for a moment without the store being gone, and visitors should not be told it is.
        """
        return self._failing

    # --- subscribers ---------------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback` with each batch of new messages (oldest first); returns unsubscribe."""
        self._subscribers.add(callback)
        return lambda: self._subscribers.discard(callback)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # --- reads ---------------------------------------------------------------------------

    def first_page(self, limit: int, must_include: str | None) -> list[Message] | None:
        """The newest `limit` messages, newest first, or None when memory cannot answer."""
        if not self.live:
            return None
        wanted = self.store.must_show(must_include)
        if wanted is not None and (self.head_id is None or id_key(self.head_id) < id_key(wanted)):
            return None
        if self._newest_first_version != self.version:
            self._newest_first = list(reversed(self.recent))
            self._newest_first_version = self.version
        return self._newest_first[: limit + 1]

    def last_seen(self, limit: int) -> list[Message] | None:
        """The newest `limit` messages (one more if there is), newest first, as the reader last
        saw them, however long ago: for when the store cannot be asked. None before the first
        read of the store."""
        if self.head_id is None:
            return None
        return list(reversed(self.recent))[: limit + 1]

    # --- the reader ----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        while not self._stopping:
            try:
                if self._synced and self.head_id is not None:
                    batch, self.source = await self.store.watch(self.head_id)
                    if not batch and time.monotonic() >= self._check_at:
                        await self._check_head()
                else:
                    await self._sync()
                    batch = []
            except StoreUnavailable:
                self._fresh_at = 0.0
                self._failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except Exception:
                log.exception("the live feed reader failed; retrying")
                self._fresh_at = 0.0
                await asyncio.sleep(1.0)
                continue
            delay = 0.05
            self._fresh_at = time.monotonic()
            self._failing = False
            self.seen_at = time.time()
            if batch:
                self._add(batch)

    async def _check_head(self) -> None:
        """Resynchronise when the store went back in time: the stream was deleted, or a
        leader without its data came back and the followers copied it. Waiting for newer
        ids alone would keep showing messages that no longer exist."""
        self._check_at = time.monotonic() + CHECK_EVERY
        newest, _ = await self.store.head(1)
        if (
            self.head_id is not None
            and self.head_id != "0-0"
            and (not newest or id_key(newest[-1].id) < id_key(self.head_id))
        ):
            log.warning("the stream is older than this frontend's copy; reloading it")
            self._synced = False

    async def _sync(self) -> None:
        messages, self.source = await self.store.head(KEEP)
        previous = self.head_id
        self.recent.clear()
        self.recent.extend(messages)
        self.head_id = messages[-1].id if messages else "0-0"
        self._synced = True
        self.version += 1
        if previous is not None:
            # A reload after the store went back in time: what is newer than the last id we
            # passed on is new to the live clients too.
            fresh = [m for m in messages if id_key(m.id) > id_key(previous)]
            if fresh:
                self._publish(fresh)

    def _add(self, batch: list[Message]) -> None:
        self.recent.extend(batch)
        self.head_id = batch[-1].id
        self.version += 1
        self._publish(batch)

    def _publish(self, batch: list[Message]) -> None:
        for callback in list(self._subscribers):
            try:
                callback(batch)
            except Exception:
                log.exception("a live subscriber failed")
