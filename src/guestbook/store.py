"""The message store: one Redis stream, written on the leader, read from followers.

Data model: every message is one entry of the stream `guestbook:messages`. `XADD` on the
leader appends atomically and gives each entry a unique, time-ordered id, so concurrent
writers never overwrite each other; a page is `XREVRANGE … COUNT n`, which costs the same at
ten entries as at ten million. An entry holds the text (`t`) and, only for imported messages
whose original time is not their id's, that time in milliseconds (`c`). Imports remember what
they brought in the set `guestbook:imported` and skip an entry whose id and text the stream
already holds, so importing the same file twice, or an export into its own guestbook, is a no-op.

Reads go to a follower that answered recently, then to the leader; a server that fails or
stalls is skipped for a short cool-down, so one hung follower costs one timeout, not one per
request. When the cool-down ends one read probes the server; the others wait for its answer
before they go back, so a server still hung costs one more timeout, not one per read in flight.
A read that must include a given id (the reader's own write) goes to the leader when the
follower has not caught up.

With Redis Sentinel (`sentinel.py`) the leader and followers are whatever the sentinels name
now: asked at start, every second, and at once when a write fails. A `READONLY` answer (a leader
demoted by a failover) is retried once on the leader the sentinels name then: a replica refuses
every write before executing it, so the retry cannot store a post twice. A follower serves reads
only once its own replication state shows the current data set: an old leader that comes back
with its own file, or a server in a full sync, is left out until its link to the leader is up.

Posting goes through one script on the leader (`submit`): in one round trip it replays the
answer of an earlier post with the same idempotency key, applies the per-client rate limit
(a sliding minute in `guestbook:rate:<client>`, shared by every frontend), notices the same
text from the same client within ten minutes, and then either appends to the stream or holds
the post in `guestbook:held` for a moderator, with an audit entry. Posts made at the same
moment share that round trip: one pipeline of script calls, each answered on its own (see
`_post`). Removals, the queue, the audit log and the block list are in `moderation.py`. Every
key the guestbook uses is named in `keys.py`, under `guestbook:`; the scripts are `scripts.py`.

This module knows nothing of HTTP or the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from random import getrandbits
from typing import Any, Literal, TypeVar, cast
from urllib.parse import quote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import resp
from .errors import (
    IdempotencyConflict,
    LeaderUnavailable,
    RateLimited,
    ReplicationTimeout,
    StoreUnavailable,
)
from .keys import (
    AUDIT,
    AUDIT_MAXLEN,
    DUPLICATE_WINDOW_MS,
    HELD,
    HOLD_REASONS,
    IDEMPOTENCY_TTL,
    IMPORTED,
    NO_KEY,
    RATE_WINDOW_MS,
    REMOVED,
    REMOVED_IDS,
    REMOVED_MAXLEN,
    STREAM,
    SYSTEM_ACTOR,
    digest,
    duplicate_key,
    idempotency_key_name,
    rate_key,
)
from .messages import MAX_PAGE, Message, id_key, is_id, iso_from_ms, parse_id
from .scripts import IMPORT_SCRIPT, SUBMIT_SCRIPT, SUBMIT_SHA
from .sentinel import (
    Address,
    Sentinels,
    SentinelState,
    SentinelUnavailable,
    Topology,
    address_text,
)
from .settings import Settings, StoreAddress, redact_url

log = logging.getLogger("guestbook.store")

_U64_MAX = 2**64 - 1
# After a failure a server is left alone this long before one read probes it again.
COOL_DOWN = 2.0
# With sentinels: how often the topology is asked for while nothing fails.
REFRESH_EVERY = 1.0
# Connections per server and purpose (plain calls; blocking ones). Beyond that, calls queue.
POOL_SIZE = 64
# How long one blocking read for new messages waits before it returns empty, and how many
# messages it takes at most.
BLOCK_MS = 1000
WATCH_BATCH = 500

T = TypeVar("T")
# Named once: `Literal[...]` written in a call is built anew at every post.
PostStatus = Literal["published", "held"]
Entry = tuple[str, dict[str, str]]


# A post's script call, in RESP: `EVALSHA <sha>` (or `EVAL <body>`), the key count, the keys
# (the fixed ones, then the post's own), the post's own arguments, then the fixed ones. What is
# the same for every post is packed once; `submit` packs the rest (`_QueuedPost.own`).
_FIXED_KEYS = (STREAM, HELD, AUDIT)
_FIXED_ARGS = (
    str(RATE_WINDOW_MS), str(DUPLICATE_WINDOW_MS), str(IDEMPOTENCY_TTL), str(AUDIT_MAXLEN),
    SYSTEM_ACTOR,
)  # fmt: skip
# What `submit` packs for each post: KEYS[4..6] and ARGV[1..7].
_OWN_KEYS, _OWN_ARGS = 3, 7


def _post_head(*call: str) -> bytes:
    keys = len(_FIXED_KEYS) + _OWN_KEYS
    parts = len(call) + 1 + keys + _OWN_ARGS + len(_FIXED_ARGS)
    return resp.header(parts) + resp.bulk(*call, str(keys), *_FIXED_KEYS)


_POST_BY_DIGEST = _post_head("EVALSHA", SUBMIT_SHA)
_POST_WITH_BODY = _post_head("EVAL", SUBMIT_SCRIPT)
_POST_TAIL = resp.bulk(*_FIXED_ARGS)


@dataclass
class _QueuedPost:
    """One post's own keys and arguments, packed, waiting for the batch that carries it
    (`_post`)."""

    own: bytes
    answer: asyncio.Future[tuple[Any, int]]


@dataclass
class Server:
    """One Redis-protocol server and what we last saw of its health."""

    url: str
    role: str
    client: Redis
    # A second pool for blocking reads (XREAD BLOCK), whose socket timeout must outlast them.
    blocking: Redis
    # 0 while healthy; after a failure, when the cool-down ends.
    down_until: float = 0.0
    # A read is probing the server after its cool-down: the others wait for its answer.
    probing: bool = False
    # With sentinels: this follower's data is the current leader's (see `_trusted`).
    trusted: bool = False
    # The post script was run here by this process: posts may name it by its digest.
    knows_post_script: bool = False

    @property
    def name(self) -> str:
        return redact_url(self.url)

    def usable(self, now: float) -> bool:
        """Healthy, or out of its cool-down with no probe in flight (the caller may probe)."""
        return self.down_until == 0.0 or (now >= self.down_until and not self.probing)


@dataclass(frozen=True)
class Page:
    messages: list[Message]
    next: str | None
    source: str


@dataclass(frozen=True)
class PostResult:
    """What became of a post: `published` (on the page) or `held` (in the queue, `reason`
    saying why). `message.id` is the message's id, or the held post's, which `approve` and the
    poster's own view take. `replayed`: an earlier post with the same idempotency key was
    answered this, and nothing new was stored."""

    status: Literal["published", "held"]
    message: Message
    reason: str | None = None
    replayed: bool = False

    @property
    def held(self) -> bool:
        return self.status == "held"


@dataclass(frozen=True)
class Removal:
    """A removal record: `record_id` is when (an id of `guestbook:removed`), `message_id` what."""

    record_id: str
    message_id: str


@dataclass(frozen=True)
class Changes:
    """What `watch_changes` saw: new messages (oldest first), new removal records, the role of
    the server read."""

    messages: list[Message]
    removals: list[Removal]
    source: str


@dataclass(frozen=True)
class ServerStatus:
    url: str
    reachable: bool
    link: str | None = None
    lag_bytes: int | None = None
    lag_seconds: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "reachable": self.reachable,
            "link": self.link,
            "lag_bytes": self.lag_bytes,
            "lag_seconds": self.lag_seconds,
        }


@dataclass(frozen=True)
class SentinelStatus:
    service: str
    sentinels: list[SentinelState]

    def as_dict(self) -> dict[str, Any]:
        return {"service": self.service, "sentinels": [s.as_dict() for s in self.sentinels]}


@dataclass(frozen=True)
class StoreStatus:
    leader: ServerStatus
    followers: list[ServerStatus]
    message_count: int | None
    last_id: str | None
    # With sentinels: each one, whether it answers and whom it names leader.
    sentinel: SentinelStatus | None = None

    @property
    def readable(self) -> bool:
        return self.leader.reachable or any(f.reachable for f in self.followers)


def _client(url: str, timeout: float) -> Redis:
    # A burst of requests beyond the pool's size waits for a free connection (within the
    # call's deadline) instead of failing at once, as redis-py's default pool would.
    # One quick retry lets a pooled connection that died with a restarted server reconnect;
    # every call is also bounded by `timeout` as a whole, so retrying never stretches it.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=timeout,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
        client_name="guestbook",
    )
    return Redis.from_pool(pool)


class NotLeader(StoreUnavailable):
    """The server written to answered READONLY: a replica now, and it stored nothing."""


@dataclass
class MessageStore:
    # None with `sentinels`: the leader is whoever they name (see `start`).
    leader_url: str | None
    follower_urls: Sequence[str] = ()
    timeout: float = 1.0
    write_replicas: int = 0
    # The command line reads the leader first: a separate process has no read-your-writes
    # cookie, and an operator expects `list` to show the post they just made.
    read_leader_first: bool = False
    # Told of every call: (operation, server role, error name or None when it starts).
    observer: Callable[[str, str, str | None], None] | None = None
    # Redis Sentinel: who leads is asked of them (`start`, `refresh`); the servers they name
    # are dialled with `server_password` (never shown: the URLs are redacted wherever named).
    sentinels: Sentinels | None = None
    server_password: str | None = field(default=None, repr=False)
    _leader_server: Server | None = field(init=False, default=None)
    _followers: list[Server] = field(init=False)
    # Every server made, to close; with sentinels, each by URL, so that a server that changes
    # role keeps its record and its connections.
    _servers: list[Server] = field(init=False, default_factory=list)
    _known: dict[str, Server] = field(init=False, default_factory=dict)
    _turn: int = field(init=False, default=0)
    _refreshing: asyncio.Task[None] | None = field(init=False, default=None)
    _watcher: asyncio.Task[None] | None = field(init=False, default=None)
    # With sentinels: what they last answered and when (monotonic), or why none did.
    _topology: Topology | None = field(init=False, default=None)
    _asked_at: float = field(init=False, default=0.0)
    _sentinel_error: str | None = field(init=False, default=None)
    # The sort key of this process's newest write, which every read from memory compares
    # with (`must_show`).
    _last_write_key: tuple[int, int] | None = field(init=False, default=None)
    # Posts made in this turn of the event loop, sent together at the next (`_post`), and the
    # batches on the wire.
    _posts: list[_QueuedPost] = field(init=False, default_factory=list)
    _posts_due: bool = field(init=False, default=False)
    _sending: set[asyncio.Task[None]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        if self.leader_url is not None:
            self._leader_server = self._server(self.leader_url, "leader")
        elif self.sentinels is None:
            raise ValueError("a MessageStore needs a leader URL or sentinels")
        self._followers = [self._server(url, "follower") for url in self.follower_urls]

    def _server(self, url: str, role: str) -> Server:
        blocking = _client(url, self.timeout + BLOCK_MS / 1000)
        server = Server(url, role, _client(url, self.timeout), blocking)
        self._servers.append(server)
        return server

    def _named(self, url: str, role: str) -> Server:
        """The one record of a server the sentinels name, in the role they give it now."""
        server = self._known.get(url)
        if server is None:
            server = self._known[url] = self._server(url, role)
        server.role = role
        return server

    async def start(self) -> None:
        """With sentinels: ask them who leads (a store nobody names yet answers 503 until they
        do), then keep asking in the background. Without: nothing to do."""
        if self.sentinels is None:
            return
        await self.refresh()
        self._watcher = asyncio.create_task(self._follow_sentinels(), name="guestbook-sentinels")

    async def close(self) -> None:
        for task in (self._watcher, self._refreshing, *self._sending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for server in self._servers:
            await server.client.aclose()
            await server.blocking.aclose()
        if self.sentinels is not None:
            await self.sentinels.close()

    @property
    def leader_name(self) -> str:
        leader = self._leader_server
        return leader.name if leader is not None else "none (the sentinels name no leader yet)"

    @property
    def follower_names(self) -> list[str]:
        return [f.name for f in self._followers]

    def _the_leader(self) -> Server:
        if self._leader_server is None:
            raise StoreUnavailable("no leader is known: no sentinel has named one yet")
        return self._leader_server

    # --- following the sentinels --------------------------------------------------------------

    async def _follow_sentinels(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            try:
                await self.refresh()
            except Exception:
                # A surprise in an answer must not end the following for good.
                log.exception("asking the sentinels failed; asking again in a second")

    async def refresh(self) -> None:
        """Ask the sentinels now. Callers at the same moment share one question; a caller
        that is cancelled does not cancel it for the others."""
        if self.sentinels is None:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_once())
        await asyncio.shield(self._refreshing)

    def _refresh_soon(self) -> None:
        if self.sentinels is not None and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh_once())

    async def _refresh_once(self) -> None:
        assert self.sentinels is not None
        try:
            topology = await self.sentinels.ask()
        except SentinelUnavailable as exc:
            # Keep what was known: a leader that still answers beats none.
            log.warning("%s; keeping the last topology", exc)
            self._sentinel_error = str(exc)
            return
        self._topology, self._asked_at, self._sentinel_error = topology, time.monotonic(), None
        leader = self._named(self._url_at(topology.leader), "leader")
        # A leader's data is the truth; should it be demoted, it follows like any other.
        leader.trusted = False
        candidates = [
            self._named(self._url_at(a), "follower")
            for a in topology.followers
            if a != topology.leader
        ]
        infos = await asyncio.gather(*(self._info(s) for s in candidates))
        followers = [s for s, info in zip(candidates, infos, strict=True) if _trusted(s, info)]
        previous = self._leader_server
        if previous is None:
            log.info("the sentinels name the leader: %s", leader.name)
        elif previous is not leader:
            log.warning("the sentinels name a new leader: %s (was %s)", leader.name, previous.name)
        self._leader_server = leader
        self._followers = followers

    def sentinel_summary(self) -> str | None:
        """One line on what the sentinels last said (for readiness), None without sentinels.
        Addresses only: the sentinels never hand out a password."""
        if self.sentinels is None:
            return None
        if self._topology is None:
            return f"sentinels: none has named a leader yet ({self._sentinel_error})"
        ago = time.monotonic() - self._asked_at
        line = (
            f"sentinels: leader {address_text(self._topology.leader)}, "
            f"{len(self._followers)} follower(s) serving reads, "
            f"named by {address_text(self._topology.sentinel)} {ago:.1f} s ago"
        )
        return line + (f"; since then: {self._sentinel_error}" if self._sentinel_error else "")

    def _url_at(self, address: Address) -> str:
        # Quoted: a password may hold any character, `@` and `/` included.
        auth = f":{quote(self.server_password, safe='')}@" if self.server_password else ""
        return f"redis://{auth}{address_text(address)}/0"

    # --- calls with a deadline -------------------------------------------------------------

    async def _call(
        self,
        server: Server,
        op: Callable[[Redis], Awaitable[T]],
        name: str,
        extra: float = 0.0,
    ) -> T:
        """Run `op` on `server` within the timeout; record and raise `StoreUnavailable`."""
        if self.observer is not None:
            self.observer(name, server.role, None)
        # Out of its cool-down (or called directly, as writes are): this call is the probe,
        # and lets the others go back when it ends, however it ends (cancelled, too).
        probe = server.down_until != 0.0 and not server.probing
        if probe:
            server.probing = True
        try:
            return await self._timed_call(server, op, name, extra)
        finally:
            if probe:
                server.probing = False

    async def _timed_call(
        self,
        server: Server,
        op: Callable[[Redis], Awaitable[T]],
        name: str,
        extra: float,
    ) -> T:
        try:
            async with asyncio.timeout(self.timeout + extra):
                try:
                    result = await op(server.blocking if extra else server.client)
                except RuntimeError as exc:
                    # uvloop refuses a write on a transport the server has just closed (a
                    # leader killed or restarting while redis-py reconnects) with a
                    # RuntimeError that redis-py passes on: a connection lost, not a bug.
                    if "handler is closed" not in str(exc):
                        raise
                    raise RedisConnectionError(str(exc)) from exc
        except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # redis-py may turn our own cancellation into a connection error; it must
                # stay a cancellation, or the caller would retry instead of stopping.
                raise asyncio.CancelledError from exc
            self._mark_down(server, name, type(exc).__name__)
            # A refused password is no network fault: say so, or an operator hunts for one.
            why = (
                "refused the credentials (wrong password or user)"
                if isinstance(exc, AuthenticationError)
                else "did not answer"
            )
            raise StoreUnavailable(f"{server.role} {server.name} {why}") from exc
        except ResponseError as exc:
            # A server that cannot serve this now: LOADING (restarted, reading its file),
            # MASTERDOWN (a follower cut from its leader), READONLY (a leader demoted by hand
            # or by a failover). redis-py strips the code from the errors it has classes for,
            # so those are told by class. Treated as unavailability: 503, and asked again.
            transient = _transient_error(exc)
            if transient is not None:
                self._mark_down(server, name, transient)
                unavailable = NotLeader if transient == "READONLY" else StoreUnavailable
                raise unavailable(f"{server.role} {server.name} cannot serve yet") from exc
            if self.observer is not None:
                self.observer(name, server.role, "ResponseError")
            raise
        server.down_until = 0.0
        return result

    def _mark_down(self, server: Server, name: str, error: str) -> None:
        """Leave `server` alone for the cool-down, and count why."""
        server.down_until = time.monotonic() + COOL_DOWN
        if self.observer is not None:
            self.observer(name, server.role, error)

    async def _write(self, op: Callable[[Redis], Awaitable[T]], name: str, extra: float = 0.0) -> T:
        """Run a write on the leader; a leader that cannot take it is `LeaderUnavailable`.

        With sentinels, a failed write asks them again at once, and a READONLY one (a demoted
        leader, which refused the write before running it) is retried on the new leader."""
        try:
            leader = self._the_leader()
            return await self._call(leader, op, name, extra)
        except NotLeader as exc:
            if self.sentinels is not None:
                with contextlib.suppress(Exception):  # logged by the background follower
                    await self.refresh()
                now = self._leader_server
                if now is not None and now is not leader:
                    try:
                        return await self._call(now, op, name, extra)
                    except StoreUnavailable as again:
                        self._refresh_soon()
                        raise LeaderUnavailable("the new leader cannot take writes yet") from again
            raise LeaderUnavailable("the leader cannot take writes right now") from exc
        except StoreUnavailable as exc:
            self._refresh_soon()
            raise LeaderUnavailable("the leader cannot take writes right now") from exc

    def _readers(self) -> tuple[list[Server], list[Server]]:
        """Followers that answered recently (rotating), then the leader; with
        `read_leader_first`, the leader before them all. Second, the servers in cool-down (or
        being probed), tried only when none of the first could answer."""
        now = time.monotonic()
        leader = [self._leader_server] if self._leader_server is not None else []
        followers = self._followers
        order: list[Server] = list(leader) if self.read_leader_first else []
        if followers:
            self._turn += 1
            start = self._turn % len(followers)
            order.extend(f for f in followers[start:] + followers[:start] if f.usable(now))
        if not self.read_leader_first:
            order.extend(leader)
        return order, [f for f in followers if not f.usable(now)]

    async def _read(
        self, op: Callable[[Redis], Awaitable[T]], name: str, extra: float = 0.0
    ) -> tuple[T, Server]:
        """Run `op` on the first reader that answers (see `_readers`)."""
        last: StoreUnavailable | None = None
        first, rest = self._readers()
        for server in first:
            if not server.usable(time.monotonic()):
                # Failed, or taken for a probe by another read, since the order was made.
                rest.append(server)
                continue
            try:
                return await self._call(server, op, name, extra), server
            except StoreUnavailable as exc:
                last = exc
        # Better a slow answer than none.
        for server in rest:
            try:
                return await self._call(server, op, name, extra), server
            except StoreUnavailable as exc:
                last = exc
        raise StoreUnavailable("no store server could serve the read") from last

    # The same wrappers for modules beside this one (moderation.py): their calls then get the
    # deadline, the cool-down, the error mapping and the observer as the store's own do.

    async def on_leader(
        self, op: Callable[[Redis], Awaitable[T]], name: str, extra: float = 0.0
    ) -> T:
        """Run a write on the leader (`LeaderUnavailable` when it cannot take it)."""
        return await self._write(op, name, extra)

    async def on_reader(
        self, op: Callable[[Redis], Awaitable[T]], name: str, extra: float = 0.0
    ) -> tuple[T, str]:
        """Run a read on the first reader that answers; the result and that server's role."""
        result, server = await self._read(op, name, extra)
        return result, server.role

    async def leader_first(self, op: Callable[[Redis], Awaitable[T]], name: str) -> T:
        """Run a read on the leader, which has every acknowledged write, or on the usual
        readers when it cannot answer: for rare reads that must show what was just done."""
        try:
            return await self._call(self._the_leader(), op, name)
        except StoreUnavailable:
            result, _ = await self._read(op, name)
            return result

    # --- writes ------------------------------------------------------------------------------

    async def append(self, text: str) -> Message:
        """Append a message on the leader; with write_replicas, wait until followers have it."""
        if self.write_replicas:
            entry_id, acked = await self._append_and_wait(text)
        else:

            async def add(client: Redis) -> str:
                return str(await client.xadd(STREAM, {"t": text}))

            entry_id = await self._write(add, "append")
            acked = 0
        self._note_write(entry_id)
        if acked < self.write_replicas:
            raise ReplicationTimeout(
                f"the message was written, but only {acked} of {self.write_replicas} "
                "followers confirmed it in time"
            )
        return Message(entry_id, text, iso_from_ms(id_key(entry_id)[0]))

    async def _append_and_wait(self, text: str) -> tuple[str, int]:
        """XADD then WAIT on one connection: WAIT counts the followers that have every write
        of *its own connection*, so on another pooled connection it would count nothing.

        WAIT blocks on the server for up to wait_ms by design, so the call gets that long on
        top of the usual timeout, on the pool whose sockets allow blocking commands.
        """
        entry_id, acked = await self._write_and_wait(
            lambda pipe: pipe.xadd(STREAM, {"t": text}), "append"
        )
        return str(entry_id), acked

    def _wait_ms(self) -> int:
        """How long a WAIT may block on the server: most of the call's timeout."""
        return max(1, int(self.timeout * 1000 * 0.8))

    async def _write_and_wait(self, queue: Callable[[Any], object], name: str) -> tuple[Any, int]:
        """One write, queued by `queue` on a pipeline, then WAIT, in one round trip (see
        `_append_and_wait`); the write's reply and the number of followers that confirmed."""
        wait_ms = self._wait_ms()

        async def write_and_wait(client: Redis) -> tuple[Any, int]:
            pipe = client.pipeline(transaction=False)
            queue(pipe)
            pipe.wait(self.write_replicas, wait_ms)
            reply, acked = await pipe.execute()
            return reply, int(acked)

        return await self._write(write_and_wait, name, extra=wait_ms / 1000)

    async def submit(
        self,
        text: str,
        client: str,
        *,
        hold_reason: str | None = None,
        rate_limit: int = 0,
        idempotency_key: str | None = None,
    ) -> PostResult:
        """Post `text` (already cleaned) from `client`, in one round trip to the leader.

        `hold_reason` is the caller's verdict (pre-moderation, links, blocked-pattern,
        honeypot); the store adds `duplicate`. `rate_limit` posts per minute per client, counted
        across every frontend (0: no limit); over it, `RateLimited` and nothing stored. With an
        `idempotency_key`, a retry within 24 h gets the first answer and stores nothing, even
        when the first one failed after the write (a WAIT shortfall, a lost answer); the same
        key with another text is `IdempotencyConflict`. With write_replicas, the answer waits
        for the followers as `append` does, and a shortfall is `ReplicationTimeout` — the post
        is stored, and a retry with the same key says so.
        """
        if hold_reason is not None and hold_reason not in HOLD_REASONS:
            raise ValueError(f"unknown hold reason {hold_reason!r}")
        # `_OWN_KEYS` keys and `_OWN_ARGS` arguments; the others are the same for every post.
        own = resp.bulk(
            # Without a key the script never touches KEYS[4]; it is named, as every key is.
            idempotency_key_name(idempotency_key) if idempotency_key is not None else NO_KEY,
            rate_key(client),
            duplicate_key(client, text),
            text,
            client,
            hold_reason or "",
            str(max(0, rate_limit)),
            "1" if idempotency_key is not None else "0",
            # What a retry with the key is compared by; the script reads it only with a key.
            digest(text) if idempotency_key is not None else "",
            # This post's own mark, the same in every send of it: a batch sent again after its
            # connection was lost mid-answer (`resp.exchange`'s retry) may have run already,
            # and the script then answers what it answered instead of a duplicate of itself.
            f"{getrandbits(64):016x}",
        )
        reply, acked = await self._post(own)
        kind = str(reply[0])
        if kind == "conflict":
            raise IdempotencyConflict("this Idempotency-Key was first used for another message")
        if kind == "rate":
            raise RateLimited(max(1, math.ceil(int(reply[1]) / 1000)), rate_limit)
        status = cast(PostStatus, kind)
        entry_id, reason, replayed = str(reply[1]), str(reply[2] or ""), reply[3] == "1"
        # A published message's time is its id's (as `_message` reads it back); a held post's
        # is the one it keeps in `c` through approval.
        created_ms = id_key(entry_id)[0] if status == "published" else int(reply[4])
        if status == "published":
            self._note_write(entry_id)
        if acked < self.write_replicas:
            raise ReplicationTimeout(
                f"the message was written, but only {acked} of {self.write_replicas} "
                "followers confirmed it in time"
            )
        return PostResult(
            status,
            Message(entry_id, text, iso_from_ms(created_ms)),
            reason or None,
            replayed,
        )

    async def _post(self, own: bytes) -> tuple[Any, int]:
        """One post's script reply, and with write_replicas how many followers confirmed it.

        Every post made in the same turn of the event loop goes in one pipeline, sent at the
        next turn: one round trip and one socket write for them all, and with write_replicas
        one WAIT after them, which counts followers that have every write of its connection,
        so each post's figure is right. A post cancelled before its batch leaves stores nothing.
        """
        loop = asyncio.get_running_loop()
        queued = _QueuedPost(own, loop.create_future())
        self._posts.append(queued)
        if not self._posts_due:
            self._posts_due = True
            loop.call_soon(self._send_posts)
        return await queued.answer

    def _send_posts(self) -> None:
        self._posts_due = False
        batch = [post for post in self._posts if not post.answer.done()]
        self._posts = []
        if batch:
            # A task of its own: no one post's cancellation (its client left) cancels the others.
            task = asyncio.get_running_loop().create_task(self._send_batch(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send_batch(self, batch: list[_QueuedPost]) -> None:
        wait_ms = self._wait_ms()
        run = partial(self._run_posts, batch, wait_ms)
        try:
            # WAIT blocks on the server by design: the call gets that long on top.
            extra = wait_ms / 1000 if self.write_replicas else 0.0
            replies, acked = await self._write(run, "post", extra=extra)
        except BaseException as exc:
            for post in batch:
                if post.answer.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    post.answer.cancel()
                else:
                    post.answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for post, reply in zip(batch, replies, strict=True):
            if post.answer.done():
                continue
            if isinstance(reply, ResponseError):
                post.answer.set_exception(self._post_error(reply))
            else:
                post.answer.set_result((reply, acked))

    async def _run_posts(
        self, batch: list[_QueuedPost], wait_ms: int, client: Redis
    ) -> tuple[list[Any], int]:
        """Each post of `batch` by EVALSHA, then WAIT when asked, in one pipeline; posts the
        server did not know the script for (it restarted, a SCRIPT FLUSH) did not run, and go
        again with the body, which caches it for the next ones."""
        # None when sentinels replaced the servers since this call began: the body, then.
        server = next((s for s in self._servers if client in (s.client, s.blocking)), None)
        # The body the first time: a post the server is sent but runs late (a stalled leader,
        # answered 503) is then stored as sent, and a retry with its key finds it.
        known = server is not None and server.knows_post_script
        replies, acked = await self._pipeline(client, batch, wait_ms, by_digest=known)
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:
            again, acked = await self._pipeline(
                client, [batch[i] for i in unknown], wait_ms, by_digest=False
            )
            for i, reply in zip(unknown, again, strict=True):
                replies[i] = reply
        if server is not None:
            server.knows_post_script = True
        refused = [r for r in replies if isinstance(r, ResponseError) and _transient_error(r)]
        if refused and len(refused) == len(replies):
            # Nothing ran (a READONLY replica refuses every write before running it): raised
            # for the batch, so `_write` may send it all to a new leader.
            raise refused[0]
        return replies, acked

    async def _pipeline(
        self, client: Redis, batch: list[_QueuedPost], wait_ms: int, *, by_digest: bool
    ) -> tuple[list[Any], int]:
        head = _POST_BY_DIGEST if by_digest else _POST_WITH_BODY
        packed = b"".join([part for post in batch for part in (head, post.own, _POST_TAIL)])
        if self.write_replicas:
            packed += resp.command("WAIT", str(self.write_replicas), str(wait_ms))
        replies = await resp.exchange(client, packed, len(batch) + bool(self.write_replicas))
        if not self.write_replicas:
            return replies, 0
        acked = replies.pop()
        return replies, 0 if isinstance(acked, Exception) else int(acked)

    def _post_error(self, error: ResponseError) -> Exception:
        """What one post of a batch raises for the error the server answered it: a state that
        passes (the rest of the batch ran) is the leader's unavailability, as for one post."""
        code = _transient_error(error)
        if code is not None:
            leader = self._leader_server
            if leader is not None:
                self._mark_down(leader, "post", code)
            unavailable = LeaderUnavailable("the leader cannot take writes right now")
            unavailable.__cause__ = error
            return unavailable
        if self.observer is not None:
            self.observer("post", "leader", "ResponseError")
        return error

    def note_write(self, entry_id: str) -> None:
        """Remember a message this process wrote another way (an approval in moderation.py),
        so that its pages show it as they show its own posts."""
        self._note_write(entry_id)

    def must_show(self, must_include: str | None) -> tuple[int, int] | None:
        """The read-your-writes rule, the one definition: a read must hold the newer of the
        reader's own write (its cookie) and this process's last write, when there is one;
        answered as the id's sort key (`id_key`), which is what a read compares."""
        # Asked by every read served from memory: no list built for the usual one-or-none.
        last = self._last_write_key
        if not must_include:
            return last
        wanted = id_key(must_include)
        return wanted if last is None or wanted >= last else last

    def _note_write(self, entry_id: str) -> None:
        key = id_key(entry_id)
        if self._last_write_key is None or key > self._last_write_key:
            self._last_write_key = key

    async def import_message(
        self, source_key: str, text: str, created_ms: int, wanted_id: str | None
    ) -> str | None:
        """Append an imported message unless it is here already; the new id, or None."""

        async def run(client: Redis) -> Any:
            return await client.eval(
                IMPORT_SCRIPT,
                3,
                STREAM,
                IMPORTED,
                REMOVED_IDS,
                source_key,
                wanted_id or "",
                text,
                str(created_ms),
            )

        result = await self._write(run, "import")
        if result is None:
            return None
        self._note_write(str(result))
        return str(result)

    # --- reads -------------------------------------------------------------------------------

    async def page(
        self, limit: int = 50, before: str | None = None, must_include: str | None = None
    ) -> Page:
        """Newest first, `limit` messages older than `before`; `next` is the cursor onwards.

        `must_include` is an id the reader wrote: when a follower's newest entry is older,
        the page comes from the leader instead, so a poster always sees their own message.
        """
        limit = max(1, min(MAX_PAGE, limit))
        wanted = self.must_show(must_include)
        if before is not None:
            bound = parse_id(before)
            if bound == (0, 0):
                return Page([], None, "leader")  # nothing is older than the first id
            if wanted is not None and wanted >= bound:
                wanted = None  # the write is newer than this page: it is not one of its messages
        high = f"({before}" if before else "+"

        async def fetch(client: Redis) -> tuple[list[Entry], str | None]:
            if before is None or wanted is None:
                entries = await _xrevrange(client, high, limit + 1)
                return entries, entries[0][0] if entries and before is None else None
            # An older page says nothing of how far the server has got: ask for its newest id
            # in the same round trip, to tell whether it holds the write we must show.
            pipe = client.pipeline(transaction=False)
            pipe.xrevrange(STREAM, high, "-", count=limit + 1)
            pipe.xrevrange(STREAM, "+", "-", count=1)
            entries, head = cast(tuple[list[Entry], list[Entry]], await pipe.execute())
            return entries, head[0][0] if head else None

        (entries, head), server = await self._read(fetch, "page")
        if (
            wanted is not None
            and server is not self._leader_server
            and (head is None or id_key(head) < wanted)
        ):
            try:
                server = self._the_leader()
                entries, head = await self._call(server, fetch, "page")
            except StoreUnavailable:
                pass  # the follower's slightly older page beats no page
        more = len(entries) > limit
        entries = entries[:limit]
        messages = [_message(entry) for entry in entries]
        return Page(messages, messages[-1].id if more and messages else None, server.role)

    async def head(self, count: int) -> tuple[list[Message], str]:
        """The newest `count` messages, oldest first, and the role of the server read."""
        entries, server = await self._read(lambda c: _xrevrange(c, "+", count), "head")
        return [_message(entry) for entry in reversed(entries)], server.role

    async def watch(self, after_id: str) -> tuple[list[Message], str]:
        """Wait up to BLOCK_MS for messages newer than `after_id` on the best reader.

        Ids are the leader's, the same on every follower, so a watch may move between servers
        without losing or repeating anything.
        """

        async def block(client: Redis) -> Any:
            return await client.xread({STREAM: after_id}, count=WATCH_BATCH, block=BLOCK_MS)

        result, server = await self._read(block, "watch", extra=BLOCK_MS / 1000)
        entries: list[Entry] = result[0][1] if result else []
        return [_message(entry) for entry in entries], server.role

    async def after(self, after_id: str, count: int = 1000) -> list[Message]:
        """Messages newer than `after_id`, oldest first (for resuming a live feed)."""
        if parse_id(after_id, "after") == (_U64_MAX, _U64_MAX):
            return []  # nothing can be newer than the last possible id

        async def fetch(client: Redis) -> list[Entry]:
            return await _xrange(client, f"({after_id}", count)

        entries, _ = await self._read(fetch, "after")
        return [_message(entry) for entry in entries]

    async def watch_changes(self, after_id: str, removals_after: str) -> Changes:
        """`watch`, and removal records newer than `removals_after`, in one blocking read.

        One XREAD of both streams answers from one moment of one server: a follower applies
        a removal's XDEL and its record together (the script's effects replicate as one
        transaction), so a batch never holds a message whose removal it also reports, and a
        reader that sees a record will no longer read the message from that server.
        """

        async def block(client: Redis) -> Any:
            return await client.xread(
                {STREAM: after_id, REMOVED: removals_after}, count=WATCH_BATCH, block=BLOCK_MS
            )

        result, server = await self._read(block, "watch", extra=BLOCK_MS / 1000)
        messages: list[Message] = []
        removals: list[Removal] = []
        for stream, entries in result or []:
            if stream == STREAM:
                messages = [_message(entry) for entry in entries]
            else:
                removals = [_removal(entry) for entry in entries]
        return Changes(messages, removals, server.role)

    async def last_generated_id(self) -> str:
        """The newest id the stream ever gave (`0-0` for none), even when a moderator removed
        that message since. A feed tells a store gone back in time by this, not by its newest
        entry, which a removal makes older without anything going back."""

        async def fetch(client: Redis) -> str:
            try:
                info = await client.xinfo_stream(STREAM)
            except ResponseError as exc:
                if "no such key" in str(exc).lower():
                    return "0-0"
                raise
            return str(info["last-generated-id"])

        result, _ = await self._read(fetch, "last_id")
        return result

    async def removal_head(self) -> str:
        """The newest removal record's id (`0-0` when there is none): where a feed that has
        just read the messages starts following removals."""
        entries, _ = await self._read(
            lambda c: c.xrevrange(REMOVED, "+", "-", count=1), "removal_head"
        )
        return str(entries[0][0]) if entries else "0-0"

    async def removals_after(self, record_id: str, count: int = 1000) -> list[Removal]:
        """Removal records newer than `record_id`, oldest first."""
        parse_id(record_id, "after")

        async def fetch(client: Redis) -> list[Entry]:
            return cast(
                list[Entry], await client.xrange(REMOVED, f"({record_id}", "+", count=count)
            )

        entries, _ = await self._read(fetch, "removals")
        return [_removal(entry) for entry in entries]

    async def removed_since(self, message_id: str) -> list[str]:
        """Ids of messages up to `message_id` removed since it was written: what a client that
        resumes after `message_id` may still show, and must be told to drop.

        A removal recorded before that message's millisecond happened before the client could
        have seen that message, so the page it came from did not hold what was removed; newer
        messages the client never had need no word. The millisecond itself is included: a
        repeated `remove` is harmless, a missed one is not.
        """
        upto = parse_id(message_id, "after")

        async def fetch(client: Redis) -> list[Entry]:
            return cast(
                list[Entry],
                await client.xrange(REMOVED, f"{upto[0]}-0", "+", count=2 * REMOVED_MAXLEN),
            )

        entries, _ = await self._read(fetch, "removed_since")
        removed: dict[str, None] = {}
        for entry in entries:
            removal = _removal(entry)
            if is_id(removal.message_id) and id_key(removal.message_id) <= upto:
                removed[removal.message_id] = None
        return list(removed)

    async def newest_oldest_first(self, limit: int) -> list[Message]:
        """The newest `limit` messages in the order they were written (the legacy view)."""

        def fetch(client: Redis) -> Awaitable[list[Entry]]:
            return _xrevrange(client, "+", limit)

        entries, _ = await self._read(fetch, "legacy_get")
        wanted = self.must_show(None)
        if wanted is not None and (not entries or id_key(entries[0][0]) < wanted):
            with contextlib.suppress(StoreUnavailable):
                entries = await self._call(self._the_leader(), fetch, "legacy_get")
        return [_message(entry) for entry in reversed(entries)]

    async def iter_all(self, batch: int = 500) -> Iterable[Message]:
        """Every message, oldest first, read in batches (for export).

        A backup must hold every acknowledged write, so it reads the leader, which has them
        all; a follower may lag (a post made a moment ago would be missing). Only when the
        leader cannot answer does it fall back to the usual readers."""
        out: list[Message] = []
        low = "-"
        while True:
            fetch = partial(_xrange, low=low, count=batch)
            try:
                entries = await self._call(self._the_leader(), fetch, "export")
            except StoreUnavailable:
                entries, _ = await self._read(fetch, "export")
            out.extend(_message(entry) for entry in entries)
            if len(entries) < batch:
                return out
            low = f"({entries[-1][0]}"

    async def count(self) -> int:
        result, _ = await self._read(lambda c: c.xlen(STREAM), "count")
        return int(result)

    async def readable(self) -> bool:
        """True when some server answers a read now (for readiness)."""
        try:
            await self._read(lambda c: c.ping(), "ping")
        except StoreUnavailable:
            return False
        return True

    async def status(self) -> StoreStatus:
        """Reachability, replication link and lag of every server, and the message count."""
        leader_server, follower_servers = self._leader_server, list(self._followers)
        sentinel = None
        if self.sentinels is not None:
            states = await self.sentinels.states()
            sentinel = SentinelStatus(self.sentinels.service, states)
        leader_info = await self._info(leader_server) if leader_server is not None else None
        leader_offset = _int_or_none(leader_info, "master_repl_offset") if leader_info else None
        leader = ServerStatus(self.leader_name, leader_info is not None)
        infos = await asyncio.gather(*(self._info(f) for f in follower_servers))
        followers = []
        for server, info in zip(follower_servers, infos, strict=True):
            if info is None:
                followers.append(ServerStatus(server.name, False))
                continue
            offset = _int_or_none(info, "slave_repl_offset")
            lag = (
                max(0, leader_offset - offset)
                if leader_offset is not None and offset is not None
                else None
            )
            followers.append(
                ServerStatus(
                    server.name,
                    True,
                    link=str(info.get("master_link_status", "")) or None,
                    lag_bytes=lag,
                    lag_seconds=_int_or_none(info, "master_last_io_seconds_ago"),
                )
            )
        count: int | None
        last_id: str | None
        try:
            count, (head, _) = await asyncio.gather(
                self.count(), self._read(lambda c: _xrevrange(c, "+", 1), "head")
            )
            last_id = head[0][0] if head else None
        except StoreUnavailable:
            count, last_id = None, None
        return StoreStatus(leader, followers, count, last_id, sentinel)

    async def _info(self, server: Server) -> dict[str, Any] | None:
        try:
            return dict(await self._call(server, lambda c: c.info("replication"), "info"))
        except (StoreUnavailable, RedisError):
            return None


def open_store(
    settings: Settings,
    address: StoreAddress,
    *,
    read_leader_first: bool = False,
    observer: Callable[[str, str, str | None], None] | None = None,
) -> MessageStore:
    """The store `address` names, configured by `settings`; call `start` before use. With
    sentinels it makes the one `Sentinels` of the process, closed with the store."""
    sentinels = None
    if address.mode == "sentinel":
        password = settings.sentinel_password
        sentinels = Sentinels(
            address.sentinels,
            address.sentinel_service,
            timeout=settings.store_timeout,
            password=password.get_secret_value() if password else None,
        )
    elif address.leader_url is None:
        raise ValueError("the store needs a leader URL; start the embedded store first")
    server_password = settings.redis_password
    return MessageStore(
        None if sentinels is not None else address.leader_url,
        () if sentinels is not None else address.follower_urls,
        timeout=settings.store_timeout,
        write_replicas=settings.write_replicas,
        read_leader_first=read_leader_first,
        observer=observer,
        sentinels=sentinels,
        server_password=server_password.get_secret_value() if server_password else None,
    )


def _trusted(server: Server, info: dict[str, Any] | None) -> bool:
    """Whether a follower the sentinels name may serve reads, from its own INFO replication.

    It earns trust with its link to the leader up, so a server back from a restart (an old
    leader with its own file, a follower with none) or in a full sync serves nothing until it
    holds the leader's data. A trusted follower keeps serving while its link is merely down (a
    dead leader, a failover under way): what it holds is an older part of the same history."""
    syncing = info is not None and str(info.get("master_sync_in_progress")) != "0"
    if info is None or info.get("role") != "slave" or syncing:
        server.trusted = False
    elif info.get("master_link_status") == "up":
        server.trusted = True
    return server.trusted


def _transient_error(exc: ResponseError) -> str | None:
    """The error code of a server state that passes (see `_call`), else None."""
    if isinstance(exc, ReadOnlyError):
        return "READONLY"
    if isinstance(exc, BusyLoadingError):
        return "LOADING"
    message = str(exc)
    # In a pipeline (a write and its WAIT) redis-py puts the command before the server's
    # error and quotes the error's own arguments: the code follows the quote.
    _, annotated, original = message.rpartition("of pipeline caused error: ")
    if annotated:
        message = original.lstrip("(\"'")
    code = message.split(" ", 1)[0]
    # NOREPLICAS: a leader with no follower in step refuses writes (min-replicas-to-write).
    return code if code in ("LOADING", "MASTERDOWN", "READONLY", "NOREPLICAS") else None


async def _xrevrange(client: Redis, high: str, count: int) -> list[Entry]:
    return cast(list[Entry], await client.xrevrange(STREAM, high, "-", count=count))


async def _xrange(client: Redis, low: str, count: int) -> list[Entry]:
    return cast(list[Entry], await client.xrange(STREAM, low, "+", count=count))


def _message(entry: Entry) -> Message:
    entry_id, fields = entry
    created = fields.get("c")
    ms = int(created) if created else id_key(entry_id)[0]
    return Message(entry_id, fields.get("t", ""), iso_from_ms(ms))


def _removal(entry: Entry) -> Removal:
    record_id, fields = entry
    return Removal(record_id, fields.get("id", ""))


def _int_or_none(info: dict[str, Any], key: str) -> int | None:
    value = info.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
