"""What guestbook's own code costs a read, without a server or a network: the app from
`create_app` (lifespan run, a real Valkey behind it) called as an ASGI server would call it,
with a `send` that does nothing, against a bare ASGI hello-world called the same way. The CPU
time per request, best of seven rounds; the difference is what the framework, the middleware
and the read add to what the server itself costs.

    uv run python bench/in_process.py                 # first page (API), page, legacy get
    uv run python bench/in_process.py --json
    uv run python bench/in_process.py --posts         # and the CPU a post costs this process

Posts are made by 32 writers at once, as a server's connections make them (so they share
batches), each with a text of its own; the store's own work is in Valkey's process, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from read_path import HOST, ROOT, start_valkey

sys.path.insert(0, str(ROOT / "src"))
from guestbook.app import create_app
from guestbook.settings import Settings, discover

PATHS = {
    "first page (API)": "/api/messages",
    "first page (HTML)": "/",
    "legacy get": "/guestbook.php?cmd=get&key=messages",
}
# What wrk sends.
HEADERS = [(b"host", b"127.0.0.1:8080"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
YIELD_EVERY = 1000
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"13")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"Hello, world!"})


def _scope(
    method: str, target: str, headers: list[tuple[bytes, bytes]], state: dict[str, Any]
) -> dict[str, Any]:
    """An HTTP scope as granian builds one, with the lifespan's state."""
    path, _, query = target.partition("?")
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": query.encode(), "root_path": "", "headers": headers,
        "client": (HOST, 50000), "server": (HOST, 8080), "state": state,
    }  # fmt: skip


async def per_request(app: App, state: dict[str, Any], target: str, count: int) -> float:
    """CPU microseconds per request, the best of seven rounds of `count // 7`."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    def scope() -> dict[str, Any]:
        return _scope("GET", target, list(HEADERS), state)

    for _ in range(2000):
        await app(scope(), receive, send)
    rounds = []
    for _ in range(7):
        started = time.process_time()
        for i in range(count // 7):
            await app(scope(), receive, send)
            if i % YIELD_EVERY == 0:
                # A read from memory never waits, so without this the loop would never run the
                # feed, which would fall stale and send the reads to the store. A server's
                # I/O gives the loop its turn between requests.
                await asyncio.sleep(0)
        rounds.append(time.process_time() - started)
    return round(min(rounds) / (count // 7) * 1e6, 2)


WRITERS = 32


async def per_post(app: App, state: dict[str, Any], count: int) -> float:
    """CPU microseconds this process spends a post (`POST /api/messages`, every one answered
    201), the best of three rounds of `count // 3`."""
    headers = [*HEADERS, (b"content-type", b"application/json")]
    answered: dict[int, int] = {}

    async def one(n: int) -> None:
        body = b'{"text":"bench post %d"}' % n

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answered[message["status"]] = answered.get(message["status"], 0) + 1

        length = (b"content-length", b"%d" % len(body))
        await app(_scope("POST", "/api/messages", [*headers, length], state), receive, send)

    async def writer(first: int, step: int, end: int) -> None:
        for n in range(first, end, step):
            await one(n)

    rounds = []
    per_round = count // 3
    for r in range(3):
        base = r * per_round
        started = time.process_time()
        await asyncio.gather(*(writer(base + w, WRITERS, base + per_round) for w in range(WRITERS)))
        rounds.append(time.process_time() - started)
    if set(answered) != {201}:
        raise SystemExit(f"posts answered {answered}, not all 201")
    return round(min(rounds) / per_round * 1e6, 1)


async def measure(count: int, posts: int = 0) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data:
        store, port = start_valkey(Path(data))
        try:
            url = f"redis://{HOST}:{port}/0"
            settings = Settings.from_env(
                {"GUESTBOOK_REDIS_LEADER_URL": url, "GUESTBOOK_RATE_LIMIT": "0"}
            )
            app = create_app(settings, discover(settings), "bench")
            async with app.api.router.lifespan_context(app.api) as lifespan:
                state = dict(lifespan or {})

                async def served(scope: dict[str, Any], receive: Any, send: Any) -> None:
                    scope["state"] = state
                    await app(scope, receive, send)

                transport = httpx.ASGITransport(app=served)
                async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
                    for i in range(25):
                        posted = await c.post("/api/messages", json={"text": f"message {i}"})
                        posted.raise_for_status()
                await asyncio.sleep(0.5)  # the feed reads them back
                out = {"bare ASGI hello-world": await per_request(hello, state, "/", count)}
                for name, target in PATHS.items():
                    out[name] = await per_request(app, state, target, count)
                if posts:
                    out["post (API)"] = await per_post(app, state, posts)
                return out
        finally:
            store.terminate()
            store.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=140_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--posts", type=int, nargs="?", const=30_000, default=0, help="posts to time (30,000)"
    )
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.posts))
    if args.json:
        print(json.dumps(result))
    else:
        for name, micros in result.items():
            print(f"{name:<24} {micros:6.2f} µs CPU a request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
