"""The guestbook page (`GET /`), its no-JavaScript form post (`POST /`), the HTML error pages a
browser gets instead of problem documents, and the static assets they load.

The page never answers a browser with JSON and never shows a visitor store jargon (leader,
follower): while the store cannot be read it shows the feed's last copy, saying so.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from .errors import GuestbookError, InvalidMessage, StoreError
from .messages import Message
from .problems import HTTPProblem, store_problem
from .state import AppState, read_form_text, remember_write, wrote_cookie

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 20
_HERE = Path(__file__).parent


# --- static assets -------------------------------------------------------------------------

_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# Text compresses well; images are compressed already.
_COMPRESSIBLE = {".css", ".js", ".svg", ".json", ".map", ".txt"}
# A versioned URL names one content for good; an unversioned one may change at any deploy.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes | None  # None when compressing would not make it smaller
    content_type: str
    etag: str


class Assets:
    """The files of one flat directory, served from memory under `prefix`.

    Pages link them as `url(name)`, `/prefix/name?v=<version>`. Such a request is cached for a
    year (`immutable`): a changed file gets a new version and so a new URL. Whatever else asks
    (no version, or another one: a page from a newer or older replica during a rolling update)
    gets `no-cache`, revalidated by ETag, so no browser keeps a wrong file for long. Text files
    are sent gzip-compressed to clients that accept it, compressed once per process.

    `version` fixes the version of every file (for a third-party package's files, its version);
    otherwise each file's version is a hash of its content.
    """

    def __init__(self, directory: Path, prefix: str, version: str | None = None) -> None:
        self.directory = directory
        self.prefix = prefix
        self._version = version
        self._names: frozenset[str] | None = None
        self._versions: dict[str, str] = {}
        self._loaded: dict[str, _Asset] = {}

    @property
    def names(self) -> frozenset[str]:
        if self._names is None:
            self._names = frozenset(p.name for p in self.directory.iterdir() if p.is_file())
        return self._names

    def version(self, name: str) -> str:
        if self._version is not None:
            return self._version
        version = self._versions.get(name)
        if version is None:
            version = self._versions[name] = _digest((self.directory / name).read_bytes())
        return version

    def url(self, name: str) -> str:
        return f"{self.prefix}/{name}?v={self.version(name)}"

    async def _load(self, name: str) -> _Asset:
        asset = self._loaded.get(name)
        if asset is None:
            # Off the event loop: the API docs' bundle is over a megabyte to read and compress.
            asset = self._loaded[name] = await asyncio.to_thread(self._read, name)
        return asset

    def _read(self, name: str) -> _Asset:
        body = (self.directory / name).read_bytes()
        suffix = Path(name).suffix.lower()
        gzipped = None
        if suffix in _COMPRESSIBLE:
            packed = gzip.compress(body, compresslevel=9, mtime=0)
            gzipped = packed if len(packed) < len(body) else None
        content_type = _TYPES.get(suffix, "application/octet-stream")
        return _Asset(body, gzipped, content_type, _digest(body))

    async def answer(self, name: str, request: Request, max_age: int | None = None) -> Response:
        """`name` for this request; `max_age` instead of `no-cache` for an unversioned URL
        that browsers ask for by themselves (`/favicon.ico`)."""
        if name not in self.names:
            raise StarletteHTTPException(404)
        asset = await self._load(name)
        if request.query_params.get("v") == self.version(name):
            cache = IMMUTABLE
        elif max_age is not None:
            cache = f"public, max-age={max_age}"
        else:
            cache = REVALIDATE
        body, etag = asset.body, f'"{asset.etag}"'
        headers = {"Cache-Control": cache}
        if asset.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
            if _accepts_gzip(request.headers.get("accept-encoding", "")):
                body, etag = asset.gzipped, f'"{asset.etag}-gzip"'
                headers["Content-Encoding"] = "gzip"
        headers["ETag"] = etag
        if _matches(request.headers.get("if-none-match"), asset.etag):
            headers.pop("Content-Encoding", None)
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers, media_type=asset.content_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app mounted at `prefix`."""
        if scope["method"] not in ("GET", "HEAD"):
            raise StarletteHTTPException(405, headers={"Allow": "GET, HEAD"})
        path: str = scope["path"]
        name = path.rsplit("/", 1)[-1]
        if not path.endswith(f"{self.prefix}/{name}"):
            raise StarletteHTTPException(404)
        response = await self.answer(name, Request(scope, receive))
        await response(scope, receive, send)


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def _accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().removeprefix("q=").strip() or "1"
        try:
            if float(q) > 0:
                return True
        except ValueError:
            continue
    return False


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = {t.strip().removeprefix("W/").strip('"') for t in if_none_match.split(",")}
    return etag in tags or f"{etag}-gzip" in tags


STATIC = Assets(_HERE / "static", "/static")


# --- templates -----------------------------------------------------------------------------

_templates = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    auto_reload=False,
)
_templates.globals["asset"] = STATIC.url
_page = _templates.get_template("page.html")
_error_page = _templates.get_template("error.html")


def render_page(state: AppState, messages: list[Message], **extra: Any) -> str:
    return _page.render(
        messages=messages[:PAGE_SIZE],
        next=messages[PAGE_SIZE - 1].id if len(messages) > PAGE_SIZE else None,
        newest_id=messages[0].id if messages and not extra.get("before") else None,
        instance=state.instance,
        max_chars=state.settings.max_message_chars,
        **extra,
    )


# Headings in words; the status number is shown beside them for whoever needs it.
_HEADINGS = {
    404: "Page not found",
    500: "Something went wrong",
    503: "The guestbook is unavailable right now",
}
_DETAILS = {404: "There is nothing at this address."}


def error_page(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """A small HTML page for an error a browser is shown, with the same status and headers a
    problem document would have had."""
    phrase = HTTPStatus(status).phrase
    if detail == phrase:  # the framework's own detail says no more than the status
        detail = _DETAILS.get(status, detail)
    body = _error_page.render(
        status=status, heading=_HEADINGS.get(status, phrase), detail=detail, retry=status == 503
    )
    return HTMLResponse(body, status_code=status, headers=headers)


# --- the page ------------------------------------------------------------------------------


async def _newest(state: AppState, request: Request) -> list[Message]:
    """The first page (one more than shown), from memory when the live head can answer."""
    must_include = wrote_cookie(request)
    cached = state.feed.first_page(PAGE_SIZE, must_include)
    if cached is not None:
        state.metrics.page_cache_hit.inc()
        return cached
    state.metrics.page_cache_miss.inc()
    page = await state.store.page(PAGE_SIZE + 1, None, must_include)
    return page.messages


def _seen_at(state: AppState) -> str:
    seen = state.feed.seen_at
    return time.strftime("%H:%M UTC", time.gmtime(seen)) if seen is not None else ""


def cached_page(state: AppState, must_include: str | None) -> bytes | None:
    """The first page's HTML from the live head, encoded once per change; None when the
    head cannot answer (then the store must)."""
    newest = state.feed.first_page(PAGE_SIZE, must_include)
    if newest is None:
        return None
    state.metrics.page_cache_hit.inc()
    return state.feed.encoded("page", lambda: render_page(state, newest).encode())


@router.get("/")
async def index(
    request: Request,
    before: Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$")] = None,
) -> Response:
    state: AppState = request.state.app
    if before is not None:
        page = await state.store.page(PAGE_SIZE + 1, before, None)
        return HTMLResponse(render_page(state, page.messages, before=before))
    body = cached_page(state, wrote_cookie(request))
    if body is not None:
        return HTMLResponse(body)
    try:
        messages = await _newest(state, request)
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
    return HTMLResponse(render_page(state, messages))


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
    elif isinstance(exc, StoreError):
        status, detail, headers = store_problem(exc)
    else:
        raise exc
    extra: dict[str, Any] = {}
    try:
        messages = await _newest(state, request)
    except StoreError:
        messages = state.feed.last_seen(PAGE_SIZE) or []
        extra = {"stale": True, "seen_at": _seen_at(state)}
    body = render_page(state, messages, error=detail, draft=draft[:10_000], **extra)
    return HTMLResponse(body, status_code=status, headers=headers)
