"""The server's own floor: a bare ASGI hello-world on granian, with the settings `guestbook
serve` uses (embedded granian, HTTP/1 only, no WebSockets, backlog 2048, uvloop). `GET /stream`
starts an event stream and keeps it open, for what an open stream costs the server itself.

    python bench/hello_asgi.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

from granian.constants import HTTPModes, Interfaces
from granian.server.embed import Server

BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"13")]
STREAM_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
        await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
        await receive()  # the client's disconnect
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
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
        log_enabled=False,
    )
    await server.serve()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
