"""Errors as clients see them: `application/problem+json` (RFC 9457) for API clients,
`{"error": ...}` for the legacy endpoint, and (built by `pages.error_page`) a small HTML page for
a browser, which `prefers_html` recognises. Never a stack trace or an internal detail, and never
a word a visitor would have to look up (leader, follower, replica)."""

from __future__ import annotations

import json
from http import HTTPStatus

from starlette.responses import Response

from .errors import LeaderUnavailable, ReplicationTimeout, StoreError

PROBLEM_TYPE = "about:blank"


# What a visitor is told when a post cannot be stored. It is true whichever store is behind the
# guestbook (an embedded one has no "leader" to speak of), and it claims nothing about reading:
# when the writer is down the readers often are too.
POSTING_PAUSED = (
    "Posting is paused: the guestbook cannot save messages right now. Please try again in a moment."
)
READING_PAUSED = "The guestbook cannot load its messages right now. Please try again in a moment."


def store_problem(exc: StoreError) -> tuple[int, str, dict[str, str]]:
    """Status, detail and headers for a store failure, the same wherever it is answered."""
    if isinstance(exc, LeaderUnavailable):
        detail = POSTING_PAUSED
    elif isinstance(exc, ReplicationTimeout):
        # The write did happen; saying "not saved" would invite a duplicate post.
        detail = (
            f"The message was saved, but it could not be confirmed as safely copied in time "
            f"({exc}). Check that it appears before posting it again."
        )
    else:
        detail = READING_PAUSED
    return 503, detail, {"Retry-After": "2"}


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


class HTTPProblem(Exception):
    """Raised anywhere in a request to answer with a problem document."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def problem_body(status: int, detail: str) -> bytes:
    body = {
        "type": PROBLEM_TYPE,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    return json.dumps(body, ensure_ascii=False).encode()


def problem_response(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        problem_body(status, detail),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def legacy_error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps({"error": detail}, ensure_ascii=False),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
