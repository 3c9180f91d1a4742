"""One read function per thing read — a page of the API, the page's messages, the legacy
list — used by the routes and by the fast path alike, so an answer is the same byte for byte
whichever path gives it; and the read-your-writes rule they all honour.

Every page within the feed's window (the newest 10,000 messages) and the legacy list come from
the feed's memory when it can answer (see `feed.py`), their answers built once per change of
the feed (see `AnswerCache`). Anything else is one store read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from starlette.datastructures import QueryParams
from starlette.requests import Request, cookie_parser
from starlette.responses import Response

from .messages import DEFAULT_PAGE, MAX_PAGE, Message, is_id
from .state import AppState

JSON = "application/json"

# --- read-your-writes ------------------------------------------------------------------------

WROTE_COOKIE = "gb_wrote"
# Long enough for any follower to catch up; after that the leader need not be asked.
WROTE_MAX_AGE = 60


# The cookie `Response.set_cookie` sets for a message id, written directly: building it
# through `http.cookies` cost a post more than its JSON. An id is digits and a dash, which a
# cookie value takes unquoted; a test compares the two spellings.
_WROTE_HEADER = f"{WROTE_COOKIE}={{}}; HttpOnly; Max-Age={WROTE_MAX_AGE}; Path=/; SameSite=lax"


def remember_write(response: Response, message_id: str) -> None:
    """Let the poster's next reads, on any frontend, insist on seeing this message."""
    if is_id(message_id):
        response.raw_headers.append((b"set-cookie", _WROTE_HEADER.format(message_id).encode()))
    else:  # never a store's id; http.cookies quotes what needs it
        response.set_cookie(
            WROTE_COOKIE, message_id, max_age=WROTE_MAX_AGE, httponly=True, samesite="lax"
        )


_NO_COOKIES: Mapping[str, str] = {}


def cookies_of(request: Request) -> Mapping[str, str]:
    """A request's cookies; one that sends none (most readers, that never posted) is not
    asked to parse them."""
    for name, _ in request.scope["headers"]:
        if name == b"cookie":
            return request.cookies
    return _NO_COOKIES


def cookies_in(header: bytes | None) -> Mapping[str, str]:
    """The cookies of a raw `Cookie` header (the request's first, as Starlette reads it), or
    none without one."""
    return _NO_COOKIES if header is None else cookie_parser(header.decode("latin-1"))


def wrote_cookie_of(request: Request) -> str | None:
    return wrote_cookie(cookies_of(request))


def wrote_cookie(cookies: Mapping[str, str]) -> str | None:
    """The id this reader wrote last, when its cookie holds a well-formed one."""
    value = cookies.get(WROTE_COOKIE)
    return value if value and is_id(value) else None


# --- pages -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageRead:
    """Messages newest first (at most the page's size), the cursor onwards, and whether they
    came from the feed's memory (then the same for every reader until the feed changes)."""

    messages: list[Message]
    next: str | None
    from_memory: bool


def memory_span(
    state: AppState, count: int, before: str | None, must_include: str | None
) -> slice | None:
    """Where in the feed's memory the newest `count` messages older than `before` are
    (`Feed.span`), counted as a read from memory; None when memory cannot answer."""
    span = state.feed.span(count, before, must_include)
    if span is not None:
        state.metrics.page_cache_hit.inc()
    return span


def memory_page(
    state: AppState, limit: int, must_include: str | None, before: str | None = None
) -> PageRead | None:
    """A page from the feed's memory, or None when memory cannot answer it."""
    span = memory_span(state, limit + 1, before, must_include)
    return None if span is None else _page_in(state, span, limit)


def _page_in(state: AppState, span: slice, limit: int) -> PageRead:
    newest = state.feed.recent[span][::-1]
    shown = newest[:limit]
    return PageRead(shown, shown[-1].id if len(newest) > limit and shown else None, True)


async def read_page(
    state: AppState, limit: int, before: str | None, must_include: str | None
) -> PageRead:
    """A page, newest first: from memory when it can answer, else the store (whose errors
    propagate)."""
    cached = memory_page(state, limit, must_include, before)
    if cached is not None:
        return cached
    state.metrics.page_cache_miss.inc()
    page = await state.store.page(limit, before, must_include)
    state.read_from = page.source
    return PageRead(page.messages, page.next, False)


def encode_page(read: PageRead) -> bytes:
    body = {"messages": [m.as_dict() for m in read.messages], "next": read.next}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def api_page_in_memory(
    state: AppState, limit: int, before: str | None, must_include: str | None
) -> Response | None:
    """The answer to `GET /api/messages` from the feed's memory, or None when memory cannot
    answer. Not a coroutine: the fast path answers most reads with no await between."""
    span = memory_span(state, limit + 1, before, must_include)
    if span is None:
        return None
    # Older pages too: readers paging back follow the same `next` cursors. The messages are
    # taken from memory only to build an answer, not for every read of it.
    return state.answers.get(
        ("api", limit, before),
        lambda: Response(encode_page(_page_in(state, span, limit)), media_type=JSON),
    )


async def api_page(
    state: AppState, limit: int, before: str | None, must_include: str | None
) -> Response:
    """The answer to `GET /api/messages`."""
    answer = api_page_in_memory(state, limit, before, must_include)
    if answer is not None:
        return answer
    page = await read_page(state, limit, before, must_include)
    return Response(encode_page(page), media_type=JSON)


@lru_cache(maxsize=64)
def page_query_of(query_string: bytes) -> tuple[int, str | None] | None:
    """`page_query` of a raw query string, remembered: most reads send one of a few (the first
    page's), and parsing one costs more than answering from memory."""
    return page_query(QueryParams(query_string))


def page_query(params: QueryParams) -> tuple[int, str | None] | None:
    """`limit` and `before` of an API page when both are well-formed or absent, each given at
    most once and nothing else given; None leaves the request to the framework, whose declared
    parameters (the same rules: `MAX_PAGE`, `ID_PATTERN`) explain what is wrong."""
    if len(params.multi_items()) != len(params) or not set(params) <= {"limit", "before"}:
        return None
    raw_limit = params.get("limit")
    limit = DEFAULT_PAGE
    if raw_limit is not None:
        # isascii: str.isdigit admits "²" and other digits int() refuses.
        if not (raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= MAX_PAGE):
            return None
        limit = int(raw_limit)
    before = params.get("before")
    if before is not None and not is_id(before):
        return None
    return limit, before


# --- the legacy list -------------------------------------------------------------------------

# The most messages `get` returns, newest kept: the old page sends the whole list back with
# every post, in a query string, so it must stay a size a browser can send.
LEGACY_LIMIT = 1000


def legacy_in_memory(state: AppState) -> Response | None:
    """The legacy list from the feed's memory, built once per change of the feed; None when
    memory cannot answer."""
    span = memory_span(state, LEGACY_LIMIT, None, None)
    if span is None:
        return None
    # A thousand messages taken from memory only to build the answer, not for every read.
    return state.answers.get("legacy", lambda: _legacy_answer(state.feed.recent[span]))


async def legacy_list(state: AppState) -> Response:
    """`{"data": "m1,m2,..."}`, oldest first, for the original PHP page: from the feed's
    memory when it can answer; else one store read."""
    kept = legacy_in_memory(state)
    if kept is not None:
        return kept
    state.metrics.page_cache_miss.inc()
    return _legacy_answer(await state.store.newest_oldest_first(LEGACY_LIMIT))


def _legacy_answer(messages: list[Message]) -> Response:
    # json.dumps' default separators give exactly the PHP page's `{"data": "..."}`.
    body = json.dumps({"data": ",".join(m.text for m in messages)}).encode()
    return Response(body, media_type=JSON)
