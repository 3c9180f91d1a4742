"""The read fast path: reads answered without the framework.

`GET /api/messages` and `GET /` are most of a guestbook's traffic. A first page that the
feed's in-memory head can answer (see `feed.py`) is sent pre-encoded straight away; an API page
with a well-formed `before` is one store round trip. Everything else — other paths, any
parameter it does not recognise or cannot parse — falls through to the FastAPI app, which
stays the one definition of the behaviour (and of the OpenAPI document). Both build their
bodies with the same functions, so an answer is the same byte for byte whichever path gives it.
"""

from __future__ import annotations

import logging
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from . import live
from .api import messages_body
from .errors import StoreError
from .messages import MAX_PAGE, is_id
from .pages import cached_page
from .problems import problem_body, store_problem
from .state import WROTE_COOKIE, AppState

log = logging.getLogger("guestbook")

_JSON = b"application/json"
_HTML = b"text/html; charset=utf-8"
_PROBLEM = b"application/problem+json"


class FastRoute:
    """Stands in for a route in the scope, so metrics and logs name it like the app would."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


API_ROUTE = FastRoute("/api/messages")
PAGE_ROUTE = FastRoute("/")


class ReadFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path == "/api/messages/stream" and await live.serve_raw(scope, receive, send):
                return
            state: AppState | None = scope.get("state", {}).get("app")
            if state is not None and (path == "/api/messages" or path == "/"):
                answer = await self._answer(state, scope, path)
                if answer is not None:
                    scope["route"] = API_ROUTE if path != "/" else PAGE_ROUTE
                    await _send(send, *answer)
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self, state: AppState, scope: Scope, path: str
    ) -> tuple[int, bytes, bytes, dict[str, str]] | None:
        if path == "/":
            if scope["query_string"]:
                return None
            html = cached_page(state, _wrote(scope))
            return None if html is None else (200, html, _HTML, {})
        query = _query(scope["query_string"])
        if query is None:
            return None
        limit, before = query
        try:
            return 200, await messages_body(state, limit, before, _wrote(scope)), _JSON, {}
        except StoreError as exc:
            log.warning("store unavailable on GET /api/messages: %s", exc)
            status, detail, headers = store_problem(exc)
            return status, problem_body(status, detail), _PROBLEM, headers


_QUERIES: dict[bytes, tuple[int, str | None] | None] = {}
# Distinct query strings remembered; clients mostly send a handful (`limit=20`, none).
_QUERY_CACHE = 256


def _query(raw: bytes) -> tuple[int, str | None] | None:
    """`limit` and `before` when both are well-formed (or absent); None leaves it to the app,
    which explains what is wrong with them."""
    try:
        return _QUERIES[raw]
    except KeyError:
        pass
    parsed = _parse_query(raw)
    if len(_QUERIES) >= _QUERY_CACHE:
        _QUERIES.clear()
    _QUERIES[raw] = parsed
    return parsed


def _parse_query(raw: bytes) -> tuple[int, str | None] | None:
    limit, before = 50, None
    if not raw:
        return limit, before
    seen: set[str] = set()
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if name in seen:
            return None
        seen.add(name)
        # isascii: str.isdigit admits "²" and other digits int() refuses.
        if name == "limit" and value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_PAGE:
            limit = int(value)
        elif name == "before" and is_id(value):
            before = value
        else:
            return None
    return limit, before


def _wrote(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"cookie" and WROTE_COOKIE.encode() in value:
            morsel = SimpleCookie(value.decode("latin-1")).get(WROTE_COOKIE)
            if morsel is not None and is_id(morsel.value):
                return morsel.value
    return None


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes, extra: dict[str, str]
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers.extend((k.lower().encode(), v.encode()) for k, v in extra.items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
