"""The original PHP frontend's API, `guestbook.php?cmd=get|set&key=messages`, kept for old pages
and for the Kubernetes conformance test (which calls it as `/guestbook`).

It never deletes or rewrites: `set` appends only the last comma-separated entry of `value`,
which is what the old page sends as new. `get` joins the newest messages, oldest first, with
commas, as the old page expects (a comma inside a message cannot be told apart there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.datastructures import QueryParams
from starlette.responses import Response

from .errors import Refused
from .posting import post, remember_held
from .problems import documented_legacy_errors
from .reads import JSON, legacy_in_memory, legacy_list, remember_write
from .state import AppState

router = APIRouter(tags=["legacy"])


async def _legacy(request: Request, cmd: str, value: str | None) -> Response:
    """`cmd` and `key` were checked by their declared types (an unknown one is a 400)."""
    state: AppState = request.state.app
    if cmd == "get":
        return await legacy_list(state)
    if value is None:
        raise Refused(400, "cmd=set needs a value.")
    _check_utf8(request)
    entry = value.rsplit(",", 1)[-1].strip()
    if not entry:
        raise Refused(400, "The last entry of value is empty.")
    # A held post is answered as usual: the old page knows no other answer.
    result = await post(state, request, entry)
    response = Response(json.dumps({"message": "Updated"}), media_type=JSON)
    if result.held:
        remember_held(request, response, result.message.id)
    else:
        remember_write(response, result.message.id)
    return response


def _check_utf8(request: Request) -> None:
    """The framework decodes a query string leniently (`%FF` becomes "\ufffd"); a value that
    is not UTF-8 is bad input, and bad input stores nothing."""
    try:
        parse_qsl(request.scope["query_string"].decode("latin-1"), errors="strict")
    except UnicodeDecodeError:
        raise Refused(400, "The query string is not valid UTF-8.") from None


async def fast_get(request: Request, state: AppState) -> Response | None:
    """The fast path's door to `legacy_list`: a plain `cmd=get` (with the key or without);
    anything else is the route's to check and answer."""
    if not _plain_get(request.scope["query_string"]):
        return None
    return await legacy_list(state)


def get_in_memory(
    query_string: bytes, cookies: Mapping[str, str], state: AppState
) -> Response | None:
    """`fast_get` when memory can answer, with no await; else None."""
    if not _plain_get(query_string):
        return None
    return legacy_in_memory(state)


@lru_cache(maxsize=8)
def _plain_get(query_string: bytes) -> bool:
    """Remembered per raw query string: old pages all send the same one."""
    params = QueryParams(query_string)
    if len(params.multi_items()) != len(params) or not set(params) <= {"cmd", "key"}:
        return False
    return params.get("cmd") == "get" and params.get("key", "messages") in KEYS


Cmd = Annotated[Literal["get", "set"], Query(description="get or set")]
KEYS = ("messages", "guestbook")
Key = Annotated[
    Literal["messages", "guestbook"] | None,
    Query(description="messages (or guestbook, the GKE variant's name); may be left out"),
]
Value = Annotated[
    str | None,
    Query(description="set: the whole comma-joined list; its last entry is appended"),
]


class LegacyAnswer(BaseModel):
    data: str | None = Field(None, description="cmd=get: messages, oldest first, comma-joined")
    message: str | None = Field(None, description='cmd=set: "Updated"')


_ERRORS: dict[int | str, dict[str, Any]] = documented_legacy_errors(
    {
        400: "`cmd` is not get or set, or `key` is not messages or guestbook; for cmd=set: "
        "no `value`, its last comma-separated entry empty after trimming, or a query string "
        "that is not UTF-8",
        422: "cmd=set: the last entry is too long (GUESTBOOK_MAX_MESSAGE_CHARS) or has control "
        "characters other than newline and tab",
        429: "cmd=set: too many posts from this client in the last minute",
        503: "No store server can answer (or, for set, take the message)",
    }
)


@router.get(
    "/guestbook.php",
    summary="Legacy PHP API",
    response_model=LegacyAnswer,
    response_model_exclude_none=True,
    responses=_ERRORS,
)
async def guestbook_php(
    request: Request, cmd: Cmd, key: Key = None, value: Value = None
) -> Response:
    """`cmd=get` answers `{"data": "m1,m2,..."}`; `cmd=set` answers `{"message": "Updated"}`."""
    return await _legacy(request, cmd, value)


@router.get(
    "/guestbook",
    summary="Legacy API (conformance-test path)",
    response_model=LegacyAnswer,
    response_model_exclude_none=True,
    responses=_ERRORS,
)
async def guestbook(request: Request, cmd: Cmd, key: Key = None, value: Value = None) -> Response:
    """The same as `/guestbook.php`, under the path the Kubernetes conformance test uses."""
    return await _legacy(request, cmd, value)
