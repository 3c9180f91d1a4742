"""The guestbook page (`GET /`, `GET /?before=ID`) and its no-JavaScript form post (`POST /`).

The page never answers a browser with JSON and never shows a visitor store jargon (leader,
follower): while the store cannot be read it shows the feed's last copy, saying so.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.datastructures import QueryParams
from starlette.responses import HTMLResponse, RedirectResponse, Response

from . import moderation
from .assets import STATIC
from .bodies import read_form
from .errors import GuestbookError, StoreError
from .messages import ID_PATTERN, Message, is_id
from .posting import held_ids, post, remember_held
from .problems import problem_for
from .reads import cookies_of, memory_span, read_page, remember_write, wrote_cookie
from .state import AppState
from .templates import template

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 20

_page = template("page.html")


def render_page(state: AppState, messages: list[Message], **extra: Any) -> str:
    return _page.render(
        messages=messages[:PAGE_SIZE],
        next=messages[PAGE_SIZE - 1].id if len(messages) > PAGE_SIZE else None,
        newest_id=messages[0].id if messages and not extra.get("before") else None,
        instance=state.instance,
        max_chars=state.settings.max_message_chars,
        **extra,
    )


# --- the page ------------------------------------------------------------------------------


async def _newest(state: AppState, must_include: str | None) -> list[Message]:
    """The first page and one more message (telling whether older ones exist)."""
    read = await read_page(state, PAGE_SIZE + 1, None, must_include)
    return read.messages


def _seen_at(state: AppState) -> str:
    seen = state.feed.seen_at
    return time.strftime("%H:%M UTC", time.gmtime(seen)) if seen is not None else ""


@router.get("/")
async def index(
    request: Request,
    before: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> Response:
    state: AppState = request.state.app
    return await page_response(
        state, before, wrote_cookie(request.cookies), held_ids(request.cookies)
    )


async def page_response(
    state: AppState, before: str | None, must_include: str | None, held: list[str]
) -> Response:
    """The page, whichever path serves it: the newest messages (from memory when it can
    answer, encoded once per change) or those older than `before`; for a poster whose posts
    wait for a moderator, those first, marked as such (read for them alone, never cached)."""
    if before is not None:
        older = await read_page(state, PAGE_SIZE + 1, before, None)
        if older.from_memory:
            return state.answers.get(
                ("page", before),
                lambda: HTMLResponse(render_page(state, older.messages, before=before)),
            )
        return HTMLResponse(render_page(state, older.messages, before=before))
    waiting = await _held(state, held)
    if not waiting:
        answer = newest_in_memory(state, must_include)
        if answer is not None:
            return answer
    try:
        messages = await _newest(state, must_include)
    except StoreError:
        remembered = state.feed.last_seen(PAGE_SIZE)
        if not remembered:
            raise  # nothing to show: the error handlers answer 503
        # 200, not 503: this is the page, with messages a visitor can read and a notice that
        # says what is wrong; a 503 would have browsers, proxies and crawlers treat it as no
        # page at all. Readiness (/readyz) is where the outage is reported to machines.
        # no-store: a cache must not keep handing out this copy once the store is back.
        html = render_page(state, remembered, stale=True, seen_at=_seen_at(state))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})
    return HTMLResponse(render_page(state, messages, held=waiting))


def newest_in_memory(state: AppState, must_include: str | None) -> Response | None:
    """The first page from the feed's memory, built once per change of the feed; None when
    memory cannot answer."""
    span = memory_span(state, PAGE_SIZE + 1, None, must_include)
    if span is None:
        return None
    # The messages are taken from memory only to build the page, not for every read of it.
    return state.answers.get(
        "page", lambda: HTMLResponse(render_page(state, state.feed.recent[span][::-1]))
    )


async def _held(state: AppState, held: list[str]) -> list[Message]:
    """The poster's own posts still waiting for a moderator (approved or rejected ones are
    gone from the queue, and so from here)."""
    waiting = []
    for held_id in held:
        post = await moderation.held_message(state.store, held_id)
        if post is not None:
            waiting.append(post.message)
    return waiting[::-1]


async def fast_page(request: Request, state: AppState) -> Response | None:
    """The fast path's door to `page_response`: `before` alone and well-formed, or nothing."""
    query = _page_query(request.scope["query_string"])
    if query is None:
        return None
    (before,) = query
    cookies = cookies_of(request)
    return await page_response(state, before, wrote_cookie(cookies), held_ids(cookies))


def page_in_memory(
    query_string: bytes, cookies: Mapping[str, str], state: AppState
) -> Response | None:
    """`fast_page`'s first page when memory can answer, with no await; else None (older
    pages, and a poster's held posts, which are read for them alone)."""
    if _page_query(query_string) != (None,):
        return None
    if held_ids(cookies):
        return None
    return newest_in_memory(state, wrote_cookie(cookies))


@lru_cache(maxsize=64)
def _page_query(query_string: bytes) -> tuple[str | None] | None:
    """`(before,)` when it is given alone and well-formed, or not at all; None leaves the
    request to the route, which explains. Remembered: most reads send no query at all."""
    params = QueryParams(query_string)
    before = params.get("before")
    if len(params.multi_items()) != len(params) or not set(params) <= {"before"}:
        return None
    if before is not None and not is_id(before):
        return None
    return (before,)


@router.get("/favicon.ico")
async def favicon(request: Request) -> Response:
    """Browsers ask for it by themselves on pages that link no icon (the API's JSON, say)."""
    return await STATIC.answer("favicon.svg", request, max_age=86400)


@router.post("/")
async def post_form(request: Request) -> Response:
    """Form post: 303 back to the page, which then shows the new message first."""
    state: AppState = request.state.app
    text = ""
    try:
        text, honeypot = await read_form(request)
        result = await post(state, request, text, honeypot=honeypot)
    except GuestbookError as exc:
        return await _form_error(state, request, exc, text)
    response = RedirectResponse("/", status_code=303)
    if result.held:
        remember_held(request, response, result.message.id)
    else:
        remember_write(response, result.message.id)
    return response


async def _form_error(state: AppState, request: Request, exc: Exception, draft: str) -> Response:
    """Without JavaScript, an error is the page again: the reason on top, the text kept."""
    problem = problem_for(exc)
    extra: dict[str, Any] = {}
    try:
        messages = await _newest(state, wrote_cookie(request.cookies))
    except StoreError:
        messages = state.feed.last_seen(PAGE_SIZE) or []
        extra = {"stale": True, "seen_at": _seen_at(state)}
    body = render_page(state, messages, error=problem.detail, draft=draft[:10_000], **extra)
    return HTMLResponse(body, status_code=problem.status, headers=problem.headers)
