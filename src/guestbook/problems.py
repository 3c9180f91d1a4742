"""Errors as clients see them: `application/problem+json` (RFC 9457) for the API and the page,
`{"error": ...}` for the legacy endpoint. Never a stack trace or an internal detail."""

from __future__ import annotations

import json
from http import HTTPStatus

from starlette.responses import Response

from .errors import LeaderUnavailable, ReplicationTimeout, StoreError

PROBLEM_TYPE = "about:blank"


def store_problem(exc: StoreError) -> tuple[int, str, dict[str, str]]:
    """Status, detail and headers for a store failure, the same wherever it is answered."""
    if isinstance(exc, LeaderUnavailable):
        detail = "The guestbook is read-only right now: the leader is unavailable."
    elif isinstance(exc, ReplicationTimeout):
        detail = str(exc)
    else:
        detail = "The message store is unavailable."
    return 503, detail, {"Retry-After": "2"}


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
