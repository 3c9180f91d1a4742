"""The server's own floor: a bare ASGI hello-world on granian, with the settings `guestbook
serve` uses (embedded granian, HTTP/1 only, no WebSockets, backlog 2048, uvloop). `GET /stream`
starts an event stream and keeps it open, for what an open stream costs the server itself;
a POST has its body read whole and is answered 201, for a post's floor. The same POST to
`/api/messages` is then written as one event to every open stream, each with its own `send`,
and the few other paths `sse_latency.py` asks for are answered: the server's own floor for the
live feed's fan-out.
Given a recorded answer (a JSON file: status, headers, body), it answers every other request
with those bytes instead: the server's floor for that very answer.

    python bench/hello_asgi.py PORT [ANSWER.json]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from granian.constants import HTTPModes, Interfaces
from granian.server.embed import Server

STATUS = 200
BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"13")]
POSTED = b'{"id":"1764156357123-0"}'
POSTED_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(POSTED))]
STREAM_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
JSON_HEADERS = [(b"content-type", b"application/json")]
# The open streams' `send`s, for the fan-out floor.
STREAMS: set[Any] = set()
_last_id = [0, 0]


def _next_id() -> str:
    ms = int(time.time() * 1000)
    _last_id[:] = [ms, 0] if ms > _last_id[0] else [_last_id[0], _last_id[1] + 1]
    return f"{_last_id[0]}-{_last_id[1]}"


async def _json(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["method"] == "POST":
        # A post's floor: its body read whole through `receive`, a small JSON answer.
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        if scope["path"] != "/api/messages":
            await send({"type": "http.response.start", "status": 201, "headers": POSTED_HEADERS})
            await send({"type": "http.response.body", "body": POSTED})
            return
        message_id = _next_id()
        await _json(send, 201, b'{"id":"%s"}' % message_id.encode())
        data = json.dumps({"id": message_id, "text": "floor", "created_at": "2026-01-01T00:00:00Z"})
        event = f"id: {message_id}\nevent: message\ndata: {data}\n\n".encode()
        chunk = {"type": "http.response.body", "body": event, "more_body": True}
        for stream in list(STREAMS):
            await stream(chunk)
        return
    if scope["path"] in ("/stream", "/api/messages/stream"):
        await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
        await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
        STREAMS.add(send)
        try:
            while (await receive())["type"] != "http.disconnect":
                pass  # the request's (empty) body first, then the client's disconnect
        finally:
            STREAMS.discard(send)
        return
    if scope["path"] == "/api/messages":
        await _json(send, 200, b'{"messages":[]}')
        return
    if scope["path"] == "/api/status":
        await _json(send, 200, b'{"live_clients":%d}' % len(STREAMS))
        return
    await send({"type": "http.response.start", "status": STATUS, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def main(port: int) -> None:
    server = Server(
        app,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        http=HTTPModes.http1,
        websockets=False,
        backlog=2048,
        # As many requests at once as `guestbook serve` takes (connections.MAX_CONNECTIONS):
        # granian's default is the backlog, which would hold event streams past 2,048 waiting.
        backpressure=16_384,
        log_enabled=False,
    )
    await server.serve()


if __name__ == "__main__":
    import uvloop

    if len(sys.argv) > 2:
        recorded = json.loads(Path(sys.argv[2]).read_text())
        STATUS = recorded["status"]
        HEADERS = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in recorded["headers"]]
        BODY = recorded["body"].encode("utf-8")
    uvloop.run(main(int(sys.argv[1])))
