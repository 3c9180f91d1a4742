"""The facts `/openapi.json` states, pinned: the limits come from the app's settings, each
pattern accepts exactly what the server accepts, and every answer the server gives is
documented with its real status, content type and schema.

The document is built by the app factory in this process (building it dials no store);
`test_schemathesis.py` checks the server's answers against it over real HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers
from starlette.requests import Request

from guestbook.api import TEXT_PATTERN
from guestbook.app import create_app
from guestbook.bodies import BODY_TIMEOUT, MAX_READERS
from guestbook.errors import GuestbookError, InvalidMessage
from guestbook.messages import ID_PATTERN, clean_text, is_id
from guestbook.middleware import MAX_HEADERS, MAX_TARGET
from guestbook.posting import IDEMPOTENCY_KEY_PATTERN, idempotency_key
from guestbook.settings import Settings, discover

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
PROBLEM = {"$ref": "#/components/schemas/Problem"}
LEGACY_ERROR = {"$ref": "#/components/schemas/LegacyError"}
LEGACY = ("/guestbook.php", "/guestbook")
# What the connection limits answer before a route runs: on every request, and where a body is
# read (bodies.py, middleware.py).
SIZE_LIMITS = ("414", "431")
BODY_LIMITS = ("408", "503")
MODERATION = (
    ("delete", "/api/messages/{message_id}"),
    ("get", "/api/moderation/queue"),
    ("post", "/api/moderation/queue/{held_id}/approve"),
    ("post", "/api/moderation/queue/{held_id}/reject"),
    ("get", "/api/moderation/audit"),
)


def document(**env: str) -> dict[str, Any]:
    config = Settings.from_env({"GUESTBOOK_REDIS_LEADER_URL": "redis://127.0.0.1:9/0", **env})
    return create_app(config, discover(config)).api.openapi()


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def _accepted(text: str) -> bool:
    try:
        clean_text(text, 10**9)
    except InvalidMessage:
        return False
    return True


def _key_accepted(value: str) -> bool:
    request = Request({"type": "http", "headers": Headers({"idempotency-key": value}).raw})
    try:
        idempotency_key(request)
    except GuestbookError:
        return False
    return True


# --- the limits ------------------------------------------------------------------------------


def test_the_text_carries_the_configured_length_limit() -> None:
    schema = document(GUESTBOOK_MAX_MESSAGE_CHARS="120")["components"]["schemas"]["NewMessage"]

    text = schema["properties"]["text"]
    assert text["maxLength"] == 120
    assert text["minLength"] == 1
    assert schema["required"] == ["text"]
    assert schema["additionalProperties"] is False


def test_the_default_length_limit_is_the_contracts_500(doc: dict[str, Any]) -> None:
    assert doc["components"]["schemas"]["NewMessage"]["properties"]["text"]["maxLength"] == 500


@PROPERTY
@given(
    st.text(
        st.one_of(
            st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2028\u3000\x00\x7f\x9fa,"),
            st.characters(codec="utf-8"),
        ),
        max_size=12,
    )
)
def test_the_text_pattern_accepts_exactly_what_the_server_stores(text: str) -> None:
    assert (re.fullmatch(TEXT_PATTERN, text) is not None) == _accepted(text)


@pytest.mark.parametrize(
    "text",
    ["hello\x1f", "\x1c\x1d hi \x1e", "two\r\nlines", "\u2028tab\tin\u2029", "\x85x\xa0"],
)
def test_the_text_pattern_admits_what_the_server_trims_and_accepts(text: str) -> None:
    assert _accepted(text)
    assert re.fullmatch(TEXT_PATTERN, text)


@pytest.mark.parametrize("text", ["", "   ", "a\x1fb", "a\rb", "\x00", "a\x7fb", "a\x85b"])
def test_the_text_pattern_refuses_what_the_server_refuses(text: str) -> None:
    assert not _accepted(text)
    assert re.fullmatch(TEXT_PATTERN, text) is None


@PROPERTY
@given(
    st.one_of(
        st.from_regex(r"[0-9]{1,21}-[0-9]{1,21}", fullmatch=True),
        st.builds(lambda a, b: f"{a}-{b}", st.integers(0, 2**65), st.integers(0, 2**65)),
        st.text(max_size=8),
    )
)
def test_the_id_pattern_accepts_exactly_the_ids_the_store_takes(value: str) -> None:
    assert (re.fullmatch(ID_PATTERN, value) is not None) == is_id(value)


def test_the_id_pattern_stops_at_the_largest_64_bit_number() -> None:
    top = 2**64 - 1
    assert re.fullmatch(ID_PATTERN, f"{top}-{top}")
    assert re.fullmatch(ID_PATTERN, f"{top + 1}-0") is None
    assert re.fullmatch(ID_PATTERN, "\u0661-\u0660") is None  # Arabic-Indic 1-0


@PROPERTY
@given(
    st.text(
        st.one_of(
            st.sampled_from('" a\x7f'), st.characters(min_codepoint=0x21, max_codepoint=0x7E)
        ),
        min_size=1,
        max_size=260,
    )
)
def test_the_idempotency_key_pattern_accepts_exactly_the_keys_taken(value: str) -> None:
    # A header value arrives with the white space around it trimmed (RFC 9110, 5.5).
    value = value.strip(" \t")
    assert (re.fullmatch(IDEMPOTENCY_KEY_PATTERN, value) is not None) == _key_accepted(value)


# --- what every answer looks like -------------------------------------------------------------


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_no_operation_documents_the_frameworks_validation_error(doc: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "ValidationError" not in doc["components"]["schemas"]
    for method, path, operation in operations(doc):
        if method == "get" and path not in LEGACY:
            assert "422" not in operation["responses"], (method, path)


def test_every_operation_with_parameters_documents_the_400_it_answers(
    doc: dict[str, Any],
) -> None:
    for method, path, operation in operations(doc):
        if operation.get("parameters"):
            assert "400" in operation["responses"], (method, path)


def test_every_error_answer_is_a_documented_problem(doc: dict[str, Any]) -> None:
    for _, path, operation in operations(doc):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            content = response["content"]
            if path in LEGACY:
                assert content == {"application/json": {"schema": LEGACY_ERROR}}, (path, status)
            elif path == "/readyz" and status == "503":
                assert set(content) == {"text/plain"}
            else:
                assert content["application/problem+json"] == {"schema": PROBLEM}, (path, status)
                assert set(content) == {"application/problem+json", "text/html"}


def test_the_problem_schema_is_rfc_9457s_four_members(doc: dict[str, Any]) -> None:
    problem = doc["components"]["schemas"]["Problem"]
    assert problem["required"] == ["type", "title", "status", "detail"]
    assert doc["components"]["schemas"]["LegacyError"]["required"] == ["error"]


def test_retry_after_is_documented_on_every_503_and_429(doc: dict[str, Any]) -> None:
    for _, path, operation in operations(doc):
        for status in ("429", "503"):
            if status in operation["responses"] and path != "/readyz":
                assert "Retry-After" in operation["responses"][status]["headers"], (path, status)


def test_readiness_documents_its_503(doc: dict[str, Any]) -> None:
    responses = doc["paths"]["/readyz"]["get"]["responses"]
    assert set(responses) == {"200", "503", *SIZE_LIMITS}


def test_the_post_documents_every_answer_and_the_idempotency_key(doc: dict[str, Any]) -> None:
    operation = doc["paths"]["/api/messages"]["post"]

    statuses = {"201", "202", "400", "413", "415", "422", "429", "503", *BODY_LIMITS, *SIZE_LIMITS}
    assert set(operation["responses"]) == statuses
    (header,) = operation["parameters"]
    assert header["name"] == "Idempotency-Key"
    assert header["in"] == "header"
    assert header["required"] is False
    assert header["schema"]["pattern"] == IDEMPOTENCY_KEY_PATTERN


def test_the_list_documents_400_503_and_the_size_limits_only_as_errors(doc: dict[str, Any]) -> None:
    responses = doc["paths"]["/api/messages"]["get"]["responses"]
    assert set(responses) == {"200", "400", "503", *SIZE_LIMITS}


def test_the_live_stream_documents_each_event(doc: dict[str, Any]) -> None:
    responses = doc["paths"]["/api/messages/stream"]["get"]["responses"]
    content = responses["200"]["content"]

    assert set(content) == {"text/event-stream"}
    events = content["text/event-stream"]["itemSchema"]["oneOf"]
    names = [event["properties"]["event"]["const"] for event in events]
    assert names == ["message", "remove", "status", "reconnect"]
    message = events[0]
    assert set(message["required"]) == {"event", "data", "id"}
    assert message["properties"]["data"]["contentSchema"] == {
        "$ref": "#/components/schemas/MessageOut"
    }
    assert set(responses) == {"200", "400", *SIZE_LIMITS}


def test_optional_parameters_are_strings_never_null(doc: dict[str, Any]) -> None:
    for _, path, operation in operations(doc):
        for parameter in operation.get("parameters", ()):
            assert "anyOf" not in parameter["schema"], (path, parameter["name"])


def test_the_moderation_api_documents_its_guards_and_missing_ids(doc: dict[str, Any]) -> None:
    assert doc["components"]["securitySchemes"]["moderator"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "GUESTBOOK_ADMIN_TOKEN, the moderators' token",
    }
    for method, path in MODERATION:
        operation = doc["paths"][path][method]
        assert operation["security"] == [{"moderator": []}]
        responses = operation["responses"]
        assert {"400", "401", "403", "503"} <= set(responses), path
        assert "WWW-Authenticate" in responses["401"]["headers"]
        if "{" in path:
            assert "404" in responses, path


def test_the_legacy_api_documents_its_400_and_422_rules(doc: dict[str, Any]) -> None:
    for path in LEGACY:
        responses = doc["paths"][path]["get"]["responses"]
        assert set(responses) == {"200", "400", "422", "429", "503", *SIZE_LIMITS}
        assert "cmd" in responses["400"]["description"]
        assert "last entry" in responses["422"]["description"]


# --- the connection limits' answers ------------------------------------------------------------


def test_every_operation_documents_the_414_and_431_of_the_size_limits(
    doc: dict[str, Any],
) -> None:
    for method, path, operation in operations(doc):
        responses = operation["responses"]
        assert set(SIZE_LIMITS) <= set(responses), (method, path)
        assert f"{MAX_TARGET // 1024} KiB" in responses["414"]["description"]
        assert f"{MAX_HEADERS // 1024} KiB" in responses["431"]["description"]


def test_every_operation_that_reads_a_body_documents_the_408_and_the_503_of_the_body_limits(
    doc: dict[str, Any],
) -> None:
    with_body = [(m, p, o) for m, p, o in operations(doc) if "requestBody" in o]
    assert {(m, p) for m, p, _ in with_body} >= {
        ("post", "/api/messages"),
        ("delete", "/api/messages/{message_id}"),
        ("post", "/api/moderation/queue/{held_id}/reject"),
    }
    for method, path, operation in with_body:
        responses = operation["responses"]
        assert f"{BODY_TIMEOUT:g} s" in responses["408"]["description"], (method, path)
        busy = responses["503"]
        assert f"More than {MAX_READERS} request bodies" in busy["description"], (method, path)
        assert "Retry-After" in busy["headers"]


def test_operations_that_read_no_body_document_no_body_limit(doc: dict[str, Any]) -> None:
    for method, path, operation in operations(doc):
        if "requestBody" not in operation:
            assert "408" not in operation["responses"], (method, path)
            busy = operation["responses"].get("503", {}).get("description", "")
            assert "request bodies" not in busy, (method, path)


def test_the_legacy_api_documents_the_size_limits_in_its_own_error_shape(
    doc: dict[str, Any],
) -> None:
    for path in LEGACY:
        responses = doc["paths"][path]["get"]["responses"]
        for status in SIZE_LIMITS:
            assert responses[status]["content"] == {"application/json": {"schema": LEGACY_ERROR}}
