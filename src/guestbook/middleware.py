"""The one per-request middleware: security headers on every response, metrics and an
access-log line per request, and the last-resort 500 for whatever escaped everything else.

One pure-ASGI wrapper does all of it so that the read path pays for one layer, not a stack.
"""

from __future__ import annotations

import time
from contextvars import Token
from random import getrandbits

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import Refused
from .fastpath import FastPath
from .logs import AccessLog, request_id
from .metrics import Metrics
from .problems import answer_error

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Swagger UI sets inline styles on its own elements; it still runs no inline script.
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# What every response gets, after its own headers and its request id.
_HEADERS = ((b"content-security-policy", CSP.encode()), *_SECURITY_HEADERS)
_DOCS_HEADERS = ((b"content-security-policy", DOCS_CSP.encode()), *_SECURITY_HEADERS)


NO_HEAD = frozenset({"/api/messages/stream"})
# A client's own X-Request-ID is kept when it looks like an id (a proxy's, say); anything else
# is replaced, so a log line never carries what an attacker chose to put there.
_ID_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
MAX_REQUEST_ID = 128
# granian answers a request head over `connections.MAX_HEAD` (16 KiB), and one it cannot parse,
# itself: 400 or 431 with no security headers, and it has no hook to add them. So the app
# refuses long addresses and large headers first, below that size, with its own answer.
MAX_TARGET = 8 * 1024
MAX_HEADERS = 8 * 1024


def _read_head(scope: Scope) -> tuple[str, Refused | None, bytes | None]:
    """The request's id, its refusal when its address or headers are too large, and its raw
    Cookie header (the first, as Starlette reads it): one pass over the headers, which every
    request pays for."""
    given: bytes | None = None
    cookie: bytes | None = None
    # Each header as sent: name, ": ", value, CRLF.
    size = 0
    for name, value in scope["headers"]:
        size += len(name) + len(value) + 4
        if name == b"x-request-id" and given is None:
            given = value
        elif name == b"cookie" and cookie is None:
            cookie = value
    if given is not None and 0 < len(given) <= MAX_REQUEST_ID and set(given) <= _ID_CHARS:
        rid = given.decode("ascii")
    else:
        # An id to follow a request by, not a secret: the process's own generator, which asks
        # the kernel for nothing (os.urandom was a syscall per request, and let granian's
        # threads in).
        rid = f"{getrandbits(64):016x}"
    target = len(scope.get("raw_path") or scope["path"]) + len(scope.get("query_string", b""))
    if target > MAX_TARGET:
        return rid, Refused(414, f"The address is over {MAX_TARGET // 1024} KiB."), cookie
    if size > MAX_HEADERS:
        refused = Refused(431, f"The request's headers are over {MAX_HEADERS // 1024} KiB.")
        return rid, refused, cookie
    return rid, None, cookie


def _plain(response: Response) -> bool:
    """A response that is a status, headers and a body known in full (Starlette's own
    `Response.__call__`, nothing to run after it): the middleware sends it itself."""
    return type(response).__call__ is Response.__call__ and response.background is None


class RequestMiddleware:
    """Security headers on every response; metrics and an access log line per request; the
    fast path asked first.

    An answer kept in memory (most reads) is asked for first, with no `Request`, no await and
    no context variable, and sent here as two messages with the headers added: that is the
    whole cost of a read from memory beyond the server's own. Other plain answers of the fast
    path (`_plain`) are sent the same way; anything else through a wrapper of `send` that
    adds the headers on its way."""

    def __init__(self, app: ASGIApp, fast: FastPath, metrics: Metrics) -> None:
        self.app = app
        self.fast = fast
        self.metrics = metrics
        self.access = AccessLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False
        path: str = scope["path"]
        method: str = scope["method"]
        # HEAD is GET without the body (RFC 9110): every GET route answers it, headers and
        # Content-Length included. Not the live stream, whose body never ends.
        head = method == "HEAD" and path not in NO_HEAD
        if head:
            scope = {**scope, "method": "GET"}
        rid, oversized, cookie = _read_head(scope)
        added = [(b"x-request-id", rid.encode()), *(_DOCS_HEADERS if path == "/docs" else _HEADERS)]
        state = scope.get("state", {}).get("app")
        if state is not None and state.shutting_down.is_set():
            # Stopping: keep-alive clients should reconnect to another instance.
            added.append((b"connection", b"close"))
        # Set only for what may log (the framework, a handler, an error): a read from memory
        # logs nothing but its access line, which is given the id itself.
        token: Token[str | None] | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *added]}
            await send(message)

        try:
            if oversized is not None:
                raise oversized
            response = None if state is None else self.fast.from_memory(scope, cookie, state)
            if response is None:
                token = request_id.set(rid)
                if state is not None:
                    response = await self.fast.answer(scope, receive, state)
            if response is None:
                await self.app(scope, receive, send_wrapper)
            elif _plain(response):
                status = response.status_code
                started = True
                headers = [*response.raw_headers, *added]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": b"" if head else response.body})
            else:
                await response(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                return  # answered already (FastAPI's own handler logged it)
            if token is None:
                token = request_id.set(rid)
            # Whatever escaped the fast path in front of the app is logged and answered the
            # way every error is: no trace or detail reaches the client.
            response = answer_error(exc, scope["method"], path, Headers(scope=scope))
            await response(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - start
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(method, route_path, status, duration)
            if self.access.enabled:
                client = scope.get("client")
                self.access.write(method, path, status, duration, client[0] if client else "", rid)
            if token is not None:
                request_id.reset(token)
