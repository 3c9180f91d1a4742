"""The frontend's one reader of new messages and removals.

A single background task per process follows the stream on a follower (the leader when none
answers) with blocking reads, keeps the newest messages in memory (a window of WINDOW of them)
and tells subscribers about each new one. The first page, the most-read thing in the guestbook,
and every older page within the window, are then served from memory, so their cost does not
depend on how many messages exist or how many clients ask; live clients share this one reader
instead of holding a store connection each. A page beyond the window is one store read.

The same blocking read follows the removal records (`MessageStore.watch_changes`): a removed
message leaves the memory (which tops itself up from the store with one read when that leaves
it short of the largest page), `version` moves so kept answers are rebuilt, and subscribers
are told, whether or not the message was in memory (a live client may show older ones). The
feed remembers the latest removals, so that neither a follower a little behind nor a client
resuming from a recent id brings a removed message back.

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
from bisect import bisect_left
from collections import deque
from collections.abc import Callable

from .errors import StoreUnavailable
from .messages import MAX_PAGE, Message, id_key, is_id
from .store import BLOCK_MS, WATCH_BATCH, Changes, MessageStore, Removal

log = logging.getLogger("guestbook.feed")

# Called with each change: new messages (oldest first) and the ids of removed messages. Pass
# the removals on first: a message never comes with its own removal, and a client resuming
# after a message must already have had every removal recorded before it (see `removed_since`).
Subscriber = Callable[[list[Message], list[str]], None]
# The least a feed keeps: one more than the largest page, so a full first page knows whether
# older messages exist.
KEEP = MAX_PAGE + 1
# The messages kept by default: any page within the newest WINDOW is read from memory. 10,000
# messages are a few MB; a sync reads them in one round trip.
WINDOW = 10_000
# While nothing new arrives, how often to check that the store has not gone back in time.
CHECK_EVERY = 5.0
# Removals remembered: to keep a message a lagging follower still holds out of memory, and to
# answer a resuming client without a store read.
REMOVALS_KEPT = 1000
# A sync reads the removal records of this long before the newest one again: the removal head
# and the messages may come from two followers, the second a little behind the first, and a
# removal it has not applied yet must still reach the memory. Applying one twice changes nothing.
RESYNC_REMOVALS_MS = 10_000
# A `floor` that says memory holds every message there is.
EVERY_MESSAGE = "0-0"
# Live subscribers called in one go before the loop gets to its other work (a few ms).
PUBLISH_SLICE = 256


def _key(message: Message) -> tuple[int, int]:
    return id_key(message.id)


class Feed:
    def __init__(self, store: MessageStore, keep: int = WINDOW + 1) -> None:
        if keep < KEEP:
            raise ValueError(f"a feed keeps at least {KEEP} messages")
        self.store = store
        self.keep = keep
        # Oldest first, at most `keep`. A list, not a deque: pages are found by bisection.
        self.recent: list[Message] = []
        # The newest message id read (the stream cursor; that message may have been removed),
        # and its sort key, which every read from memory compares with.
        self._head_id: str | None = None
        self._head_key = (0, 0)
        # Memory holds every message from this id up to `head_id`, removed ones excepted.
        self.floor = EVERY_MESSAGE
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
        # The removal records read so far (oldest first): every one after `_removals_from`
        # up to `_removal_cursor`, at most REMOVALS_KEPT.
        self._removal_cursor = "0-0"
        self._removals_from = "0-0"
        self._removals: deque[Removal] = deque()
        self._removed_ids: set[str] = set()

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
    def head_id(self) -> str | None:
        return self._head_id

    @head_id.setter
    def head_id(self, value: str | None) -> None:
        self._head_id = value
        self._head_key = id_key(value) if value is not None else (0, 0)

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
        """Call `callback(messages, removed_ids)` with each change (see `Subscriber`); returns
        unsubscribe."""
        self._subscribers.add(callback)
        return lambda: self._subscribers.discard(callback)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # --- reads ---------------------------------------------------------------------------

    def first_page(self, limit: int, must_include: str | None) -> list[Message] | None:
        """The newest `limit` messages (one more if there is), newest first, or None when
        memory cannot answer."""
        span = self.span(limit + 1, None, must_include)
        return None if span is None else self.recent[span][::-1]

    def span(self, count: int, before: str | None, must_include: str | None) -> slice | None:
        """Where the newest `count` messages older than `before` (any when None) are in
        `recent`, without copying them (a reader of a body already built needs only to know
        that memory can answer); None when it cannot:
        the reader is not keeping up, has not read the write the reader must see, or the
        window does not reach back far enough. Valid until `recent` next changes."""
        if not self.live or self._head_id is None:
            return None
        head = self._head_key
        wanted = self.store.must_show(must_include)
        if wanted is not None and head < wanted:
            return None
        if before is None:
            end = len(self.recent)
        else:
            bound = id_key(before)
            if bound > head:
                # The store may hold messages older than `before` this reader has not read.
                return None
            end = bisect_left(self.recent, bound, key=_key)
        start = end - count
        if start < 0:
            if self.floor != EVERY_MESSAGE:
                # Older messages exist that memory lacks (beyond the window, or removals left
                # it short and it has not been topped up yet): memory cannot tell what the
                # page ends with, nor whether there is more.
                return None
            start = 0
        return slice(start, end)

    def last_seen(self, limit: int) -> list[Message] | None:
        """The newest `limit` messages (one more if there is), newest first, as the reader last
        saw them, however long ago: for when the store cannot be asked. None before the first
        read of the store."""
        if self.head_id is None:
            return None
        return self.recent[-limit - 1 :][::-1]

    def drop_now(self, message_id: str) -> None:
        """A removal this process made: out of memory at once, so the moderator's next read
        here does not show it. The removal stream brings it again, and that tells the live
        clients (dropping it twice changes nothing)."""
        if self._drop([message_id]):
            self.version += 1

    def is_removed(self, message_id: str) -> bool:
        """True for a message whose removal this feed read lately (REMOVALS_KEPT of them)."""
        return message_id in self._removed_ids

    def removed_since(self, message_id: str) -> tuple[list[str], bool]:
        """The removals in memory that a client resuming after `message_id` must be told of
        (the rule of `MessageStore.removed_since`), oldest first, and whether they are all of
        them: False when memory does not reach back to that message's millisecond, and the
        store must be asked as well. Removals read later reach the subscribers."""
        upto = id_key(message_id)
        since = (upto[0], 0)
        found: list[str] = []
        for removal in reversed(self._removals):
            if id_key(removal.record_id) < since:
                break
            if id_key(removal.message_id) <= upto:
                found.append(removal.message_id)
        found.reverse()
        # Nothing is older than the first id; a removal after `_removals_from` is in memory.
        return found, upto == (0, 0) or id_key(self._removals_from) < since

    # --- the reader ----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        while not self._stopping:
            changes: Changes | None = None
            try:
                if self._synced and self.head_id is not None:
                    if self.floor != EVERY_MESSAGE and len(self.recent) < self.keep:
                        await self._refill()
                    changes = await self.store.watch_changes(self.head_id, self._removal_cursor)
                    self.source = changes.source
                    idle = not changes.messages and not changes.removals
                    if idle and time.monotonic() >= self._check_at:
                        await self._check_head()
                else:
                    await self._sync()
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
            if changes is not None:
                await self._apply(changes)

    async def _check_head(self) -> None:
        """Resynchronise when the store went back in time: the stream was deleted, or a
        leader without its data came back and the followers copied it. Waiting for newer
        ids alone would keep showing messages that no longer exist.

        Told by the stream's last generated id, which never goes back while the stream
        exists: its newest entry does when a moderator removes the newest message."""
        self._check_at = time.monotonic() + CHECK_EVERY
        last = await self.store.last_generated_id()
        if (
            self.head_id is not None
            and self.head_id != "0-0"
            and id_key(last) < id_key(self.head_id)
        ):
            log.warning("the stream is older than this frontend's copy; reloading it")
            self._synced = False

    async def _sync(self) -> None:
        # The removal head first: a removal after it is read by the next watch, whichever
        # server answers the messages (and see RESYNC_REMOVALS_MS).
        newest_removal = await self.store.removal_head()
        messages, self.source = await self.store.head(self.keep)
        previous = self.head_id
        ms = id_key(newest_removal)[0] - RESYNC_REMOVALS_MS
        self._removal_cursor = self._removals_from = f"{ms}-0" if ms > 0 else "0-0"
        self._removals.clear()
        self._removed_ids.clear()
        self.recent = list(messages)
        self.floor = messages[0].id if len(messages) >= self.keep else EVERY_MESSAGE
        self.head_id = messages[-1].id if messages else "0-0"
        self._synced = True
        self.version += 1
        if previous is not None:
            # A reload after the store went back in time: what is newer than the last id we
            # passed on is new to the live clients too.
            fresh = [m for m in messages if id_key(m.id) > id_key(previous)]
            if fresh:
                await self._publish(fresh, [])

    async def _refill(self) -> None:
        """Top the window up after removals left it short: one read of the messages just
        older than it, as many as are missing."""
        page = await self.store.page(min(self.keep - len(self.recent), MAX_PAGE), self.floor)
        older = [m for m in page.messages if m.id not in self._removed_ids]
        self.recent[:0] = older[::-1]  # the page is newest first
        self.floor = page.messages[-1].id if page.next is not None else EVERY_MESSAGE
        if older:
            self.version += 1

    async def _apply(self, changes: Changes) -> None:
        messages = changes.messages
        removed: list[str] = []
        if changes.removals:
            removed = self._remember(changes.removals)
            if len(changes.removals) >= WATCH_BATCH:
                # More records wait: a message goes out only after every removal recorded
                # before it, or a client resuming after it could miss one. Read again next time.
                messages = []
        changed = bool(removed) and self._drop(removed)
        if messages:
            self.head_id = messages[-1].id
            if self._removed_ids:
                # A follower behind the one that reported a removal may still hand it out.
                messages = [m for m in messages if m.id not in self._removed_ids]
            if messages:
                self.recent.extend(messages)
                excess = len(self.recent) - self.keep
                if excess > 0:
                    del self.recent[:excess]
                    self.floor = self.recent[0].id
                changed = True
        if changed:
            self.version += 1
        if messages or removed:
            await self._publish(messages, removed)

    def _remember(self, removals: list[Removal]) -> list[str]:
        """Note removal records; the ids of the messages they removed."""
        self._removal_cursor = removals[-1].record_id
        removed = []
        for removal in removals:
            if not is_id(removal.message_id):
                continue  # not a record the guestbook wrote
            self._removals.append(removal)
            self._removed_ids.add(removal.message_id)
            removed.append(removal.message_id)
        while len(self._removals) > REMOVALS_KEPT:
            forgotten = self._removals.popleft()
            self._removed_ids.discard(forgotten.message_id)
            self._removals_from = forgotten.record_id
        return removed

    def _drop(self, removed: list[str]) -> bool:
        """Take removed messages out of memory; True when one was there."""
        if not self.recent:
            return False
        oldest = id_key(self.recent[0].id)
        gone = {i for i in removed if id_key(i) >= oldest}
        if not gone:
            return False
        kept = [m for m in self.recent if m.id not in gone]
        if len(kept) == len(self.recent):
            return False
        self.recent = kept
        return True

    async def _publish(self, messages: list[Message], removed: list[str]) -> None:
        # A live client's callback sends at once when it can, which costs about 10 µs: other
        # requests get the loop between slices of subscribers, rather than waiting for a
        # fan-out to ten thousand (the post that made the change among them).
        subscribers = list(self._subscribers)
        for start in range(0, len(subscribers), PUBLISH_SLICE):
            if start:
                await asyncio.sleep(0)
            for callback in subscribers[start : start + PUBLISH_SLICE]:
                try:
                    callback(messages, removed)
                except Exception:
                    log.exception("a live subscriber failed")
