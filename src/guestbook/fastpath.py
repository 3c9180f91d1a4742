"""The fast path: a dispatch table `(method, path) → handler` in front of FastAPI, for the
requests that are most of a guestbook's traffic: the reads (the page, a page of the API, the
legacy `get`, the live stream) and the JSON post, whose cost beside a store append was mostly
the framework's routing.

A handler takes Starlette's own `Request` (its `QueryParams`, `Headers` and cookie parser: no
parsing by hand here) and answers with the same function its FastAPI route calls, so both
paths answer alike byte for byte; or it answers None, having sent nothing and read no body,
for a request it leaves to the route (unknown or malformed parameters, which the route
explains). The real route is put on the scope, so metrics and logs name it as the framework
would. An error is answered through `problems`, the one mapping every path uses.

A read that the feed's memory usually answers also has a `FromMemory` function, which the
middleware tries before anything else, with no await and no `Request`: given the raw query
string and the cookies, the answer kept for the feed's current state, or None, and then its
handler runs (which reads the store). Both call the same read function in `reads.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope

from .errors import GuestbookError
from .problems import answer_error
from .reads import cookies_in
from .state import AppState

Handler = Callable[[Request, AppState], Awaitable[Response | None]]
# A read that memory may answer, tried before its handler with no await: given the request's
# raw query string and its cookies, the answer kept for the feed's current state, or None
# (then the handler answers, which reads the store).
FromMemory = Callable[[bytes, Mapping[str, str], AppState], Response | None]


class FastPath:
    def __init__(
        self,
        app: FastAPI,
        handlers: Mapping[tuple[str, str], Handler],
        from_memory: Mapping[tuple[str, str], FromMemory],
    ) -> None:
        # Each handler beside the route that serves its method and path (GET and POST
        # /api/messages are two routes), for metrics and logs.
        routes: dict[tuple[str, str], BaseRoute] = {}
        for route in all_routes(app.router.routes):
            for method in route.methods or ():
                routes.setdefault((method, route.path), route)
        self._table = {key: (handler, routes[key]) for key, handler in handlers.items()}
        self._memory = {key: (memory, routes[key]) for key, memory in from_memory.items()}

    def from_memory(self, scope: Scope, cookie: bytes | None, state: AppState) -> Response | None:
        """The answer memory keeps for this request (`cookie`: its raw Cookie header), or
        None: then `answer`."""
        entry = self._memory.get((scope["method"], scope["path"]))
        if entry is None:
            return None
        memory, route = entry
        kept = memory(scope["query_string"], cookies_in(cookie), state)
        if kept is not None:
            scope["route"] = route
        return kept

    async def answer(self, scope: Scope, receive: Receive, state: AppState) -> Response | None:
        """The fast path's answer to an HTTP request, or None for the framework to answer."""
        entry = self._table.get((scope["method"], scope["path"]))
        if entry is None:
            return None
        handler, route = entry
        request = Request(scope, receive)
        # Named before the handler runs, so that what escapes it (a client that left,
        # answered by the middleware) is counted under its route too; a handler that
        # leaves the request to the framework has it named again there.
        scope["route"] = route
        try:
            return await handler(request, state)
        except GuestbookError as exc:
            return answer_error(exc, request.method, scope["path"], request.headers)


def all_routes(routes: Iterable[BaseRoute]) -> Iterator[Route]:
    """Every route, through included routers too (FastAPI keeps those as a branch that holds
    the router it was given, `original_router`, instead of copying its routes)."""
    for route in routes:
        if isinstance(route, Route):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from all_routes(included.routes)
