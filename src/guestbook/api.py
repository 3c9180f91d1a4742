"""The JSON API: `/api/messages` (read and post) and `/api/status`."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from .bodies import read_json_body
from .errors import Refused
from .messages import DEFAULT_PAGE, ID_PATTERN, MAX_PAGE
from .posting import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_IDEMPOTENCY_KEY,
    idempotency_key,
    post,
    remember_held,
)
from .problems import documented_problems
from .reads import (
    JSON,
    api_page,
    api_page_in_memory,
    page_query_of,
    remember_write,
    wrote_cookie,
    wrote_cookie_of,
)
from .state import AppState

router = APIRouter(prefix="/api", tags=["messages"])

NEW_MESSAGE_REF = "#/components/schemas/NewMessage"


def _char_class(chars: list[str]) -> str:
    """`chars` as regex class ranges, spelled with escapes that ECMA-262, Python and Rust
    regexes all read (`\\xHH`, `\\uHHHH`)."""
    points = sorted({ord(c) for c in chars})
    ranges: list[tuple[int, int]] = []
    for point in points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1] = (ranges[-1][0], point)
        else:
            ranges.append((point, point))

    def esc(point: int) -> str:
        return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"

    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


def _text_pattern() -> str:
    """The texts `messages.clean_text` accepts, whatever their length, as one regex: white space
    at either end (what `str.strip` removes), then a text that starts and ends with a visible
    character, with no control character inside but newline, tab, and CR LF (which becomes a
    newline). Derived from the same definitions of white space and control characters that
    `clean_text` uses (`str.isspace`, category Cc), so the two cannot drift apart; a test
    compares them on generated text."""
    space = [chr(c) for c in range(0x3001) if chr(c).isspace()]  # U+3000 is the last
    control = [chr(c) for c in range(0x100) if unicodedata.category(chr(c)) == "Cc"]
    forbidden = _char_class([c for c in control if c not in "\n\t"])
    invisible = _char_class([*control, *space])
    inner = f"(?:[^{forbidden}]|\\r\\n)"
    visible = f"[^{invisible}]"
    edge = f"[{_char_class(space)}]*"
    return f"^{edge}{visible}(?:{inner}*{visible})?{edge}$"


TEXT_PATTERN = _text_pattern()


def new_message_schema(max_chars: int) -> dict[str, Any]:
    """The body of `POST /api/messages`, carrying this app's limit (GUESTBOOK_MAX_MESSAGE_CHARS)."""
    return {
        "title": "NewMessage",
        "type": "object",
        "additionalProperties": False,
        "required": ["text"],
        "properties": {
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": max_chars,
                "pattern": TEXT_PATTERN,
                "description": f"The message: at most {max_chars} characters once white space "
                "at either end is trimmed and CR LF has become LF (which is how it is "
                "stored); no control characters other than newline and tab, and not only "
                "white space.",
            },
            "website": {
                "type": ["string", "null"],
                "description": "Leave out or empty. The page's hidden honeypot field: people "
                "never fill it in, bots do, and such a post is held for a moderator.",
            },
        },
    }


# `messages.iso_from_ms`'s shape.
CREATED_AT_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"


class MessageOut(BaseModel):
    id: str = Field(
        pattern=ID_PATTERN,
        description="Stream id: unique and time-ordered, e.g. 1764156357123-0",
    )
    text: str = Field(description="As stored: trimmed, CR LF as LF; always escape it to show it")
    created_at: str = Field(
        pattern=CREATED_AT_PATTERN, description="UTC, e.g. 2026-11-26T11:25:57.123Z"
    )


class HeldOut(MessageOut):
    id: str = Field(
        pattern=ID_PATTERN, description="The held post's id, which approve and reject take"
    )
    status: Literal["held"] = Field(
        description='"held": waiting for a moderator; shown only to its poster'
    )


class MessagePage(BaseModel):
    messages: list[MessageOut]
    next: str | None = Field(description="Pass as `before` for the next (older) page")


class ServerInfo(BaseModel):
    url: str
    reachable: bool
    link: str | None
    lag_bytes: int | None
    lag_seconds: int | None


class Frontend(BaseModel):
    name: str
    started_at: str
    version: str
    requests: int = Field(description="Requests answered since it started")
    live_clients: int


class Status(BaseModel):
    instance: str
    mode: str
    leader: ServerInfo
    followers: list[ServerInfo]
    message_count: int | None
    last_id: str | None
    sentinel: dict[str, Any] | None = Field(
        None, description="With Redis Sentinel: each sentinel, whether it answers, whom it names"
    )
    live_clients: int
    reading_from: str
    frontends: list[Frontend] = Field(
        description="Every frontend up on this store, each reporting itself every few seconds "
        "(a stopped one drops off within 60 s, a SIGTERMed one at once)"
    )


@router.get(
    "/messages",
    summary="List messages, newest first",
    response_model=MessagePage,
    responses=documented_problems(
        {
            400: "`limit` or `before` is malformed or out of range",
            503: "No store server can answer",
        }
    ),
)
async def list_messages(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Messages per page")] = DEFAULT_PAGE,
    before: Annotated[
        str | None,
        Query(
            pattern=ID_PATTERN,
            description="Only messages older than this id (the `next` of the previous page)",
        ),
    ] = None,
) -> Response:
    """A page of messages, newest first; follow `next` (as `before`) for older ones."""
    state: AppState = request.state.app
    return await api_page(state, limit, before, wrote_cookie(request.cookies))


async def fast_messages(request: Request, state: AppState) -> Response | None:
    """The fast path's door to `api_page`: None for parameters it leaves to the route to
    explain."""
    query = page_query_of(request.scope["query_string"])
    if query is None:
        return None
    return await api_page(state, *query, wrote_cookie_of(request))


def messages_in_memory(
    query_string: bytes, cookies: Mapping[str, str], state: AppState
) -> Response | None:
    """`fast_messages` when memory can answer, with no await; else None."""
    query = page_query_of(query_string)
    if query is None:
        return None
    return api_page_in_memory(state, *query, wrote_cookie(cookies))


@router.post(
    "/messages",
    summary="Post a message",
    status_code=201,
    response_model=MessageOut,
    responses={
        201: {"description": "Stored and shown to everyone"},
        202: {"model": HeldOut, "description": "Held for a moderator (pre-moderation or spam)"},
        **documented_problems(
            {
                400: "The body is not JSON, or the Idempotency-Key is malformed",
                413: "The body is over 16 KiB",
                415: "The body is not `application/json`",
                422: "The body is not a message: not an object, an unknown field, no `text`, "
                "or a text that is empty, too long or has forbidden characters; or the "
                "Idempotency-Key was first used for another text",
                429: "Too many posts from this client in the last minute",
                503: "The message could not be stored, or it was stored but not confirmed as "
                "copied to enough followers in time (the detail says which)",
            }
        ),
    },
    openapi_extra={
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "A token the client makes up for one submission (1 to "
                f"{MAX_IDEMPOTENCY_KEY} printable ASCII characters, bare or in double quotes): "
                "a retry with the same key and text within 24 h answers the message stored "
                "the first time and stores nothing new.",
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": NEW_MESSAGE_REF}}},
        },
    },
)
async def post_message(request: Request) -> Response:
    """Append a message: `201` with the stored message, or `202` with `"status": "held"` when it
    waits for a moderator. With an `Idempotency-Key` header, a retry of the same post within
    24 h answers the same message and stores nothing new."""
    state: AppState = request.state.app
    return await post_response(state, request)


async def fast_post(request: Request, state: AppState) -> Response | None:
    """The fast path's door to `post_response`. The route reads no parameters, so one given
    is left to it, which ignores it alike (and lets a test compare the two paths)."""
    if request.query_params:
        return None
    return await post_response(state, request)


async def post_response(state: AppState, request: Request) -> Response:
    """The answer to `POST /api/messages`, whichever path serves it."""
    key = idempotency_key(request)
    payload = await read_json_body(request)
    if not isinstance(payload, dict):
        raise Refused(422, 'The body must be a JSON object such as {"text": "Hello"}.')
    unknown = set(payload) - {"text", "website"}
    if unknown:
        raise Refused(422, f"Unknown field(s): {', '.join(sorted(unknown))}.")
    text = payload.get("text")
    if not isinstance(text, str):
        raise Refused(422, "'text' is required and must be a string.")
    honeypot = payload.get("website")
    if honeypot is not None and not isinstance(honeypot, str):
        raise Refused(422, "'website' must be a string.")
    result = await post(state, request, text, honeypot=honeypot, key=key)
    body = result.message.as_dict()
    if result.held:
        response = Response(
            json.dumps({**body, "status": "held"}, ensure_ascii=False), 202, media_type=JSON
        )
        remember_held(request, response, result.message.id)
        return response
    response = Response(json.dumps(body, ensure_ascii=False), 201, media_type=JSON)
    remember_write(response, result.message.id)
    return response


@router.get(
    "/status",
    summary="This instance and its store",
    response_model=Status,
    responses={200: {"description": "Also while store servers are down: they show as unreachable"}},
)
async def status(request: Request) -> Response:
    """Which instance answered, the store mode, each server's reachability and lag, the count.

    Addresses are shown without passwords.
    """
    state: AppState = request.state.app
    return Response(json.dumps(await state.status_dict(), ensure_ascii=False), media_type=JSON)
