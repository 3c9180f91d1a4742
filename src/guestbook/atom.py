"""`GET /feed.atom`: the newest messages as an Atom feed (RFC 4287), for feed readers.

Built from the same first page as the API (from the feed's memory when it can answer), encoded
once per change and the same on every frontend, so its ETag (a hash of the body) is too and a
reader's `If-None-Match` saves the bytes whichever frontend it reaches.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from html import escape

from fastapi import APIRouter, Request
from starlette.responses import Response

from . import __version__
from .messages import Message
from .reads import read_page
from .state import AppState

router = APIRouter(include_in_schema=False)

ATOM = "application/atom+xml; charset=utf-8"
ENTRIES = 20
TITLE_CHARS = 60
# The feed's and each entry's id must never change: URNs derived from the message id, the same
# whatever address a reader uses to reach the guestbook.
_NAMESPACE = uuid.UUID("8a6f5a0e-6a47-4c55-9d62-2f4f3f1d6c11")
# Characters XML 1.0 cannot carry at all (a message may hold U+FFFE, say): shown as U+FFFD.
_NOT_XML = re.compile("[\ufffe\uffff]")
EPOCH = "1970-01-01T00:00:00.000Z"


def _text(value: str) -> str:
    # `html.escape` also quotes `"` and `'`, which XML text and attributes both accept.
    return escape(_NOT_XML.sub("\ufffd", value))


def _entry(message: Message) -> str:
    first_line = message.text.split("\n", 1)[0]
    title = first_line if len(first_line) <= TITLE_CHARS else first_line[: TITLE_CHARS - 1] + "…"
    return (
        "<entry>"
        f"<id>urn:uuid:{uuid.uuid5(_NAMESPACE, message.id)}</id>"
        f'<title type="text">{_text(title)}</title>'
        f"<updated>{message.created_at}</updated>"
        f"<published>{message.created_at}</published>"
        f"<author><name>Guestbook</name></author>"
        f'<content type="text">{_text(message.text)}</content>'
        "</entry>"
    )


def encode_feed(messages: list[Message]) -> bytes:
    updated = messages[0].created_at if messages else EPOCH
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<feed xmlns="http://www.w3.org/2005/Atom">'
        f"<id>urn:uuid:{uuid.uuid5(_NAMESPACE, 'feed')}</id>"
        "<title>Guestbook</title>"
        "<subtitle>The newest messages</subtitle>"
        f"<updated>{updated}</updated>"
        '<link rel="alternate" type="text/html" href="/"/>'
        '<link rel="self" type="application/atom+xml" href="/feed.atom"/>'
        f'<generator version="{escape(__version__)}">guestbook</generator>'
        + "".join(_entry(m) for m in messages)
        + "</feed>"
    ).encode()


def _etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:20]}"'


async def feed_response(state: AppState, if_none_match: str | None) -> Response:
    """The feed, whichever path serves it; 304 when the reader has it already."""
    read = await read_page(state, ENTRIES, None, None)
    if read.from_memory:
        feed = state.answers.get("atom", lambda: _feed_answer(read.messages))
    else:
        feed = _feed_answer(read.messages)
    etag = feed.headers["etag"]
    if if_none_match and etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    return feed


def _feed_answer(messages: list[Message]) -> Response:
    body = encode_feed(messages)
    headers = {"ETag": _etag(body), "Cache-Control": "no-cache"}
    return Response(body, headers=headers, media_type=ATOM)


@router.get("/feed.atom")
async def feed(request: Request) -> Response:
    state: AppState = request.state.app
    return await feed_response(state, request.headers.get("if-none-match"))


async def fast_feed(request: Request, state: AppState) -> Response | None:
    """The fast path's door to `feed_response` (the feed takes no parameters)."""
    if request.query_params:
        return None
    return await feed_response(state, request.headers.get("if-none-match"))
