"""Commands as the Redis protocol (RESP) writes them, and a pipelined exchange of them on one
of a client's pooled connections.

For the one write that is hot, posts (`store.MessageStore._run_posts`): redis-py's pipeline
object (a command stack, an encoder called per argument, a deadline per reply, its
observability hooks) cost a post more than the post's own checks did. Here the parts of a call
that never change are packed once, and the connection, its parser, its reconnect and its retry
are still redis-py's. Every other command goes through redis-py's own methods.
"""

from __future__ import annotations

import math
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError


def header(count: int) -> bytes:
    """The start of a command of `count` parts (its name included)."""
    return b"*%d\r\n" % count


def bulk(*parts: str | bytes) -> bytes:
    """`parts` as RESP bulk strings, to follow a `header`; text as UTF-8, as redis-py sends it."""
    out = []
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


def command(*parts: str | bytes) -> bytes:
    """One whole command."""
    return header(len(parts)) + bulk(*parts)


async def exchange(client: Redis, packed: bytes, replies: int) -> list[Any]:
    """Send `packed`, which holds `replies` commands, on one connection, and read every reply.

    An error reply takes its command's place in the list, as in redis-py's pipelines with
    `raise_on_error=False`; a connection lost or timed out is retried as the client's `retry`
    says, on a fresh connection, as redis-py retries its own pipelines. There is no deadline per
    reply: the caller bounds the whole exchange (the store's `_timed_call`), and a cancelled
    read closes the connection, so a late reply never reaches the next user of it."""
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        result: list[Any] = await connection.retry.call_with_retry(
            lambda: _exchange(connection, packed, replies),
            lambda _error: connection.disconnect(),
        )
        return result
    finally:
        await pool.release(connection)


async def _exchange(connection: AbstractConnection, packed: bytes, replies: int) -> list[Any]:
    await connection.send_packed_command(packed, check_health=False)
    out: list[Any] = []
    for _ in range(replies):
        try:
            out.append(await connection.read_response(timeout=math.inf))
        except ResponseError as error:
            out.append(error)
    return out
