"""What a client is told when something goes wrong: the one mapping from an exception to a
status, a detail and headers (`problem_for`, like httpx's single mapping function beside its
tree of errors in `errors.py`), and the one function that writes it down in the shape the
client reads (`problem_response`): `{"error": ...}` on the legacy endpoint, a small HTML page for
a browser, else `application/problem+json` (RFC 9457).

The routes, the page's form, the fast path, the legacy API and the last-resort 500 all come
here. Never a stack trace or an internal detail, and never a word a visitor would have to look
up (leader, follower, replica).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, Response

from .errors import (
    GuestbookError,
    IdempotencyConflict,
    InvalidCursor,
    InvalidMessage,
    InvalidPattern,
    LeaderUnavailable,
    RateLimited,
    Refused,
    ReplicationTimeout,
    StoreError,
)
from .templates import template

log = logging.getLogger("guestbook")

PROBLEM_TYPE = "about:blank"
LEGACY_PATHS = frozenset({"/guestbook.php", "/guestbook"})

# What a visitor is told when a post cannot be stored. It is true whichever store is behind the
# guestbook (an embedded one has no "leader" to speak of), and it claims nothing about reading:
# when the writer is down the readers often are too.
POSTING_PAUSED = (
    "Posting is paused: the guestbook cannot save messages right now. Please try again in a moment."
)
READING_PAUSED = "The guestbook cannot load its messages right now. Please try again in a moment."
INTERNAL = "Something went wrong on our side; it has been logged."
# nginx's status for a request whose client went away; no client ever reads it.
CLIENT_CLOSED = 499
# A store that failed is tried again by the client after this long.
STORE_RETRY_AFTER = "2"


@dataclass(frozen=True)
class Problem:
    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:  # 499 is nginx's, not the standard's
            return "Client Closed Request"


def _replication(exc: GuestbookError) -> Problem:
    # The write did happen; saying "not saved" would invite a duplicate post.
    return Problem(
        503,
        "The message was saved, but it could not be confirmed as safely copied in time "
        f"({exc}). Check that it appears before posting it again.",
        {"Retry-After": STORE_RETRY_AFTER},
    )


def _rate_limited(exc: GuestbookError) -> Problem:
    assert isinstance(exc, RateLimited)
    wait = exc.retry_after
    limit = f" at most {exc.limit} a minute." if exc.limit else ""
    return Problem(
        429, f"Too many posts:{limit} Try again in {wait} s.", {"Retry-After": str(wait)}
    )


def _refused(exc: GuestbookError) -> Problem:
    assert isinstance(exc, Refused)
    return Problem(exc.status, exc.detail, dict(exc.headers))


# Each error class and what it means to a client; a class not listed takes its nearest
# listed base's entry (the lookup walks the class's MRO).
_TABLE: dict[type[GuestbookError], Callable[[GuestbookError], Problem]] = {
    Refused: _refused,
    InvalidMessage: lambda exc: Problem(422, str(exc)),
    IdempotencyConflict: lambda exc: Problem(422, str(exc)),
    InvalidCursor: lambda exc: Problem(400, str(exc)),
    InvalidPattern: lambda exc: Problem(400, str(exc)),
    RateLimited: _rate_limited,
    LeaderUnavailable: lambda exc: Problem(503, POSTING_PAUSED, {"Retry-After": STORE_RETRY_AFTER}),
    ReplicationTimeout: _replication,
    StoreError: lambda exc: Problem(503, READING_PAUSED, {"Retry-After": STORE_RETRY_AFTER}),
}


def problem_for(exc: BaseException) -> Problem:
    """The one mapping from what went wrong to what the client is told; anything unforeseen
    is a 500 that says nothing of its cause."""
    if isinstance(exc, GuestbookError):
        for cls in type(exc).__mro__:
            build = _TABLE.get(cls)
            if build is not None:
                return build(exc)
    if isinstance(exc, ClientDisconnect):
        return Problem(CLIENT_CLOSED, "The client closed the connection.")
    return Problem(500, INTERNAL)


def prefers_html(accept: str | None) -> bool:
    """Whether an `Accept` header asks for HTML over JSON, as a browser's navigation does
    (`text/html,...,*/*;q=0.8`). `*/*` alone, an API client's usual header, counts for both and
    so keeps JSON; only `text/html` or `text/*` named outright counts for HTML."""
    if not accept:
        return False
    html = json_q = 0.0
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        media = media.strip().lower()
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media in ("text/html", "application/xhtml+xml", "text/*"):
            html = max(html, q)
        elif media in ("application/json", "application/problem+json", "application/*", "*/*"):
            json_q = max(json_q, q)
    return html > 0 and html > json_q


def problem_response(problem: Problem, path: str, headers: Headers) -> Response:
    """`problem` in the shape whoever asked reads: the legacy endpoint's own, an HTML page for
    a browser (by its `Accept`, on any path: a person is reading), else a problem document."""
    if path in LEGACY_PATHS:
        body = json.dumps({"error": problem.detail}, ensure_ascii=False)
        return Response(body, problem.status, problem.headers, "application/json")
    if prefers_html(headers.get("accept")):
        return error_page(problem)
    return Response(
        problem_json(problem), problem.status, problem.headers, "application/problem+json"
    )


def answer_error(exc: BaseException, method: str, path: str, headers: Headers) -> Response:
    """What every path answers for an exception: logged as it deserves (a store that cannot
    answer is a warning, anything unforeseen an error with its trace), then `problem_for` it."""
    if isinstance(exc, StoreError):
        log.warning("store unavailable on %s %s: %s", method, path, exc)
    elif isinstance(exc, ClientDisconnect):
        # The client left before its request was read: nothing went wrong on our side, and
        # a 5xx here would raise false alerts. Counted under nginx's 499, logged as info.
        log.info("client left during %s %s", method, path)
    elif not isinstance(exc, GuestbookError):
        log.error("unhandled error on %s %s", method, path, exc_info=exc)
    return problem_response(problem_for(exc), path, headers)


def problem_json(problem: Problem) -> bytes:
    body = {
        "type": PROBLEM_TYPE,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
    }
    return json.dumps(body, ensure_ascii=False).encode()


# Headings in words; the status number is shown beside them for whoever needs it.
_HEADINGS = {
    404: "Page not found",
    500: "Something went wrong",
    503: "The guestbook is unavailable right now",
}
_DETAILS = {404: "There is nothing at this address."}


def error_page(problem: Problem) -> Response:
    """A small HTML page for an error a browser is shown, with the same status and headers a
    problem document would have had."""
    detail = problem.detail
    if detail == problem.title:  # the framework's own detail says no more than the status
        detail = _DETAILS.get(problem.status, detail)
    body = template("error.html").render(
        status=problem.status,
        heading=_HEADINGS.get(problem.status, problem.title),
        detail=detail,
        retry=problem.status == 503,
    )
    return HTMLResponse(body, status_code=problem.status, headers=problem.headers)


# --- how the OpenAPI document describes these answers ---------------------------------------

PROBLEM_JSON = "application/problem+json"
# Component names: the document's builder (`docs.openapi_document`) defines them once.
PROBLEM_REF = "#/components/schemas/Problem"
LEGACY_ERROR_REF = "#/components/schemas/LegacyError"

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem document, as `problem_json` writes it.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "const": PROBLEM_TYPE},
        "title": {"type": "string", "description": "The status's reason phrase"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "What went wrong, in words for a person"},
    },
}
LEGACY_ERROR_SCHEMA: dict[str, Any] = {
    "title": "LegacyError",
    "description": "The legacy endpoint's own error shape, with the same status codes.",
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}

# The headers `problem_for` adds to some answers.
_HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The Bearer challenge",
            "schema": {"type": "string", "pattern": "^Bearer "},
        }
    },
    429: {
        "Retry-After": {
            "description": "Whole seconds until a post is taken again",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Whole seconds before trying again",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    },
}
_BROWSER_NOTE = (
    " A request whose `Accept` prefers `text/html` (a browser) gets the same status as a small "
    "HTML page instead."
)


def documented_problems(why: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route for the errors it answers, each status with the reason it
    is given: the problem document (or the HTML page a browser asks for) and its headers."""
    return {
        status: {
            "description": reason + _BROWSER_NOTE,
            "content": {
                PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}},
                "text/html": {"schema": {"type": "string"}},
            },
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status, reason in why.items()
    }


def documented_legacy_errors(why: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """The same for the legacy endpoint, which answers `{"error": ...}` whatever `Accept` says."""
    return {
        status: {
            "description": reason,
            "content": {"application/json": {"schema": {"$ref": LEGACY_ERROR_REF}}},
            **({"headers": _HEADERS[status]} if status in _HEADERS else {}),
        }
        for status, reason in why.items()
    }
