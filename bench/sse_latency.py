"""Live-feed benchmark: many SSE clients on one frontend, post-to-delivery latency and memory.

Starts, on loopback only: a Valkey server (the binary the project ships with) and one
`guestbook serve` on it. Opens --clients Server-Sent Events streams (`/api/messages/stream`)
from this process (asyncio, plain sockets), then posts --messages messages through the JSON API,
each --interval seconds after the last one was answered. For every message and every client it
records the time from sending the POST to that client reading the event, and reports p50, p99
and the maximum, the rate the posts went at, plus
the frontend's resident memory (RSS) idle and with all clients connected. Where the machine has
two cores the frontend runs on one and this process on the other.

    uv run python bench/sse_latency.py                       # 1,000 clients, 100 messages
    uv run python bench/sse_latency.py --clients 2000 --messages 200

Bounded in time: the whole run gives up after --deadline seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from memory_floor import rss_mb
from read_path import HOST, ROOT, free_port, wait_http

from guestbook.embedded import server_binary


class Client(asyncio.Protocol):
    """One stream; remembers when each message id arrived.

    A protocol rather than a stream reader: the clients' side of 10,000 streams should cost
    as little per read as it can (a callback, no task to resume), so that the figures are the
    frontend's and not this process's."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.started: asyncio.Future[None] | None = None
        self.pending = b""
        self.in_body = False

    async def open(self, port: int, after: str) -> None:
        loop = asyncio.get_running_loop()
        self.started = loop.create_future()
        self.transport, _ = await loop.create_connection(lambda: self, HOST, port)
        self.transport.write(
            f"GET /api/messages/stream?after={after} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await self.started

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.in_body:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.in_body = True
            assert self.started is not None
            if head.startswith(b"HTTP/1.1 200"):
                self.started.set_result(None)
            else:
                self.started.set_exception(RuntimeError(head.decode(errors="replace")))
        # Chunk-size lines never start with "id: ", so the chunked framing can stay.
        *lines, self.pending = (self.pending + data).split(b"\n")
        for line in lines:
            if line.startswith(b"id: "):
                self.arrived[line[4:].strip().decode()] = now

    def connection_lost(self, exc: Exception | None) -> None:
        if self.started is not None and not self.started.done():
            self.started.set_exception(ConnectionError("closed before the answer"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def drive(args: argparse.Namespace, port: int, server_pid: int) -> dict[str, object]:
    base = f"http://{HOST}:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        head = (await http.get("/api/messages?limit=1")).json()["messages"]
        after = head[0]["id"] if head else "0-0"
        idle_rss = rss_mb(server_pid)

        clients = [Client() for _ in range(args.clients)]
        opening = time.perf_counter()
        for start in range(0, len(clients), 100):
            await asyncio.gather(*(c.open(port, after) for c in clients[start : start + 100]))
        opened_in = time.perf_counter() - opening
        while (await http.get("/api/status")).json()["live_clients"] < args.clients:
            await asyncio.sleep(0.1)
        connected_rss = rss_mb(server_pid)

        sent: dict[str, float] = {}
        acked: dict[str, float] = {}
        for i in range(args.messages):
            started = time.perf_counter()
            response = await http.post("/api/messages", json={"text": f"bench message {i}"})
            done = time.perf_counter()
            response.raise_for_status()
            message_id = response.json()["id"]
            sent[message_id], acked[message_id] = started, done
            await asyncio.sleep(args.interval)

        settle = time.monotonic() + 10
        while time.monotonic() < settle and any(len(c.arrived) < len(sent) for c in clients):
            await asyncio.sleep(0.1)
        peak_rss = rss_mb(server_pid)
        for c in clients:
            c.close()

    started_at = list(sent.values())
    from_send = []
    from_ack = []
    missing = 0
    for c in clients:
        for message_id, posted_at in sent.items():
            got = c.arrived.get(message_id)
            if got is None:
                missing += 1
                continue
            from_send.append((got - posted_at) * 1000)
            from_ack.append((got - acked[message_id]) * 1000)

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if values else float("nan")

    return {
        "clients": args.clients,
        "messages": args.messages,
        "deliveries": len(from_send),
        "missing": missing,
        "open_seconds": round(opened_in, 2),
        # The poster waits for each answer, then --interval: a frontend that answers sooner
        # is sent its posts more often, so the rate achieved goes with the latencies.
        "posts_per_second": round((len(sent) - 1) / (max(started_at) - min(started_at)), 1)
        if len(sent) > 1
        else None,
        "latency_ms_from_post": {
            "p50": round(pct(from_send, 0.5), 1),
            "p99": round(pct(from_send, 0.99), 1),
            "max": round(max(from_send, default=float("nan")), 1),
        },
        "latency_ms_from_ack": {
            "p50": round(pct(from_ack, 0.5), 1),
            "p99": round(pct(from_ack, 0.99), 1),
        },
        # The distribution, for a plot: 200 quantiles of the latency from the 201.
        "from_ack_quantiles_ms": (
            [round(v, 2) for v in statistics.quantiles(from_ack, n=200)]
            if len(from_ack) > 1
            else []
        ),
        "rss_mb": {
            "idle": round(idle_rss, 1),
            "clients_connected": round(connected_rss, 1),
            "after_messages": round(peak_rss, 1),
        },
    }


def _loop_factory() -> Any:
    # The clients' side should cost as little as it can: the figures are the frontend's.
    try:
        import uvloop
    except ModuleNotFoundError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between posts")
    parser.add_argument("--deadline", type=float, default=180)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="measure the bare server (bench/hello_asgi.py) writing each post to every stream "
        "instead of guestbook: the server's own floor for the fan-out",
    )
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.clients * 2 + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    cores = sorted(os.sched_getaffinity(0))
    server_cores = {cores[0]}
    client_cores = {cores[1]} if len(cores) > 1 else {cores[0]}

    with tempfile.TemporaryDirectory(prefix="gb-sse-bench-") as tmp:
        store_port, web_port = free_port(), free_port()
        # The bare server keeps no messages: no store for it.
        store = None if args.floor else subprocess.Popen(
            [str(server_binary()), "--port", str(store_port), "--bind", HOST, "--dir", tmp,
             "--save", "", "--appendonly", "no", "--maxclients", "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GUESTBOOK_")},
            "GUESTBOOK_HOST": HOST,
            "GUESTBOOK_PORT": str(web_port),
            "GUESTBOOK_REDIS_LEADER_URL": f"redis://{HOST}:{store_port}/0",
            "GUESTBOOK_RATE_LIMIT": "0",
            "GUESTBOOK_LOG_LEVEL": "warning",
            "GUESTBOOK_DATA_DIR": str(Path(tmp) / "data"),
        }
        command = [sys.executable, "-m", "guestbook", "serve"]
        if args.floor:
            command = [sys.executable, str(ROOT / "bench" / "hello_asgi.py"), str(web_port)]
        web = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            os.sched_setaffinity(web.pid, server_cores)
            os.sched_setaffinity(0, client_cores)
            wait_http(f"http://{HOST}:{web_port}/readyz")
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                result = runner.run(asyncio.wait_for(drive(args, web_port, web.pid), args.deadline))
        finally:
            web.send_signal(signal.SIGTERM)
            try:
                web.wait(15)
            except subprocess.TimeoutExpired:
                web.kill()
            if store is not None:
                store.terminate()
                store.wait(10)

    if args.json:
        print(json.dumps(result))
        return
    send = result["latency_ms_from_post"]
    ack = result["latency_ms_from_ack"]
    rss = result["rss_mb"]
    assert isinstance(send, dict)
    assert isinstance(ack, dict)
    assert isinstance(rss, dict)
    print(
        f"{result['clients']} SSE clients, {result['messages']} messages, "
        f"{result['deliveries']} deliveries, {result['missing']} missing"
    )
    print(
        f"post-to-delivery latency: p50 {send['p50']} ms, p99 {send['p99']} ms, "
        f"max {send['max']} ms (from the 201: p50 {ack['p50']} ms, p99 {ack['p99']} ms)"
    )
    print(
        f"frontend RSS: idle {rss['idle']} MB, {result['clients']} clients connected "
        f"{rss['clients_connected']} MB, after the messages {rss['after_messages']} MB"
    )


if __name__ == "__main__":
    main()
