"""A small load generator for the fault tests: async httpx clients hammering real frontends for
a while, every request's outcome and latency recorded, and a live-feed follower that resumes
wherever it is sent.

A transport error (refused, reset, timed out) is an outcome like any other and counts as a
failure: a load test that skipped them would report a fault as a success. Figures are for
printing; tests assert outcomes, and only the contract's own bounds on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

# Long enough that only a real hang hits it: a timed-out request is a failed one.
CLIENT_TIMEOUT = 10.0


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client: httpx builds one per client otherwise, which costs
    about 30 ms of the event loop each (fifty clients: the load's first 1.5 s, every request
    then measuring the clients' own start, not the server)."""
    return ssl.create_default_context()


def http_client(base_url: str = "", **kwargs: Any) -> httpx.AsyncClient:
    """An async client of one frontend, as the load's workers use."""
    kwargs.setdefault("timeout", CLIENT_TIMEOUT)
    return httpx.AsyncClient(base_url=base_url, verify=_tls(), **kwargs)


@dataclass(frozen=True)
class Outcome:
    """One request: what was asked, when (seconds since the load began), how long the answer
    took, its status (None: a transport error, named in `error`), and what the caller kept of
    the answer."""

    kind: str
    started: float
    latency: float
    status: int | None
    error: str | None = None
    kept: Any = None
    # Attempts that failed before this one answered (a retry on another frontend).
    retried: tuple[str, ...] = ()

    @property
    def ended(self) -> float:
        return self.started + self.latency


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank percentile (`p` in 0-100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms"


@dataclass
class Record:
    """Every outcome of a load run."""

    outcomes: list[Outcome] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        """Seconds since the load began, on the clock the outcomes use."""
        return time.monotonic() - self.began

    def of(
        self, kind: str | None = None, during: tuple[float, float] | None = None
    ) -> list[Outcome]:
        """Outcomes of one kind (all when None), started within `during` when given."""
        return [
            o
            for o in self.outcomes
            if (kind is None or o.kind == kind)
            and (during is None or during[0] <= o.started < during[1])
        ]

    def failed(
        self, kind: str | None = None, ok: Callable[[Outcome], bool] | None = None
    ) -> list[Outcome]:
        """Outcomes that are not a success: a transport error, or a status `ok` refuses (by
        default anything but 2xx and 3xx)."""
        accept = ok or (lambda o: o.status is not None and o.status < 400)
        return [o for o in self.of(kind) if not accept(o)]

    def latencies(
        self, kind: str | None = None, during: tuple[float, float] | None = None
    ) -> list[float]:
        return [o.latency for o in self.of(kind, during)]

    def p(
        self, q: float, kind: str | None = None, during: tuple[float, float] | None = None
    ) -> float:
        return percentile(self.latencies(kind, during), q)


# A request: given a worker's client, its number and its request count, send one request and
# return the answer and what to keep of it (None: nothing).
Send = Callable[[httpx.AsyncClient, int, int], Awaitable[httpx.Response]]
Keep = Callable[[httpx.Response], Any]


@dataclass(frozen=True)
class Job:
    """`workers` clients, each sending `send` in a loop: until the run ends, or `each` times.
    `pause` seconds between one client's requests (a person, not a benchmark)."""

    kind: str
    send: Send
    workers: int
    each: int | None = None
    pause: float = 0.0
    keep: Keep | None = None
    # The frontends' base URLs, tried in order for an idempotent request that fails in
    # transport (a stopped frontend); one URL: no retry.
    urls: tuple[str, ...] = ()


async def run(record: Record, jobs: Sequence[Job], seconds: float | None = None) -> Record:
    """Run every job's workers at once for `seconds` (None: until every `each` is done)."""
    deadline = None if seconds is None else record.began + seconds

    async def worker(job: Job, number: int) -> None:
        clients = [http_client(url) for url in job.urls]
        try:
            n = 0
            while (job.each is None or n < job.each) and (
                deadline is None or time.monotonic() < deadline
            ):
                await attempt(job, clients, number, n)
                n += 1
                if job.pause:
                    await asyncio.sleep(job.pause)
        finally:
            for http in clients:
                await http.aclose()

    async def attempt(job: Job, clients: list[httpx.AsyncClient], number: int, n: int) -> None:
        start = time.monotonic()
        retried: list[str] = []
        for index, http in enumerate(clients):
            try:
                response = await job.send(http, number, n)
            except httpx.TransportError as exc:
                last = index == len(clients) - 1
                if last:
                    record.outcomes.append(
                        Outcome(
                            job.kind,
                            start - record.began,
                            time.monotonic() - start,
                            None,
                            f"{type(exc).__name__}: {exc}",
                            retried=tuple(retried),
                        )
                    )
                    return
                retried.append(type(exc).__name__)
                continue
            kept = job.keep(response) if job.keep is not None else None
            record.outcomes.append(
                Outcome(
                    job.kind,
                    start - record.began,
                    time.monotonic() - start,
                    response.status_code,
                    kept=kept,
                    retried=tuple(retried),
                )
            )
            return

    await asyncio.gather(*(worker(job, i) for job in jobs for i in range(job.workers)))
    return record


def get(path: str, **params: str) -> Send:
    """A GET of `path`."""

    async def send(client: httpx.AsyncClient, number: int, n: int) -> httpx.Response:
        return await client.get(path, params=params or None)

    return send


def post_json(
    text: Callable[[int, int], str], key: Callable[[int, int], str] | None = None
) -> Send:
    """A POST /api/messages of `text(worker, n)`, with `Idempotency-Key: key(worker, n)`."""

    async def send(client: httpx.AsyncClient, number: int, n: int) -> httpx.Response:
        headers = {"Idempotency-Key": key(number, n)} if key is not None else None
        return await client.post("/api/messages", json={"text": text(number, n)}, headers=headers)

    return send


def keep_message(response: httpx.Response) -> dict[str, Any] | None:
    """The stored message of a 201; else None."""
    if response.status_code != 201:
        return None
    value = response.json()
    assert isinstance(value, dict)
    return value


# --- the live feed ------------------------------------------------------------------------


@dataclass
class LiveClient:
    """A live-feed client (SSE) that resumes with `Last-Event-ID` after the server ends its
    stream, on the next frontend in `urls` when the one it was on is gone: what a browser's
    EventSource does behind a load balancer. `ids` is every message id received, in order."""

    urls: Sequence[str]
    after: str | None = None
    ids: list[str] = field(default_factory=list)
    # Each stream's end, as (frontend index, the reconnect event's data or None for a plain
    # end or a transport error).
    ends: list[tuple[int, dict[str, Any] | None]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _at: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with http_client(timeout=httpx.Timeout(CLIENT_TIMEOUT, read=30)) as http:
            while not stop.is_set():
                try:
                    await self._one_stream(http, stop)
                except httpx.TransportError:
                    self.ends.append((self._at, None))
                    self._at = (self._at + 1) % len(self.urls)  # this one is gone: the next
                    await asyncio.sleep(0.1)

    async def _one_stream(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        resume = self.ids[-1] if self.ids else self.after
        headers = {"Accept": "text/event-stream"}
        if resume is not None:
            headers["Last-Event-ID"] = resume
        url = f"{self.urls[self._at]}/api/messages/stream"
        async with http.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                self.ends.append((self._at, {"status": response.status_code}))
                self._at = (self._at + 1) % len(self.urls)
                await asyncio.sleep(0.1)
                return
            self.connected.set()
            event: dict[str, str] = {}
            lines = response.aiter_lines()
            while not stop.is_set():
                line_task = asyncio.ensure_future(anext(lines))
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait(
                    {line_task, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                stopper.cancel()
                if line_task not in done:
                    line_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await line_task
                    return
                try:
                    line = line_task.result()
                except StopAsyncIteration:
                    self.ends.append((self._at, None))
                    return
                if line:
                    name, _, value = line.partition(":")
                    event[name] = value.removeprefix(" ")
                    continue
                if event.get("event") == "message" and "id" in event:
                    self.ids.append(event["id"])
                elif event.get("event") == "reconnect":
                    self.ends.append((self._at, json.loads(event["data"])))
                    # A stopping frontend: the hint says come back later; a balancer would send
                    # the next connection elsewhere, so go to the next frontend.
                    self._at = (self._at + 1) % len(self.urls)
                    await asyncio.sleep(json.loads(event["data"])["retry"] / 1000)
                    return
                event = {}


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """A blocking call (a signal and a wait, a poll of a server) off the event loop, so the
    load keeps running around it."""
    return await asyncio.to_thread(function, *args)
