"""The one mapping from what went wrong to what a client is told, and the shapes it is told in."""

from __future__ import annotations

import json

import pytest
from starlette.datastructures import Headers

from guestbook.errors import (
    IdempotencyConflict,
    InvalidCursor,
    InvalidMessage,
    LeaderUnavailable,
    RateLimited,
    Refused,
    ReplicationTimeout,
    StoreUnavailable,
)
from guestbook.problems import (
    INTERNAL,
    POSTING_PAUSED,
    READING_PAUSED,
    problem_for,
    problem_response,
)


@pytest.mark.parametrize(
    ("exc", "status", "headers"),
    [
        (Refused(413, "The body is over 16 KiB."), 413, {}),
        (Refused(415, "Send JSON."), 415, {}),
        (InvalidMessage("The message is empty."), 422, {}),
        (IdempotencyConflict("another text"), 422, {}),
        (InvalidCursor("'before' must be a message id"), 400, {}),
        (RateLimited(7, 30), 429, {"Retry-After": "7"}),
        (LeaderUnavailable("down"), 503, {"Retry-After": "2"}),
        (StoreUnavailable("down"), 503, {"Retry-After": "2"}),
        (ReplicationTimeout("only 0 of 1"), 503, {"Retry-After": "2"}),
        (RuntimeError("a bug"), 500, {}),
    ],
)
def test_each_error_has_one_status_and_its_headers(
    exc: Exception, status: int, headers: dict[str, str]
) -> None:
    problem = problem_for(exc)
    assert problem.status == status
    assert problem.headers == headers


def test_store_errors_are_told_in_words_a_visitor_understands() -> None:
    assert problem_for(LeaderUnavailable("leader 10.0.0.5 did not answer")).detail == POSTING_PAUSED
    assert problem_for(StoreUnavailable("follower x did not answer")).detail == READING_PAUSED
    said = problem_for(ReplicationTimeout("only 0 of 1 followers confirmed it")).detail
    assert "was saved" in said


def test_an_unforeseen_error_says_nothing_of_its_cause() -> None:
    problem = problem_for(KeyError("guestbook:secret-key"))
    assert problem.detail == INTERNAL
    assert "secret" not in problem.detail


def test_a_problem_is_json_for_an_api_client_html_for_a_browser_and_legacy_json_there() -> None:
    problem = problem_for(RateLimited(3, 30))
    api = problem_response(problem, "/api/messages", Headers({"accept": "*/*"}))
    assert api.media_type == "application/problem+json"
    assert json.loads(api.body) == {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "Too many posts: at most 30 a minute. Try again in 3 s.",
    }
    assert api.headers["retry-after"] == "3"
    page = problem_response(problem, "/", Headers({"accept": "text/html,*/*;q=0.8"}))
    assert page.status_code == 429
    assert page.headers["content-type"].startswith("text/html")
    assert b"Try again in 3 s." in page.body
    legacy = problem_response(problem, "/guestbook.php", Headers({"accept": "text/html"}))
    assert json.loads(legacy.body) == {
        "error": "Too many posts: at most 30 a minute. Try again in 3 s."
    }
