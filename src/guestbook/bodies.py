"""Request bodies, read within bounds: at most 16 KiB, of the declared type, valid UTF-8 and
JSON or form encoding; anything else is `Refused` before a byte reaches the store."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request

from .errors import Refused

MAX_BODY = 16 * 1024


async def read_body(request: Request) -> bytes:
    """The body, refusing more than 16 KiB before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise Refused(400, "Content-Length is not a number.")
        if int(declared) > MAX_BODY:
            raise Refused(413, f"The body is over {MAX_BODY // 1024} KiB.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(413, f"The body is over {MAX_BODY // 1024} KiB.")
        chunks.append(chunk)
    return b"".join(chunks)


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
