"""`create_app(settings, address)`: the web app, its lifespan, middleware, routers and error
handlers. Store clients are created in the lifespan and closed on the way out; nothing connects
at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from . import (
    __version__,
    admin,
    api,
    atom,
    docs,
    legacy,
    live,
    moderation_api,
    ops,
    pages,
    presence,
    status_page,
)
from .assets import STATIC
from .errors import GuestbookError
from .fastpath import FastPath, FromMemory, Handler, all_routes
from .feed import Feed
from .live import Hub
from .metrics import Metrics
from .middleware import RequestMiddleware
from .problems import Problem, answer_error, problem_response
from .settings import Settings, StoreAddress
from .state import AppState
from .store import open_store

log = logging.getLogger("guestbook")

# The requests the fast path answers in front of the framework (the reads, and the JSON post),
# each with the function its route also calls.
FAST_HANDLERS: dict[tuple[str, str], Handler] = {
    ("GET", "/api/messages"): api.fast_messages,
    ("POST", "/api/messages"): api.fast_post,
    ("GET", "/"): pages.fast_page,
    ("GET", "/guestbook.php"): legacy.fast_get,
    ("GET", "/guestbook"): legacy.fast_get,
    ("GET", "/api/messages/stream"): live.fast_stream,
    ("GET", "/feed.atom"): atom.fast_feed,
}
# The reads among them that memory answers most of the time, tried first with no await.
FROM_MEMORY: dict[tuple[str, str], FromMemory] = {
    ("GET", "/api/messages"): api.messages_in_memory,
    ("GET", "/"): pages.page_in_memory,
    ("GET", "/guestbook.php"): legacy.get_in_memory,
    ("GET", "/guestbook"): legacy.get_in_memory,
}


class GuestbookApp(RequestMiddleware):
    """The ASGI app served: per-request bookkeeping and the read fast path wrapped around the
    FastAPI app. They sit outside FastAPI's own middleware stack so that the most frequent
    request pays for neither; everything they do not answer goes through FastAPI. (A subclass
    rather than a wrapper: one call fewer on every request.)"""

    def __init__(self, api: FastAPI, metrics: Metrics) -> None:
        super().__init__(api, FastPath(api, FAST_HANDLERS, FROM_MEMORY), metrics)
        self.api = api
        self.state = api.state


def create_app(
    settings: Settings, address: StoreAddress, instance: str | None = None
) -> GuestbookApp:
    if address.leader_url is None and address.mode != "sentinel":
        raise ValueError("create_app needs a leader URL; start the embedded store first")
    metrics = Metrics()
    name = instance or socket.gethostname()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # With sentinels, `start` asks them who leads; redis-py's Sentinel is made here, once.
        store = open_store(settings, address, observer=metrics.observe_store_call)
        await store.start()
        feed = Feed(store)
        state = AppState(
            settings=settings,
            store=store,
            feed=feed,
            metrics=metrics,
            instance=name,
            mode=address.mode,
        )
        state.hub = Hub(state)
        app.state.guestbook = state
        feed.start()
        reporter = asyncio.create_task(presence.report(state), name="guestbook-presence")
        log.info(
            "guestbook ready: %s store%s, leader %s, %d follower(s)",
            address.mode,
            f" ({len(address.sentinels)} sentinels)" if address.sentinels else "",
            store.leader_name,
            len(store.follower_names),
        )
        try:
            yield {"app": state}
        finally:
            state.shutting_down.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(reporter, presence.EVERY)
            await feed.stop()
            await store.close()

    app = FastAPI(
        title="Guestbook",
        version=__version__,
        summary="The Kubernetes guestbook: post and read messages.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        # Our own Prometheus metrics and logs are the observability; FastAPI's OpenTelemetry
        # hooks would add a check to every request for providers nobody configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.include_router(pages.router)
    app.include_router(atom.router)
    app.include_router(live.router)
    app.include_router(api.router)
    app.include_router(moderation_api.router)
    app.include_router(admin.router)
    app.include_router(legacy.router)
    app.include_router(ops.router)
    app.include_router(docs.router)
    app.include_router(status_page.router)
    app.mount("/static", STATIC, "static")
    swagger = docs.assets()
    if swagger is not None:
        app.mount("/docs-assets", swagger, "docs-assets")
    _install_error_handlers(app)
    docs.serve_document(app, settings)
    return GuestbookApp(app, metrics)


def _answer(request: Request, problem: Problem) -> Response:
    return problem_response(problem, request.url.path, request.headers)


def _methods_for(app: FastAPI, path: str) -> set[str]:
    """Every method a route serves at `path` (documented or not, like the page's POST), with
    HEAD beside GET, as the middleware answers it."""
    methods = {
        method
        for route in all_routes(app.router.routes)
        if route.path == path
        for method in route.methods or ()
    }
    return methods | {"HEAD"} if "GET" in methods else methods


def _install_error_handlers(app: FastAPI) -> None:
    """Every error through `problems`: ours by the one table, the framework's own (validation,
    404, 405) by their status, anything else as the last-resort 500."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return answer_error(exc, request.method, request.url.path, request.headers)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return _answer(request, Problem(400, "Invalid parameters: " + "; ".join(parts) + "."))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else {}
        documented = _methods_for(app, request.url.path) if exc.status_code == 405 else None
        if documented:
            # Starlette names only the first route that matched the path; a path served by
            # one route per method (GET and POST /api/messages) allows them all.
            headers["Allow"] = ", ".join(sorted(documented))
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
        return _answer(request, Problem(exc.status_code, detail, headers))

    app.add_exception_handler(GuestbookError, on_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_error)
