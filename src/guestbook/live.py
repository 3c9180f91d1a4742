"""The live feed: `GET /api/messages/stream`, Server-Sent Events fanned out from the one feed
reader of this process.

Each client gets a small queue filled by `Feed.subscribe` (or, while it is idle, the feed's
callback sends to it directly); it never holds a store connection of its own (only a resume
from an id older than the feed's memory reads the store). The stream is the stream of message
ids: every `message` event's `id:` is a message id, and a
client that comes back with `Last-Event-ID` (or `?after=`) gets exactly the messages after it,
none twice:

1. subscribe to the feed and note the feed's head, its memory and the removals it remembers in
   the same step (no await between), so the queue holds exactly what comes after;
2. send a `remove` for every message up to the client's id removed since that id was posted
   (`MessageStore.removed_since`; from the feed's memory when it reaches back far enough);
3. send the backlog between the client's id and that head (from the feed's memory when it
   reaches back far enough, else from the store, leaving out what is known to be removed);
4. send the queue, skipping any message not newer than the last id sent.

A removal is an event `remove`, data `{"id": "<message id>"}`, with no `id:` line: it must not
move the client's resume point. Every client gets one for each removal the feed reads, whether
or not it has that message (a repeated or unneeded `remove` is harmless, a missed one is not).
Queued removals go out before queued messages, and a queued message is dropped when its removal
arrives, so no client is sent a message after its removal, and a client that has a message has
every removal recorded before it: the rule step 2 relies on.

Each client is told at connect, and again whenever it changes, whether the feed's reader finds
a store server answering (an event `status`, data `{"store": "ok"}` or `{"store": "unavailable"}`):
the stream itself stays up while the store is gone, and would otherwise look healthy to a page.

A client that falls behind by more than its queue holds is told to reconnect (a `reconnect`
event, then the end of the response) and resumes from its last id; it never slows the others
or grows this process's memory. On shutdown every stream ends the same way, so browsers go
on at another frontend.

This module must never block the fan-out on one client, nor open a store connection per client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from prometheus_client import Counter
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from .errors import InvalidCursor, StoreUnavailable
from .feed import WINDOW
from .messages import ID_PATTERN, Message, id_key, parse_id
from .problems import documented_problems
from .state import AppState

log = logging.getLogger("guestbook.live")

router = APIRouter(prefix="/api", tags=["messages"])

# Messages waiting for one client before it is told to reconnect (GUESTBOOK_SSE_QUEUE) are
# never fewer than one whole batch of the feed (`MessageStore.watch` reads up to 500), or a
# burst would cut everyone.
FEED_BATCH = 500
# A client that takes no bytes for this long is dropped (its socket buffers are full).
SEND_TIMEOUT = 30.0
# Reconnect delay hints, in milliseconds. After shutdown they are spread out so that a
# frontend's clients do not all land on the next one in the same instant.
RETRY_MS = 1000
OVERFLOW_RETRY_MS = 100
SHUTDOWN_RETRY_MS = (250, 2000)
# How often the hub looks at the shutdown flag (set by the server on SIGTERM), and how often
# it looks for idle clients (due a heartbeat) and stuck ones.
SHUTDOWN_POLL = 0.1
SWEEP = 1.0
# Backlog reads from the store: page size, and how long to wait for a lagging reader.
BACKLOG_PAGE = 500
BACKLOG_ATTEMPTS = 50
# Encodings kept: as many messages as the feed keeps, so that clients resuming from anywhere
# in its memory share one encoding of each message. A smaller cache thrashes on every backlog
# longer than itself: 500 clients resuming from the start of 2,000 messages spent the whole
# process on json.dumps, and probes waited seconds.
ENCODED_CACHE = WINDOW + 1

EVENT_STREAM = "text/event-stream"
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store, no-transform"),
    # Tells nginx-style proxies not to buffer the stream.
    (b"x-accel-buffering", b"no"),
]
# A message id's sort key.
Key = tuple[int, int]
# A message's event as the hub keeps it: its id's sort key, and its bytes on the wire.
Event = tuple[Key, bytes]
_GREETING = f"retry: {RETRY_MS}\n: live\n\n".encode()
# No `id:` line: a status is not a message, and must not move a client's resume point.
STATUS_EVENTS = {
    True: b'event: status\ndata: {"store":"unavailable"}\n\n',
    False: b'event: status\ndata: {"store":"ok"}\n\n',
}


class Hub:
    """The live clients of one app: their queues, shared event encodings, and one sweeper that
    sends heartbeats, drops clients that stopped taking bytes and ends streams on shutdown.

    The sweeper does for all clients what per-client timers would otherwise do on every send
    and every wait, which keeps the fan-out of one message to a thousand clients cheap.
    """

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.heartbeat = state.settings.sse_heartbeat
        self.queue_limit = max(FEED_BATCH, state.settings.sse_queue)
        self.clients: set[Client] = set()
        self.closing = False
        self.cut = Counter(
            "guestbook_live_streams_cut",
            "Live streams the server cut short, asking the client to reconnect, by reason "
            "(overflow: the client fell behind; shutdown; unavailable: no backlog reader; "
            "stalled: took no bytes for 30 s and was dropped)",
            ["reason"],
            registry=state.metrics.registry,
        )
        self._events: OrderedDict[str, Event] = OrderedDict()
        self._removals: OrderedDict[str, bytes] = OrderedDict()
        self._sweeper: asyncio.Task[None] | None = None
        self._store_down = False
        # The last chunk built by `chunk`, for the next client at the same point.
        self._chunk: tuple[list[Message], list[str], Key, ASGIMessage | None, Key] | None = None

    def add(self, client: Client) -> None:
        self.clients.add(client)
        self.state.metrics.live_clients.set(len(self.clients))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(), name="guestbook-live")

    def remove(self, client: Client) -> None:
        self.clients.discard(client)
        self.state.metrics.live_clients.set(len(self.clients))

    async def _sweep(self) -> None:
        # The server flips a plain flag on SIGTERM and then waits for open responses to end,
        # so the streams have to notice it themselves.
        loop = asyncio.get_running_loop()
        every = min(SWEEP, self.heartbeat / 2)
        next_sweep = loop.time() + every
        while not self.state.shutting_down.is_set():
            if not self.clients:
                return
            await asyncio.sleep(SHUTDOWN_POLL)
            down = self.state.feed.unavailable
            flipped = down != self._store_down
            self._store_down = down
            now = loop.time()
            if now < next_sweep and not flipped:
                continue
            if now >= next_sweep:
                next_sweep = now + every
            for client in list(self.clients):
                if client.told_down != down and not client.status_due:
                    client.status_due = True
                    client.wake()
                if client.busy_since:
                    stuck = now - client.busy_since > SEND_TIMEOUT
                    if stuck and not client.stalled and client.task is not None:
                        self.cut.labels("stalled").inc()
                        client.stalled = True
                        client.task.cancel()
                elif now - client.sent_at >= self.heartbeat:
                    client.beat = True
                    client.wake()
        self.closing = True
        for client in list(self.clients):
            client.wake()

    def event(self, message: Message) -> Event:
        """One message's sort key and its `id:`, `event:` and `data:` lines, built once for all
        clients: the fan-out then costs each client a lookup, not an encoding or a parse."""
        event = self._events.get(message.id)
        if event is None:
            data = json.dumps(message.as_dict(), ensure_ascii=False, separators=(",", ":"))
            body = f"id: {message.id}\nevent: message\ndata: {data}\n\n".encode()
            event = self._events[message.id] = (id_key(message.id), body)
            if len(self._events) > ENCODED_CACHE:
                self._events.popitem(last=False)
        return event

    def chunk(
        self, batch: list[Message], removed: list[str], last: Key
    ) -> tuple[ASGIMessage | None, Key]:
        """What brings a client whose newest message is `last` up to date with one change of
        the feed (its removals, then its messages newer than `last`), and the newest key then;
        None when nothing is new to it: the one rule for what a client is sent, from the
        feed's callback or from its writer's queue. Idle clients are all at the same point, so
        this is built once per change, not once per client; the one message goes to each (a
        server reads it and keeps nothing of it)."""
        kept = self._chunk
        if kept is not None and kept[0] is batch and kept[1] is removed and kept[2] == last:
            return kept[3], kept[4]
        parts = [self.encode_removal(i) for i in removed]
        newest = last
        for key, body in map(self.event, batch):
            if key > newest:
                parts.append(body)
                newest = key
        message: ASGIMessage | None = None
        if parts:
            message = {"type": "http.response.body", "body": b"".join(parts), "more_body": True}
        # Holding `batch` keeps its identity from being reused by another list.
        self._chunk = (batch, removed, last, message, newest)
        return message, newest

    def encode(self, message: Message) -> bytes:
        return self.event(message)[1]

    def encode_removal(self, message_id: str) -> bytes:
        """The `remove` event of one removed message (no `id:` line), built once for all."""
        body = self._removals.get(message_id)
        if body is None:
            data = json.dumps({"id": message_id}, separators=(",", ":"))
            body = self._removals[message_id] = f"event: remove\ndata: {data}\n\n".encode()
            if len(self._removals) > ENCODED_CACHE:
                self._removals.popitem(last=False)
        return body


class _Left(Exception):
    """The client's connection has ended: its stream stops here."""


class Client:
    """One connected stream: messages and removals the feed handed over and the writer has not
    sent yet, and the `send` they go out through.

    A stream is one task, the request's own: the writer runs in it, and the end of the
    connection is heard by a callback on the pending `receive()` rather than by a second task
    awaiting it. While the writer waits with nothing queued, the feed's callback sends for it
    and it stays asleep; it wakes only for a queue, a heartbeat, a status, an end, or a send
    the server did not finish at once. Thousands of these sit idle at once, so each holds as
    little as it can."""

    __slots__ = (
        "beat",
        "busy_since",
        "failure",
        "gone",
        "hub",
        "last",
        "limit",
        "listening",
        "loop",
        "overflowed",
        "pending",
        "receive",
        "removed",
        "send",
        "sending",
        "sent_at",
        "stalled",
        "status_due",
        "task",
        "told_down",
        "waiter",
    )

    def __init__(self, hub: Hub, receive: Receive, send: Send) -> None:
        self.hub = hub
        self.receive = receive
        self.send = send
        self.loop = asyncio.get_running_loop()
        self.limit = hub.queue_limit
        # Lists, not deques: only ever extended and taken whole, and an empty list is a tenth
        # of the size of an empty deque.
        self.pending: list[Message] = []
        self.removed: list[str] = []
        self.overflowed = False
        # The connection ended; the sweeper cut this stream's stuck send.
        self.gone = False
        self.stalled = False
        self.listening: asyncio.Future[ASGIMessage] | None = None
        # A bare future rather than an asyncio.Event: this is the fan-out's inner loop.
        self.waiter: asyncio.Future[None] | None = None
        self.beat = False
        self.busy_since = 0.0
        self.sent_at = 0.0
        self.task: asyncio.Task[Any] | None = None
        # What this client was last told of the store (nothing said means it is up), and
        # whether the sweeper saw that change since.
        self.told_down = False
        self.status_due = False
        # The sort key of the newest message sent, once the writer follows the feed.
        self.last: Key = (0, 0)
        # A send begun by `push` that the server did not finish at once, for the writer to
        # finish; an error `push` met sending, for the writer to end the stream with.
        self.sending: _Finish | None = None
        self.failure: BaseException | None = None

    def push(self, batch: list[Message], removed: list[str]) -> None:
        """The feed's callback: send at once when the writer is idle, else queue, or give up
        on this client when it is too far behind."""
        if self.overflowed:
            return
        if self.waiter is not None and not self.gone:
            # The writer waits with nothing queued and nothing due (it only waits then, and
            # any of those wakes it): what it would send is exactly this, so send it from
            # here. Waking a task per client was most of the fan-out's cost.
            self._send_now(batch, removed)
            return
        if removed:
            if self.pending:
                # A message still waiting is never sent after its removal.
                gone = set(removed)
                self.pending = [m for m in self.pending if m.id not in gone]
            self.removed.extend(removed)
        if len(self.pending) + len(self.removed) + len(batch) > self.limit:
            # The client resumes from its last message, and step 2 then tells it every
            # removal it missed here.
            self.overflowed = True
            self.pending = []
            self.removed = []
            self.hub.cut.labels("overflow").inc()
        else:
            self.pending.extend(batch)
        self.wake()

    def _send_now(self, batch: list[Message], removed: list[str]) -> None:
        message, self.last = self.hub.chunk(batch, removed, self.last)
        if message is None:
            return
        # A server's `send` usually takes the bytes and is done without suspending (granian
        # buffers them); when it does suspend (its buffer is full), the writer finishes it.
        try:
            steps = self.send(message).__await__()
            waiting_on = next(steps)
        except StopIteration:
            self.sent_at = self.loop.time()
            return
        except Exception as exc:
            self.failure = exc
        else:
            self.sending = _Finish(steps, waiting_on)
            self.busy_since = self.loop.time()
        self.wake()

    def listen(self) -> None:
        """Hear the end of the connection: the server answers `receive()` with
        `http.disconnect` then."""
        listening = self.listening = asyncio.ensure_future(self.receive())
        listening.add_done_callback(self._heard)

    def _heard(self, listening: asyncio.Future[ASGIMessage]) -> None:
        if self.gone:
            return
        if (
            listening.cancelled()
            or listening.exception() is not None
            or listening.result()["type"] == "http.disconnect"
        ):
            self.gone = True
            self.wake()
        else:
            self.listen()  # a request body's part: nothing this stream reads

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def waiting(self) -> asyncio.Future[None]:
        """What to await until `wake` (a future, not a coroutine: one frame fewer to keep and
        to resume for each idle client)."""
        waiter = self.waiter = self.loop.create_future()
        return waiter

    async def put(self, chunk: bytes) -> None:
        """Send `chunk` as part of the body; `_Left` once the connection has ended."""
        if self.gone:
            raise _Left
        # The sweeper cuts this stream when one send stays stuck too long.
        self.busy_since = self.loop.time()
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        self.busy_since = 0.0
        self.sent_at = self.loop.time()

    def take(self) -> list[Message]:
        items = self.pending
        self.pending = []
        return items

    def take_removed(self) -> list[str]:
        items = self.removed
        self.removed = []
        return items


class _Finish:
    """The rest of a send that `Client.push` began outside the writer's task: awaiting this
    in the writer hands it what the send waits on, and goes on with the send until it ends."""

    __slots__ = ("steps", "waiting_on")

    def __init__(self, steps: Any, waiting_on: Any) -> None:
        self.steps = steps
        self.waiting_on = waiting_on

    def __await__(self) -> Any:
        steps, waiting_on = self.steps, self.waiting_on
        while True:
            try:
                yield waiting_on
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:  # the task was cancelled: the send hears it
                try:
                    waiting_on = steps.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = next(steps)
                except StopIteration:
                    return


class EventStream(Response):
    """A `text/event-stream` response fed by the hub; ends on disconnect, overflow, shutdown."""

    media_type = EVENT_STREAM

    def __init__(self, hub: Hub | None = None, after: str | None = None) -> None:
        self.hub = hub
        self.after = after
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self.raw_headers = _HEADERS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.hub is not None
        hub = self.hub
        feed = hub.state.feed
        client = Client(hub, receive, send)
        task = client.task = asyncio.current_task()
        hub.add(client)
        client.listen()
        unsubscribe = None
        try:
            if await self._greet(hub, client):
                unsubscribe = feed.subscribe(client.push)
                # No await between these: see step 1 of the module's docstring.
                cursor = await self._catch_up(hub, client)
                if cursor is not None:
                    await self._follow(hub, client, cursor)
        except asyncio.CancelledError:
            # The sweeper's cut of a send stuck for SEND_TIMEOUT ends this stream, and only it;
            # any other cancellation goes on up.
            if not client.stalled or task is None:
                raise
            task.uncancel()
        except (_Left, OSError):
            pass  # the connection is gone
        except Exception as exc:
            log.warning("a live stream ended with an error: %r", exc)
        finally:
            if unsubscribe is not None:
                unsubscribe()
            client.gone = True
            hub.remove(client)
            if client.listening is not None:
                client.listening.cancel()

    async def _greet(self, hub: Hub, client: Client) -> bool:
        """Start the response; False when the server is stopping (the client was told)."""
        await client.send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        feed = hub.state.feed
        # Said even when all is well: a page reconnecting after an outage must hear that it is
        # over, and cannot tell "nothing said yet" from "nothing to say".
        client.told_down = feed.unavailable
        await client.put(_GREETING + STATUS_EVENTS[client.told_down])
        # Until the feed has read the head once there is nothing to line the backlog up with;
        # the client waits (with heartbeats) rather than missing anything.
        while feed.head_id is None and not hub.closing and not client.gone:
            await asyncio.sleep(0.05)
            if client.status_due:
                await self._tell_status(hub, client)
            if client.beat:
                client.beat = False
                await client.put(b": heartbeat\n\n")
        if hub.closing:
            await self._finish(client, "shutdown")
            return False
        return True

    async def _catch_up(self, hub: Hub, client: Client) -> str | None:
        """Steps 2 and 3 of the module's docstring, called right after `subscribe`; the id the
        queue goes on from, or None when the client was told to come back later."""
        feed = hub.state.feed
        head = feed.head_id
        assert head is not None
        after = self.after
        if after is None:
            return head
        # Taken before the first await, in the same step as `subscribe`: exactly what the
        # queue will not hold. Only what is needed is copied, and nothing is kept once the
        # client has caught up: a connected client must not hold a copy of the feed's memory.
        removed, complete = feed.removed_since(after)
        floor = feed.floor
        behind = id_key(after) < id_key(head)
        recent: list[Message] = []
        if behind and id_key(floor) <= id_key(after):
            recent = feed.recent[bisect_right(feed.recent, id_key(after), key=_message_key) :]
        elif behind:
            recent = list(feed.recent)  # the store up to `floor`, then this
        cursor = after
        try:
            if not complete:
                stored = await hub.state.store.removed_since(after)
                removed = list(dict.fromkeys([*stored, *removed]))
            if removed:
                await client.put(b"".join([hub.encode_removal(i) for i in removed]))
            if behind:
                skip = set(removed)
                async for chunk in _backlog(hub, after, head, recent, floor, skip):
                    await client.put(b"".join([hub.encode(m) for m in chunk]))
                    cursor = chunk[-1].id
        except StoreUnavailable:
            # Better a reconnect a moment later than a gap.
            await self._finish(client, "unavailable")
            return None
        return cursor

    async def _follow(self, hub: Hub, client: Client, cursor: str) -> None:
        client.last = id_key(cursor)
        while True:
            if client.sending is not None:
                finish, client.sending = client.sending, None
                await finish
                client.busy_since = 0.0
                client.sent_at = client.loop.time()
                continue
            if client.failure is not None:
                raise client.failure
            if client.overflowed:
                await self._finish(client, "overflow")
                return
            if hub.closing:
                await self._finish(client, "shutdown")
                return
            if client.gone:
                return
            if client.removed:
                # Before the messages waiting beside them: see the module's docstring.
                await client.put(b"".join([hub.encode_removal(i) for i in client.take_removed()]))
                continue
            batch = client.take()
            if batch:
                message, client.last = hub.chunk(batch, [], client.last)
                if message is not None:
                    await client.put(message["body"])
                continue
            if client.status_due:
                await self._tell_status(hub, client)
                continue
            if client.beat:
                client.beat = False
                await client.put(b": heartbeat\n\n")
                continue
            await client.waiting()

    async def _tell_status(self, hub: Hub, client: Client) -> None:
        client.status_due = False
        down = hub.state.feed.unavailable
        if down != client.told_down:
            client.told_down = down
            await client.put(STATUS_EVENTS[down])

    async def _finish(self, client: Client, reason: str) -> None:
        """Tell the client to come back (from its last id) and end the response."""
        if reason == "shutdown":
            retry = random.randint(*SHUTDOWN_RETRY_MS)
        elif reason == "overflow":
            retry = OVERFLOW_RETRY_MS
        else:
            retry = RETRY_MS
        if reason != "overflow":  # counted when it happened, not once the client reads
            client.hub.cut.labels(reason).inc()
        data = json.dumps({"reason": reason, "retry": retry})
        await client.put(f"retry: {retry}\nevent: reconnect\ndata: {data}\n\n".encode())
        await client.send({"type": "http.response.body", "body": b"", "more_body": False})


def _message_key(message: Message) -> tuple[int, int]:
    return id_key(message.id)


async def _backlog(
    hub: Hub, after: str, head: str, recent: list[Message], floor: str, skip: set[str]
) -> AsyncIterator[list[Message]]:
    """Messages after `after` up to the feed's `head`, oldest first, in non-empty chunks.

    `recent` and `floor` are the feed's memory at subscription: every message from `floor` up
    to `head`, removed ones excepted, so once the cursor reaches `floor` the rest comes from
    there. Pages from the store leave out `skip` (what the client was just told is removed)
    and what the feed knows is removed: a follower a little behind may still hold it.
    """
    feed = hub.state.feed
    cursor = after
    attempts = 0
    while id_key(cursor) < id_key(head):
        if id_key(floor) <= id_key(cursor):
            # `recent` is in id order, up to 10,001 messages: found by bisection.
            chunk = recent[bisect_right(recent, id_key(cursor), key=_message_key) :]
            if chunk:
                yield chunk
            return
        page = await hub.state.store.after(cursor, BACKLOG_PAGE)
        if not page:
            if all(m.id in skip or feed.is_removed(m.id) for m in recent):
                return  # nothing after the cursor is left: it was all removed
            # The reader answering is behind this feed; the messages exist, so wait for it.
            attempts += 1
            if attempts >= BACKLOG_ATTEMPTS:
                raise StoreUnavailable("no reader has caught up with the live feed")
            await asyncio.sleep(0.1)
            continue
        attempts = 0
        cursor = page[-1].id
        chunk = [m for m in page if m.id not in skip and not feed.is_removed(m.id)]
        if chunk:
            yield chunk


def _ids(*values: str | None) -> Iterator[str]:
    return (v for v in values if v)


def _event(name: str, data: dict[str, Any], **fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "data", *fields],
        "properties": {
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
            # A parser gives every event the last `id:` it saw, also those sent without one.
            "id": {"type": "string", "pattern": ID_PATTERN},
            "retry": {"type": "integer", "minimum": 0},
            **fields,
        },
    }


_EVENT_SCHEMA: dict[str, Any] = {
    "oneOf": [
        _event(
            "message",
            {"$ref": "#/components/schemas/MessageOut"},
            id={"type": "string", "pattern": ID_PATTERN},
        ),
        _event("remove", {"type": "object", "required": ["id"]}),
        _event(
            "status",
            {
                "type": "object",
                "required": ["store"],
                "properties": {"store": {"enum": ["ok", "unavailable"]}},
            },
        ),
        _event(
            "reconnect",
            {"type": "object", "required": ["reason", "retry"]},
            retry={"type": "integer", "minimum": 0},
        ),
    ]
}


@router.get(
    "/messages/stream",
    summary="Follow new messages live (Server-Sent Events)",
    response_class=EventStream,
    status_code=200,
    responses={
        200: {
            "description": "An endless `text/event-stream`. Each new message is one event "
            "`message` whose `id:` is the message id and whose `data:` is the message as JSON "
            '(`{"id", "text", "created_at"}`). Each message a moderator removes is one event '
            '`remove` whose `data:` is `{"id": "<message id>"}`, with no `id:` line (it does not '
            "move the resume point): drop that message if it is shown. Every client gets it; a "
            "client resuming with `Last-Event-ID` or `after` first gets a `remove` for each "
            "message up to that id removed since it was posted, then the messages after it. "
            'An event `status` (data `{"store": "ok"}` or `{"store": "unavailable"}`, no `id:`) '
            "says at connect and at every change whether the store answers. A comment line is "
            'sent every 15 s while idle. An event `reconnect` (data `{"reason", "retry"}`) '
            "precedes the end of the stream when the client fell too far behind or the server "
            "is stopping: reconnect after `retry` ms with the last id received.",
            # `itemSchema` is one event, as FastAPI documents its own event streams (OpenAPI
            # 3.2's field): the `event`, `id`, `data` and `retry` fields a client parses.
            "content": {EVENT_STREAM: {"itemSchema": _EVENT_SCHEMA}},
        },
        **documented_problems({400: "`after` or `Last-Event-ID` is not a message id"}),
    },
)
async def stream(
    request: Request,
    after: Annotated[
        str | None,
        Query(
            pattern=ID_PATTERN,
            description="Resume after this message id: every newer message is sent, "
            "none twice, after a `remove` for each older one removed since. For clients that "
            "cannot send `Last-Event-ID`.",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            # Empty is what a browser sends before it has seen an id: no resume point.
            pattern=f"^(?:{ID_PATTERN[1:-1]})?$",
            description="Sent by browsers when they reconnect; takes the place of `after`.",
        ),
    ] = None,
) -> Response:
    """New messages as they are posted, and removals as moderators make them, on any frontend.
    Without `after` or `Last-Event-ID` the stream starts with the next change."""
    state: AppState = request.state.app
    return EventStream(state.hub, _resume(after, last_event_id))


def _resume(after: str | None, last_event_id: str | None) -> str | None:
    """The id to resume after, or `InvalidCursor` (400) naming what is malformed."""
    resume: str | None = None
    if last_event_id is not None and last_event_id.strip():
        resume = last_event_id.strip()
        parse_id(resume, "Last-Event-ID")
    if after is not None:
        parse_id(after, "after")
        # A browser that reconnects sends both the original `?after=` and a newer
        # Last-Event-ID; the newest id is what it has seen.
        resume = max(_ids(resume, after), key=id_key)
    return resume


async def fast_stream(request: Request, state: AppState) -> Response | None:
    """The fast path's door to the stream: a live client holds its request for minutes, and
    the framework's wrappers would cost memory for that whole time and CPU on every event.
    None for parameters other than a well-formed `after` (the route explains them)."""
    params = request.query_params
    if len(params.multi_items()) != len(params) or not set(params) <= {"after"}:
        return None
    try:
        resume = _resume(params.get("after"), request.headers.get("last-event-id"))
    except InvalidCursor:
        return None
    return EventStream(state.hub, resume)
