"""The read fast path: first-page reads answered from the live head without the framework.

`GET /api/messages` without `before` and `GET /` are most of a guestbook's traffic. When the
feed's in-memory head can answer them (see `feed.py`), this layer sends the pre-encoded body
straight away; everything else — other paths, `before`, any parameter it does not recognise
or cannot parse, a head that cannot answer — falls through to the FastAPI app unchanged, which
stays the one definition of the behaviour (and of the OpenAPI document). Both build their
bodies with the same functions, so an answer is the same byte for byte whichever path gives it.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from .api import encode_page
from .pages import PAGE_SIZE, render_page
from .state import WROTE_COOKIE, AppState, valid_id

_JSON = b"application/json"
_HTML = b"text/html; charset=utf-8"


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
            if path == "/api/messages" or path == "/":
                body = self._answer(scope, path)
                if body is not None:
                    scope["route"] = API_ROUTE if path != "/" else PAGE_ROUTE
                    await _send(send, body, _JSON if path != "/" else _HTML)
                    return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope, path: str) -> bytes | None:
        state: AppState | None = scope.get("state", {}).get("app")
        if state is None:
            return None
        limit = 50 if path != "/" else PAGE_SIZE
        query: bytes = scope["query_string"]
        if query:
            if path == "/":
                return None
            params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            if len(params) != 1 or params[0][0] != "limit" or not params[0][1].isdigit():
                return None
            limit = int(params[0][1])
            if not 1 <= limit <= 200:
                return None
        cached = state.feed.first_page(limit, _wrote(scope))
        if cached is None:
            return None
        state.metrics.page_cache_hit.inc()
        if path == "/":
            source = state.feed.source
            return state.feed.encoded(
                ("page", source), lambda: render_page(state, cached, source).encode()
            )
        return state.feed.encoded(("api", limit), lambda: encode_page(cached, limit))


def _wrote(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"cookie" and WROTE_COOKIE.encode() in value:
            morsel = SimpleCookie(value.decode("latin-1")).get(WROTE_COOKIE)
            if morsel is not None and valid_id(morsel.value):
                return morsel.value
    return None


async def _send(send: Send, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
