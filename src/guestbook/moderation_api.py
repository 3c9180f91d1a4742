"""The moderators' API: remove a message, work the queue of held posts, read the audit. Every
route needs the moderators' bearer token (see `auth.py`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from . import moderation
from .auth import require_bearer
from .bodies import read_body
from .errors import Refused
from .messages import ID_PATTERN
from .state import AppState

router = APIRouter(prefix="/api", tags=["moderation"])

JSON = "application/json"
MAX_REASON = 500
Id = Annotated[str, Path(pattern=ID_PATTERN, description="A message or held-post id")]


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem, "content": {"application/problem+json": {}}} for code in codes}


class HeldPost(BaseModel):
    id: str
    text: str
    created_at: str
    reason: str = Field(description="pre-moderation, links, blocked-pattern, honeypot or duplicate")


class Queue(BaseModel):
    held: list[HeldPost]


class AuditEntry(BaseModel):
    at: str
    action: str = Field(description="remove, approve, reject or hold")
    id: str
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
    responses=_problems(400, 401, 403, 404, 503),
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
    responses=_problems(401, 403, 503),
)
async def queue(request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 100) -> Response:
    state: AppState = request.state.app
    require_bearer(request, state.settings)
    held = await moderation.held(state.store, limit)
    return _json({"held": [post.as_dict() for post in held]})


@router.post(
    "/moderation/queue/{held_id}/approve",
    summary="Publish a held post (moderator)",
    responses=_problems(400, 401, 403, 404, 503),
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
    responses=_problems(400, 401, 403, 404, 503),
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
    responses=_problems(400, 401, 403, 503),
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
