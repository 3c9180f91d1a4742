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
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

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
