"""The guestbook page (`GET /`), its no-JavaScript form post (`POST /`) and its assets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .errors import GuestbookError, InvalidMessage, LeaderUnavailable, StoreError
from .messages import Message
from .problems import HTTPProblem
from .state import AppState, read_form_text, remember_write, wrote_cookie

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 20
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    auto_reload=False,
)
_page = _templates.get_template("page.html")


def render_page(state: AppState, messages: list[Message], source: str, **extra: Any) -> str:
    return _page.render(
        messages=messages[:PAGE_SIZE],
        next=messages[PAGE_SIZE - 1].id if len(messages) > PAGE_SIZE else None,
        newest_id=messages[0].id if messages and not extra.get("before") else None,
        instance=state.instance,
        source=source,
        max_chars=state.settings.max_message_chars,
        **extra,
    )


async def _newest(state: AppState, request: Request) -> tuple[list[Message], str, bool]:
    """The first page (one more than shown), where it came from, and whether from memory."""
    must_include = wrote_cookie(request)
    cached = state.feed.first_page(PAGE_SIZE, must_include)
    if cached is not None:
        state.metrics.page_cache_hit.inc()
        return cached, state.feed.source, True
    state.metrics.page_cache_miss.inc()
    page = await state.store.page(PAGE_SIZE + 1, None, must_include)
    return page.messages, page.source, False


def cached_page(state: AppState, must_include: str | None) -> bytes | None:
    """The first page's HTML from the live head, encoded once per change; None when the
    head cannot answer (then the store must)."""
    newest = state.feed.first_page(PAGE_SIZE, must_include)
    if newest is None:
        return None
    state.metrics.page_cache_hit.inc()
    source = state.feed.source
    return state.feed.encoded(("page", source), lambda: render_page(state, newest, source).encode())


@router.get("/")
async def index(
    request: Request,
    before: Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$")] = None,
) -> Response:
    state: AppState = request.state.app
    if before is None:
        body = cached_page(state, wrote_cookie(request))
        if body is not None:
            return HTMLResponse(body)
        messages, source, _ = await _newest(state, request)
    else:
        page = await state.store.page(PAGE_SIZE + 1, before, None)
        messages, source = page.messages, page.source
    return HTMLResponse(render_page(state, messages, source, before=before))


@router.post("/")
async def post_form(request: Request) -> Response:
    """Form post: 303 back to the page, which then shows the new message first."""
    state: AppState = request.state.app
    text = ""
    try:
        text = await read_form_text(request)
        message = await state.post(request, text)
    except (GuestbookError, HTTPProblem) as exc:
        return await _form_error(state, request, exc, text)
    response = RedirectResponse("/", status_code=303)
    remember_write(response, message.id)
    return response


async def _form_error(state: AppState, request: Request, exc: Exception, draft: str) -> Response:
    """Without JavaScript, an error is the page again: the reason on top, the text kept."""
    if isinstance(exc, HTTPProblem):
        status, detail, headers = exc.status, exc.detail, exc.headers
    elif isinstance(exc, InvalidMessage):
        status, detail, headers = 422, str(exc), {}
    elif isinstance(exc, LeaderUnavailable | StoreError):
        status, headers = 503, {"Retry-After": "2"}
        detail = "The guestbook is read-only right now; please try again in a moment."
    else:
        raise exc
    try:
        messages, source, _ = await _newest(state, request)
    except StoreError:
        messages, source = [], "nowhere (the store is unavailable)"
    body = render_page(state, messages, source, error=detail, draft=draft[:10_000])
    return HTMLResponse(body, status_code=status, headers=headers)
