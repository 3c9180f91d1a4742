"""The JSON API: `/api/messages` (read and post) and `/api/status`."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from .bodies import read_json_body
from .errors import Refused
from .messages import DEFAULT_PAGE, ID_PATTERN, MAX_PAGE
from .posting import idempotency_key, post, remember_held
from .reads import api_page, page_query, remember_write, wrote_cookie
from .state import AppState

router = APIRouter(prefix="/api", tags=["messages"])

JSON = "application/json"


class MessageIn(BaseModel):
    """A new message. Leading and trailing white space is trimmed."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(
        min_length=1,
        pattern=r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$",
        description="The message; at most GUESTBOOK_MAX_MESSAGE_CHARS characters (500) after "
        "trimming, no control characters other than newline and tab.",
    )
    website: str | None = Field(
        None,
        description="Leave out or empty. The page's hidden honeypot field: people never fill it "
        "in, bots do, and such a post is held for a moderator.",
    )


class MessageOut(BaseModel):
    id: str = Field(description="Stream id: unique and time-ordered, e.g. 1764156357123-0")
    text: str
    created_at: str = Field(description="UTC, e.g. 2026-11-26T11:25:57.123Z")


class HeldOut(MessageOut):
    id: str = Field(description="The held post's id, which approve and reject take")
    status: str = Field(description='"held": waiting for a moderator; shown only to its poster')


class MessagePage(BaseModel):
    messages: list[MessageOut]
    next: str | None = Field(description="Pass as `before` for the next (older) page")


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str


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
    live_clients: int
    reading_from: str
    frontends: list[Frontend] = Field(
        description="Every frontend up on this store, each reporting itself every few seconds "
        "(a stopped one drops off within 60 s, a SIGTERMed one at once)"
    )


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem, "content": {"application/problem+json": {}}} for code in codes}


@router.get(
    "/messages",
    summary="List messages, newest first",
    response_model=MessagePage,
    responses=_problems(400, 503),
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
    return await messages_response(state, limit, before, wrote_cookie(request.cookies))


async def messages_response(
    state: AppState, limit: int, before: str | None, must_include: str | None
) -> Response:
    """The answer to `GET /api/messages`, whichever path serves it."""
    return Response(await api_page(state, limit, before, must_include), media_type=JSON)


async def fast_messages(request: Request, state: AppState) -> Response | None:
    """The fast path's door to `messages_response`: None for parameters it leaves to the
    route to explain."""
    query = page_query(request.query_params)
    if query is None:
        return None
    return await messages_response(state, *query, wrote_cookie(request.cookies))


@router.post(
    "/messages",
    summary="Post a message",
    status_code=201,
    response_model=MessageOut,
    responses={
        202: {"model": HeldOut, "description": "Held for a moderator (pre-moderation or spam)"},
        **_problems(400, 413, 415, 422, 429, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": MessageIn.model_json_schema()}},
        }
    },
)
async def post_message(request: Request) -> Response:
    """Append a message: `201` with the stored message, or `202` with `"status": "held"` when it
    waits for a moderator. With an `Idempotency-Key` header, a retry of the same post within
    24 h answers the same message and stores nothing new."""
    state: AppState = request.state.app
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


@router.get("/status", summary="This instance and its store", response_model=Status)
async def status(request: Request) -> Response:
    """Which instance answered, the store mode, each server's reachability and lag, the count.

    Addresses are shown without passwords.
    """
    state: AppState = request.state.app
    return Response(json.dumps(await state.status_dict(), ensure_ascii=False), media_type=JSON)
