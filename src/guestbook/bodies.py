"""Request bodies, read within bounds: at most 16 KiB, within 10 s, of the declared type, valid
UTF-8 and JSON or form encoding; anything else is `Refused` before a byte reaches the store.

A body that is being read holds a request in this process (about 22 KB), and granian has no
deadline for bodies: without one, requests that promise 10,000 bytes and send 10 stayed for
good. So a body must arrive whole within `BODY_TIMEOUT` (408 otherwise), and at most
`MAX_READERS` bodies are read at once (503 beyond, at once): the most this costs is bounded,
and a request without a body (every read, every probe) is never among those waiting.

A body granian cannot parse (a bad chunk) reaches the app as a disconnect, like a client that
left: the connection's state in the kernel (`peers.py`) tells a client still waiting, answered
400, from one gone, answered 499 (logged at info, never a 5xx).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect, Request

from .deadlines import Deadlines
from .errors import Refused
from .peers import still_connected

MAX_BODY = 16 * 1024
# 16 KiB in 10 s is 1.6 KB/s: any client that means to send its body does.
BODY_TIMEOUT = 10.0
MAX_READERS = 1024
MALFORMED = "The body could not be read: its chunked encoding is malformed."

_reading = 0
# Shared by every body read in the process: a timer per quarter second, not one per post.
_DEADLINES = Deadlines(BODY_TIMEOUT)


async def read_body(request: Request) -> bytes:
    """The body, refusing more than 16 KiB before reading it all, or one that is too slow."""
    global _reading
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise Refused(400, "Content-Length is not a number.")
        if int(declared) > MAX_BODY:
            raise Refused(413, f"The body is over {MAX_BODY // 1024} KiB.")
    # One of the `MAX_READERS` bodies read at once in this process, or 503 at once. Counted
    # here rather than by a context manager: every post pays for this, and a generator-based
    # one cost more than the rest of the bookkeeping.
    if _reading >= MAX_READERS:
        raise Refused(503, "Too many bodies are on their way; try again.", {"Retry-After": "1"})
    _reading += 1
    task = asyncio.current_task()
    assert task is not None  # a request is always served by a task
    due = _DEADLINES.join(task)
    try:
        return await _receive_body(request)
    except asyncio.CancelledError:
        if not _DEADLINES.passed(task):
            raise
        # The rest of the body is never read, so the connection cannot carry another
        # request: granian closes it after this answer.
        raise Refused(
            408, f"The body did not arrive within {BODY_TIMEOUT:g} s.", {"Connection": "close"}
        ) from None
    except ClientDisconnect:
        # granian says "disconnect" for a body it could not parse as well as for a client
        # that left: one whose connection is still up is waiting for an answer.
        if still_connected(request.scope):
            raise Refused(400, MALFORMED, {"Connection": "close"}) from None
        raise
    finally:
        due.discard(task)
        _reading -= 1


async def _receive_body(request: Request) -> bytes:
    """The ASGI body messages, as Starlette's `Request.stream` reads them but without its async
    generator (most bodies are one message): at most `MAX_BODY` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(413, f"The body is over {MAX_BODY // 1024} KiB.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_json_body(request: Request) -> Any:
    if _media_type(request) != "application/json":
        raise Refused(415, "Send the message as application/json.")
    body = await read_body(request)
    try:
        return json.loads(body)
    except RecursionError:
        # 16 KiB of `[[[[…` is enough to exhaust the parser's recursion: malformed, not a crash.
        raise Refused(400, "The body is nested too deeply to be a message.") from None
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "The body is not valid JSON.") from None


async def read_form(request: Request) -> tuple[str, str | None]:
    """The `text` field of a urlencoded form post, and its honeypot field `website`."""
    if _media_type(request) != "application/x-www-form-urlencoded":
        raise Refused(415, "Send the form as application/x-www-form-urlencoded.")
    body = await read_body(request)
    try:
        fields = parse_qs(
            body.decode("utf-8", errors="strict"),
            keep_blank_values=True,
            strict_parsing=False,
            errors="strict",  # percent-escapes that are not UTF-8 (`%FF`) are bad input
        )
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "The form is not valid UTF-8.") from None
    values = fields.get("text")
    if not values:
        raise Refused(422, "The form has no 'text' field.")
    honeypot = fields.get("website")
    return values[-1], honeypot[-1] if honeypot else None
