"""The moderators' API: remove a message, work the queue of held posts, read the audit. Every
route needs the moderators' bearer token (see `auth.py`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from . import moderation
from .api import CREATED_AT_PATTERN, MessageOut
from .auth import require_bearer
from .bodies import read_body
from .errors import Refused
from .messages import ID_PATTERN
from .problems import documented_problems
from .reads import JSON
from .state import AppState

router = APIRouter(prefix="/api", tags=["moderation"])

MAX_REASON = 500
Id = Annotated[str, Path(pattern=ID_PATTERN, description="A message or held-post id")]


# The moderators' token as the document names it; every route here requires it.
BEARER_SCHEME: dict[str, Any] = {
    "moderator": {
        "type": "http",
        "scheme": "bearer",
        "description": "GUESTBOOK_ADMIN_TOKEN, the moderators' token",
    }
}
_SECURED: dict[str, Any] = {"security": [{"moderator": []}]}
_REASON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"reason": {"type": "string", "maxLength": MAX_REASON}},
                }
            }
        },
    }
}
# What every moderation route may answer, whatever it does.
_GUARDED = {
    401: "No moderators' token, or the wrong one",
    403: "Moderation over HTTP is off: no GUESTBOOK_ADMIN_TOKEN is configured",
    503: "No store server can answer",
}
_BAD_ID = {400: "The id is not a message id"}
_BAD_REASON = {
    400: "The id is not a message id, or the body is not JSON",
    413: "The body is over 16 KiB",
    422: f'The body is not {{"reason": "..."}} with at most {MAX_REASON} characters',
}
_BAD_PAGE = {400: "`limit` or `before` is malformed or out of range"}


class HeldPost(BaseModel):
    id: str = Field(pattern=ID_PATTERN)
    text: str
    created_at: str = Field(pattern=CREATED_AT_PATTERN)
    reason: str = Field(description="pre-moderation, links, blocked-pattern, honeypot or duplicate")


class Queue(BaseModel):
    held: list[HeldPost]


class AuditEntry(BaseModel):
    at: str
    action: str = Field(description="remove, approve, reject or hold")
    id: str = Field(pattern=ID_PATTERN)
    by: str
    reason: str
    text: str


class Audit(BaseModel):
    entries: list[AuditEntry]


async def _reason(request: Request) -> str:
    """The optional `{"reason": "..."}` body of a removal or rejection."""
    body = await read_body(request)
    if not body.strip():
        return ""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused(400, "The body is not valid JSON.") from None
    if not isinstance(payload, dict) or set(payload) - {"reason"}:
        raise Refused(422, 'The body may only be {"reason": "..."}.')
    reason = payload.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise Refused(422, f"'reason' must be a string of at most {MAX_REASON} characters.")
    return reason.strip()


def _json(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status, media_type=JSON)


@router.delete(
    "/messages/{message_id}",
    summary="Remove a message (moderator)",
    status_code=204,
    responses={
        204: {"description": "Removed"},
        **documented_problems(
            {**_BAD_REASON, **_GUARDED, 404: "No such message, or it is removed already"}
        ),
    },
    openapi_extra={**_SECURED, **_REASON_BODY},
)
async def remove_message(request: Request, message_id: Id) -> Response:
    """Gone within a second from every frontend's page, API, legacy `get`, feed and live
    clients (`event: remove`); audited with the text. Body: optional `{"reason": "..."}`."""
    state: AppState = request.state.app
    by = require_bearer(request, state.settings)
    removed = await moderation.remove(state.store, message_id, by=by, reason=await _reason(request))
    if removed is None:
        raise Refused(404, f"No message {message_id}: it was never posted or is removed already.")
    state.feed.drop_now(removed.id)
    return Response(status_code=204)


@router.get(
    "/moderation/queue",
    summary="Held posts, oldest first (moderator)",
    response_model=Queue,
    responses=documented_problems({400: "`limit` is out of range", **_GUARDED}),
    openapi_extra=_SECURED,
)
async def queue(request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 100) -> Response:
    state: AppState = request.state.app
    require_bearer(request, state.settings)
    held = await moderation.held(state.store, limit)
    return _json({"held": [post.as_dict() for post in held]})


@router.post(
    "/moderation/queue/{held_id}/approve",
    summary="Publish a held post (moderator)",
    responses={
        200: {"model": MessageOut, "description": "Published, with its new id"},
        **documented_problems(
            {**_BAD_ID, **_GUARDED, 404: "No such held post: approved or rejected already"}
        ),
    },
    openapi_extra=_SECURED,
)
async def approve(request: Request, held_id: Id) -> Response:
    """The post appears live everywhere, with a new id (given back); audited."""
    state: AppState = request.state.app
    by = require_bearer(request, state.settings)
    message = await moderation.approve(state.store, held_id, by=by)
    if message is None:
        raise Refused(404, f"No held post {held_id}: it was approved or rejected already.")
    return _json(message.as_dict())


@router.post(
    "/moderation/queue/{held_id}/reject",
    summary="Drop a held post (moderator)",
    status_code=204,
    responses={
        204: {"description": "Dropped"},
        **documented_problems(
            {**_BAD_REASON, **_GUARDED, 404: "No such held post: approved or rejected already"}
        ),
    },
    openapi_extra={**_SECURED, **_REASON_BODY},
)
async def reject(request: Request, held_id: Id) -> Response:
    """Audited with its text; body: optional `{"reason": "..."}`."""
    state: AppState = request.state.app
    by = require_bearer(request, state.settings)
    dropped = await moderation.reject(state.store, held_id, by=by, reason=await _reason(request))
    if dropped is None:
        raise Refused(404, f"No held post {held_id}: it was approved or rejected already.")
    return Response(status_code=204)


@router.get(
    "/moderation/audit",
    summary="Moderation decisions, newest first (moderator)",
    response_model=Audit,
    responses=documented_problems({**_BAD_PAGE, **_GUARDED}),
    openapi_extra=_SECURED,
)
async def audit(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> Response:
    state: AppState = request.state.app
    require_bearer(request, state.settings)
    entries = await moderation.audit(state.store, limit, before)
    return _json({"entries": [entry.as_dict() for entry in entries]})
