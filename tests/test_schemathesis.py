"""schemathesis over `/openapi.json`: every documented operation of a real `guestbook serve`
on a real leader and two followers, driven with generated requests, valid and invalid. Every
answer must be no server error, carry a documented status, content type and headers, match the
schema the document gives for it, accept what the document allows and refuse what it forbids.

The run is bounded and reproducible: a fixed seed, no example database, a modest number of
examples per operation. The document is the one the frontend serves (a test below checks that
they are the same), built in this process so that pytest can list one test per operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import settings
from schemathesis.checks import CheckFunction
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.pytest._test_builder import build_operation_test
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
    unsupported_method,
)
from starlette.datastructures import Headers
from starlette.requests import Request

from conftest import Frontend, base_env, posted, start_cluster
from guestbook.app import create_app
from guestbook.errors import GuestbookError, InvalidMessage
from guestbook.messages import clean_text
from guestbook.posting import idempotency_key
from guestbook.settings import Settings, discover

ADMIN_TOKEN = "schemathesis-moderator-token"  # a throwaway, for this test's frontend only
# The rate limit is off so that a run of many posts from one client is not answered 429 all
# along (429 is documented, so it would pass, but would test nothing else of a post).
ENV = {"GUESTBOOK_ADMIN_TOKEN": ADMIN_TOKEN, "GUESTBOOK_RATE_LIMIT": "0"}
EXAMPLES = 40

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 13,
        "generation": {"max-examples": EXAMPLES, "database": "none"},
        "auth": {"openapi": {"moderator": {"bearer": ADMIN_TOKEN}}},
        "request-timeout": 10,
        "operations": [
            {
                # The live stream never ends: the events a connect is sent at once (status,
                # then the messages after `after`) are enough to check their shape, and a
                # stream with nothing more to send is cut after a second of silence.
                "include-path": "/api/messages/stream",
                "max-stream-events": 4,
                "request-timeout": 1,
            }
        ],
    }
)


# The same settings as the frontend's; the store address is never dialled to build the document.
SETTINGS = Settings.from_env({**ENV, "GUESTBOOK_REDIS_LEADER_URL": "redis://127.0.0.1:9/0"})


def _stored_length(text: object) -> int | None:
    try:
        return len(clean_text(text, 10**9)) if isinstance(text, str) else None
    except InvalidMessage:
        return None


def _document() -> dict[str, Any]:
    return create_app(SETTINGS, discover(SETTINGS)).api.openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module")
def frontend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    """One leader, two followers and a frontend, shared by every operation's run (a cluster
    per operation would cost more than the run itself)."""
    tmp = tmp_path_factory.mktemp("schemathesis")
    cluster = start_cluster(tmp / "cluster")
    env = base_env(
        tmp,
        GUESTBOOK_REDIS_LEADER_URL=cluster.leader.url,
        GUESTBOOK_REDIS_FOLLOWER_URL=cluster.follower_urls(),
        **ENV,
    )
    served = Frontend(env, log_path=tmp / "serve.log")
    try:
        served.start()
        for n in range(3):  # something for the stream, the pages and the feed to show
            posted(served, f"Seeded message {n}\nwith a second line")
        yield served
    finally:
        served.stop()
        cluster.stop()


# Idempotency-Keys this run has sent: a key sent again with another text is rightly refused
# (422, the IETF draft's answer), though the request on its own is valid.
_KEYS_SENT: set[str] = set()


def _key_as_taken(value: object) -> str | None:
    """The Idempotency-Key the server reads from a header value (`"k"` and `k` are one key)."""
    if not isinstance(value, str):
        return None
    headers = Headers({"idempotency-key": value.strip(" \t")})
    try:
        return idempotency_key(Request({"type": "http", "headers": headers.raw}))
    except GuestbookError:
        return None


def _excluded(case: schemathesis.Case) -> list[CheckFunction]:
    """The checks that cannot apply to this case, each for the reason given."""
    excluded: list[CheckFunction] = []
    if case.path in ("/guestbook.php", "/guestbook"):
        # The legacy API's rule that cmd=set needs a `value` whose last comma-separated entry
        # is a message cannot be written as schemas of separate query parameters: a valid-
        # looking `cmd=set` without it is rightly 400 (documented). Every other check runs.
        excluded.append(positive_data_acceptance)
    if case.path == "/api/messages/stream":
        # DELETE on this path is the moderators' DELETE /api/messages/{id} with the id
        # "stream", which the contract answers 400 (a malformed id), not 405.
        excluded.append(unsupported_method)
    if case.path == "/api/messages" and case.method == "POST":
        key = _key_as_taken((case.headers or {}).get("Idempotency-Key"))
        if key is not None:
            if key in _KEYS_SENT:
                excluded.append(positive_data_acceptance)
            _KEYS_SENT.add(key)
        text = case.body.get("text") if isinstance(case.body, dict) else None
        stored = _stored_length(text)
        if (
            isinstance(text, str)
            and stored is not None
            and len(text) > SETTINGS.max_message_chars >= stored
        ):
            # `maxLength` counts what is sent; the limit counts what is stored (trimmed, CR LF
            # as LF), as the text's description says: a text over `maxLength` only by its
            # white space or CRs is taken. JSON Schema has no way to say so.
            excluded.append(negative_data_rejection)
    return excluded


# Every operation by its label ("GET /api/messages"). Each is its own pytest test, built the
# way `schema.parametrize()` builds it (examples, coverage and fuzzing phases): that decorator's
# items all get one node id on pytest 9.2, and pytest-xdist then runs only the first of them
# (and `schemathesis.pytest.from_fixture` fails on pytest 9.2 outright).
OPERATIONS = {result.ok().label: result.ok() for result in schema.get_all_operations()}


@pytest.mark.parametrize("label", list(OPERATIONS))
def test_every_operation_answers_as_documented(label: str, frontend: Frontend) -> None:
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=frontend.url, excluded_checks=_excluded(case))

    run = build_operation_test(
        config=schema.config,
        operation=OPERATIONS[label],
        test_func=settings(deadline=None)(call),
        given_kwargs={},
        feedback=FeedbackSources(),
    )
    run()


def test_the_document_tested_is_the_one_the_frontend_serves(frontend: Frontend) -> None:
    served = httpx.get(f"{frontend.url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == DOCUMENT
