"""The live feed (`GET /api/messages/stream`) over real HTTP against real frontends and a real
leader with two followers: events and their ids, resuming with nothing missed or repeated
(across reconnects, frontends and a restart), heartbeats, dropped and slow clients, shutdown,
and the store's status (gone, back) told to the clients."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from conftest import HOST, Cluster, Frontend, MakeFrontend, posted, wait_until

STREAM = "guestbook:messages"


@dataclass(frozen=True)
class Event:
    """One thing read off the stream: an event, or a comment (kind `comment`)."""

    kind: str
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def message(self) -> dict[str, Any]:
        assert self.kind == "message", self
        value = json.loads(self.data)
        assert isinstance(value, dict)
        return value


class Stream:
    """An SSE client on a plain socket, so a test controls exactly when bytes are read."""

    def __init__(
        self,
        frontend: Frontend,
        query: str = "",
        last_event_id: str | None = None,
        read: bool = True,
        receive_buffer: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30)
        self.sock.connect((HOST, frontend.port))
        lines = [
            f"GET /api/messages/stream{query} HTTP/1.1",
            f"Host: {HOST}:{frontend.port}",
            "Accept: text/event-stream",
        ]
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.file = self.sock.makefile("rb")
        status_line = self.file.readline().decode()
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.items: queue.Queue[Event | None] = queue.Queue()
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if read:
            self.start()

    def start(self) -> None:
        self._thread.start()

    def body(self) -> bytes:
        return self.file.read(int(self.headers.get("content-length", "0")))

    def _chunks(self) -> Iterator[bytes]:
        while True:
            size_line = self.file.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return
            data = self.file.read(size)
            self.file.readline()
            yield data

    def _run(self) -> None:
        buffer = b""
        fields: dict[str, str] = {}
        data: list[str] = []
        try:
            for chunk in self._chunks():
                buffer += chunk
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    line = raw.decode()
                    if line == "":
                        if data or "event" in fields or "retry" in fields:
                            self.items.put(
                                Event(
                                    fields.get("event") or ("message" if data else "retry"),
                                    "\n".join(data),
                                    fields.get("id"),
                                    int(fields["retry"]) if "retry" in fields else None,
                                )
                            )
                        fields, data = {}, []
                    elif line.startswith(":"):
                        self.items.put(Event("comment", line[1:].strip()))
                    else:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "data":
                            data.append(value)
                        else:
                            fields[name] = value
        except OSError:
            pass
        finally:
            self.ended.set()
            self.items.put(None)

    def next(self, timeout: float = 15) -> Event | None:
        """The next event or comment; None when the stream has ended."""
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing arrived on the stream within {timeout} s") from None

    def messages(self, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        """The next `count` message events (comments skipped), checking each id line."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            event = self.next(timeout)
            assert event is not None, f"the stream ended after {len(found)} of {count} messages"
            if event.kind in ("comment", "retry", "status"):
                continue
            message = event.message()
            assert event.id == message["id"]
            found.append(message)
        return found

    def rest(self, timeout: float = 30) -> list[Event]:
        """Everything until the server ends the stream."""
        events: list[Event] = []
        while (event := self.next(timeout)) is not None:
            events.append(event)
        return events

    def store_status(self, timeout: float = 15) -> dict[str, Any]:
        """The data of the next `status` event; nothing but comments may come before it."""
        while True:
            event = self.next(timeout)
            assert event is not None, "the stream ended before a status event"
            if event.kind in ("comment", "retry"):
                continue
            assert event.kind == "status", event
            assert event.id is None  # a status must not move the client's resume point
            value = json.loads(event.data)
            assert isinstance(value, dict)
            return value

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self._thread.is_alive():
            self._thread.join(5)
        if not self._thread.is_alive():
            # The socket's descriptor stays open while its file does; left to the garbage
            # collector, it would be reported (a ResourceWarning, an error here) in whichever
            # test runs then.
            self.file.close()


@pytest.fixture
def streams() -> Iterator[Callable[..., Stream]]:
    opened: list[Stream] = []

    def open_stream(frontend: Frontend, *args: Any, **kwargs: Any) -> Stream:
        stream = Stream(frontend, *args, **kwargs)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


def newest_id(frontend: Frontend) -> str:
    messages = httpx.get(f"{frontend.url}/api/messages?limit=1", timeout=10).json()["messages"]
    return str(messages[0]["id"]) if messages else "0-0"


def live_clients(frontend: Frontend) -> int:
    return int(httpx.get(f"{frontend.url}/api/status", timeout=10).json()["live_clients"])


def metric(frontend: Frontend, name: str) -> float:
    text = httpx.get(f"{frontend.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- events ---------------------------------------------------------------------------------


def test_each_new_message_is_one_event_with_its_id_and_json(
    shared_frontend: Frontend, streams: Callable[..., Stream], token: str
) -> None:
    stream = streams(shared_frontend, f"?after={newest_id(shared_frontend)}")
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert "no-cache" in stream.headers["cache-control"]

    sent = [posted(shared_frontend, f"{token} live {i} <b>&amp;</b>\nline") for i in range(3)]

    received = [m for m in stream.messages(3) if m["text"].startswith(token)]
    assert received == sent


def test_a_stream_without_a_resume_id_starts_with_the_next_message(
    shared_frontend: Frontend, streams: Callable[..., Stream], token: str
) -> None:
    before = posted(shared_frontend, f"{token} before")
    baseline = live_clients(shared_frontend)
    stream = streams(shared_frontend)
    wait_until(lambda: live_clients(shared_frontend) == baseline + 1)

    after = posted(shared_frontend, f"{token} after")

    (first,) = stream.messages(1)
    assert first == after
    assert first["id"] != before["id"]


def test_last_event_id_resumes_with_nothing_missed_or_repeated(
    shared_frontend: Frontend, streams: Callable[..., Stream], token: str
) -> None:
    first = streams(shared_frontend, f"?after={newest_id(shared_frontend)}")
    seen = [posted(shared_frontend, f"{token} seen {i}") for i in range(2)]
    assert first.messages(2) == seen
    first.close()
    missed = [posted(shared_frontend, f"{token} missed {i}") for i in range(3)]

    # A browser reconnects to the same URL (the original ?after=) plus Last-Event-ID.
    second = streams(shared_frontend, f"?after={seen[0]['id']}", last_event_id=seen[-1]["id"])
    later = posted(shared_frontend, f"{token} later")

    assert second.messages(4) == [*missed, later]


def test_after_parameter_resumes_like_last_event_id(
    shared_frontend: Frontend, streams: Callable[..., Stream], token: str
) -> None:
    start = posted(shared_frontend, f"{token} start")
    missed = [posted(shared_frontend, f"{token} missed {i}") for i in range(3)]

    stream = streams(shared_frontend, f"?after={start['id']}")

    assert stream.messages(3) == missed


def test_resume_from_before_the_feed_memory_reads_the_store_without_gaps(
    shared_cluster: Cluster, shared_frontend: Frontend, streams: Callable[..., Stream], token: str
) -> None:
    start = posted(shared_frontend, f"{token} start")
    leader = shared_cluster.leader.client()
    pipe = leader.pipeline(transaction=False)
    for i in range(1200):
        pipe.xadd(STREAM, {"t": f"{token} bulk {i}"})
    ids = [str(i) for i in pipe.execute()]
    wait_until(lambda: newest_id(shared_frontend) == ids[-1])

    stream = streams(shared_frontend, f"?after={start['id']}")
    received = stream.messages(len(ids))

    assert [m["id"] for m in received] == ids
    assert [m["text"] for m in received] == [f"{token} bulk {i}" for i in range(1200)]


def test_malformed_resume_ids_are_rejected_with_a_problem(shared_frontend: Frontend) -> None:
    with shared_frontend.http() as client:
        for response in (
            client.get("/api/messages/stream", params={"after": "yesterday"}),
            client.get("/api/messages/stream", headers={"Last-Event-ID": "12-x"}),
            client.get("/api/messages/stream", headers={"Last-Event-ID": f"{2**64}-0"}),
        ):
            assert response.status_code == 400
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["status"] == 400


def test_stream_is_documented_in_openapi(shared_frontend: Frontend) -> None:
    with shared_frontend.http() as client:
        operation = client.get("/openapi.json").json()["paths"]["/api/messages/stream"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    names = {p["name"] for p in operation["parameters"]}
    assert names == {"after", "Last-Event-ID"}


# --- the store's status -----------------------------------------------------------------------


def test_a_stream_says_at_connect_that_the_store_is_ok(
    shared_frontend: Frontend, streams: Callable[..., Stream], token: str
) -> None:
    stream = streams(shared_frontend, f"?after={newest_id(shared_frontend)}")

    assert stream.store_status() == {"store": "ok"}
    message = posted(shared_frontend, f"{token} after the status")
    assert stream.messages(1) == [message]


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_streams_are_told_when_the_store_is_gone_and_when_it_is_back(
    cluster: Cluster, make_frontend: MakeFrontend, streams: Callable[..., Stream], fault: str
) -> None:
    frontend = make_frontend(cluster)
    before = posted(frontend, "before the outage")
    stream = streams(frontend, f"?after={before['id']}")
    assert stream.store_status() == {"store": "ok"}

    cluster.break_all(fault)
    assert stream.store_status(timeout=30) == {"store": "unavailable"}
    cluster.mend_all(fault)
    assert stream.store_status(timeout=30) == {"store": "ok"}

    after = posted(frontend, "after the outage")
    assert stream.messages(1) == [after]


def test_a_stream_opened_while_the_store_is_down_says_so_at_once(
    cluster: Cluster, make_frontend: MakeFrontend, streams: Callable[..., Stream]
) -> None:
    frontend = make_frontend(cluster)
    cluster.break_all("killed")
    wait_until(lambda: httpx.get(f"{frontend.url}/readyz").status_code == 503)

    stream = streams(frontend)

    assert stream.store_status() == {"store": "unavailable"}
    cluster.mend_all("killed")
    assert stream.store_status(timeout=30) == {"store": "ok"}


# --- across frontends -----------------------------------------------------------------------


def test_resume_works_across_frontends_sharing_one_store(
    cluster: Cluster, make_frontend: MakeFrontend, streams: Callable[..., Stream]
) -> None:
    a, b = make_frontend(cluster), make_frontend(cluster)
    on_a = streams(a, "?after=0-0")
    seen = [posted(b, f"from b {i}") for i in range(2)]
    assert on_a.messages(2) == seen
    on_a.close()
    missed = [posted(a, f"from a {i}") for i in range(2)]

    on_b = streams(b, last_event_id=seen[-1]["id"])

    assert on_b.messages(2) == missed


def test_resume_works_across_a_frontend_restart(
    cluster: Cluster, make_frontend: MakeFrontend, streams: Callable[..., Stream]
) -> None:
    a, b = make_frontend(cluster), make_frontend(cluster)
    stream = streams(a, "?after=0-0")
    seen = posted(a, "before the restart")
    assert stream.messages(1) == [seen]

    a.stop()
    ending = stream.rest()
    missed = [posted(b, f"while a was down {i}") for i in range(3)]
    a.start()
    resumed = streams(a, last_event_id=seen["id"])
    after = posted(a, "after the restart")

    assert ending[-1].kind == "reconnect"
    assert resumed.messages(4) == [*missed, after]


# --- connection handling ------------------------------------------------------------------


def test_idle_streams_get_heartbeat_comments(
    shared_cluster: Cluster, make_frontend: MakeFrontend, streams: Callable[..., Stream]
) -> None:
    frontend = make_frontend(shared_cluster, GUESTBOOK_SSE_HEARTBEAT="0.2")
    stream = streams(frontend)

    items = [stream.next() for _ in range(5)]

    comments = [i.data for i in items if i is not None and i.kind == "comment"]
    assert comments.count("heartbeat") >= 2


def test_a_disconnected_client_is_dropped(
    shared_frontend: Frontend, streams: Callable[..., Stream]
) -> None:
    baseline = live_clients(shared_frontend)
    stream = streams(shared_frontend)
    wait_until(lambda: live_clients(shared_frontend) == baseline + 1)

    stream.close()

    wait_until(lambda: live_clients(shared_frontend) == baseline)
    wait_until(lambda: metric(shared_frontend, "guestbook_live_clients ") == baseline)


def resident_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_connected_client_holds_no_copy_of_the_feed_memory(
    cluster: Cluster, make_frontend: MakeFrontend, streams: Callable[..., Stream]
) -> None:
    # The feed keeps the newest 10,000 messages; a reference to each, held per client for as
    # long as it stays connected, would cost every client 80 KB. A client costs about 20 KB
    # in all (most of it the HTTP server's own), so 50 KB each leaves room for noise and none
    # for the copy.
    leader = cluster.leader.client()
    pipe = leader.pipeline(transaction=False)
    for i in range(10_000):
        pipe.xadd(STREAM, {"t": f"kept {i}"})
    head = str(pipe.execute()[-1])
    frontend = make_frontend(cluster)
    assert frontend.process is not None
    wait_until(lambda: newest_id(frontend) == head, timeout=30)
    # One-time costs (the first encodings, the sweeper, buffers) go into the baseline.
    warm = [streams(frontend, f"?after={head}", read=False) for _ in range(20)]
    wait_until(lambda: live_clients(frontend) == len(warm), timeout=30)
    before = resident_kb(frontend.process.pid)

    clients = 200
    for _ in range(clients):
        streams(frontend, f"?after={head}", read=False)
    wait_until(lambda: live_clients(frontend) == len(warm) + clients, timeout=30)

    per_client = (resident_kb(frontend.process.pid) - before) / clients
    assert per_client < 50, f"{per_client:.1f} KB of resident memory per live client"


def test_a_slow_client_is_told_to_reconnect_and_resumes_without_gaps(
    cluster: Cluster, make_frontend: MakeFrontend, streams: Callable[..., Stream]
) -> None:
    frontend = make_frontend(cluster, GUESTBOOK_SSE_QUEUE="500")
    fast = streams(frontend, "?after=0-0")
    slow = streams(frontend, "?after=0-0", read=False, receive_buffer=4096)
    wait_until(lambda: live_clients(frontend) == 2)
    leader = cluster.leader.client()
    ids: list[str] = []
    filler = "x" * 2000

    # Keep writing until the slow client's socket buffers and then its queue are full.
    while metric(frontend, 'guestbook_live_streams_cut_total{reason="overflow"}') < 1:
        assert len(ids) < 50_000, "the slow client never overflowed"
        pipe = leader.pipeline(transaction=False)
        for i in range(len(ids), len(ids) + 200):
            pipe.xadd(STREAM, {"t": f"{i} {filler}"})
        ids += [str(i) for i in pipe.execute()]
        # The fast client keeps up the whole time.
        assert [m["id"] for m in fast.messages(200, timeout=30)] == ids[-200:]

    slow.start()
    events = slow.rest(timeout=60)
    got = [e.id for e in events if e.kind == "message"]
    assert events[-1].kind == "reconnect"
    assert json.loads(events[-1].data)["reason"] == "overflow"
    assert events[-1].retry is not None
    assert got == ids[: len(got)]
    assert len(got) < len(ids)

    resumed = streams(frontend, last_event_id=got[-1])

    assert [m["id"] for m in resumed.messages(len(ids) - len(got), timeout=30)] == ids[len(got) :]


def test_shutdown_ends_streams_with_a_retry_hint(
    shared_cluster: Cluster, make_frontend: MakeFrontend, streams: Callable[..., Stream]
) -> None:
    frontend = make_frontend(shared_cluster)
    stream = streams(frontend)
    wait_until(lambda: live_clients(frontend) == 1)

    exit_code = frontend.stop(signal.SIGTERM)
    events = stream.rest()

    assert exit_code == 0
    last = events[-1]
    assert last.kind == "reconnect"
    assert last.retry is not None
    assert last.retry > 0
    assert json.loads(last.data) == {"reason": "shutdown", "retry": last.retry}
    assert stream.ended.is_set()


def test_a_client_arriving_during_shutdown_is_sent_away_with_a_retry_hint(
    shared_cluster: Cluster, make_frontend: MakeFrontend, streams: Callable[..., Stream]
) -> None:
    frontend = make_frontend(shared_cluster, GUESTBOOK_SHUTDOWN_DRAIN="30")
    assert frontend.process is not None
    frontend.process.send_signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(f"{frontend.url}/readyz").status_code == 503)

    stream = streams(frontend)
    events = stream.rest()

    assert events[-1].kind == "reconnect"
    assert re.fullmatch(r'\{"reason": "shutdown", "retry": \d+\}', events[-1].data)
