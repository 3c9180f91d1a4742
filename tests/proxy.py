"""A TCP proxy on loopback in front of a real server, that can lose one answer at the worst
moment: after the server has run a command, before its reply reaches the client.

It forwards every byte both ways, on a connection of its own to the server for each client
connection, until `lose_next_reply_to(marker)`: the next client write that holds `marker` is
forwarded, and when the server's reply to it comes (an error reply, such as NOSCRIPT, is let
through: nothing ran), both sides of that connection are cut and the reply dropped.
"""

from __future__ import annotations

import asyncio
import contextlib

from conftest import HOST


class LosingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.lost = 0
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    async def start(self) -> LosingProxy:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def lose_next_reply_to(self, marker: bytes) -> None:
        self._marker = marker

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        armed = False

        def cut() -> None:
            writer.transport.abort()
            up_writer.transport.abort()

        async def to_server() -> None:
            nonlocal armed
            while data := await reader.read(65536):
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    armed = True
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if armed and not data.startswith(b"-"):
                    self.lost += 1
                    cut()
                    return
                writer.write(data)
                await writer.drain()
            writer.close()

        # Each direction ends at its end of file or its error (the cut included).
        await asyncio.gather(to_server(), to_client(), return_exceptions=True)
        cut()
