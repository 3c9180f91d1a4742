"""Static files served from memory: versioned URLs cached for good, others revalidated, text
sent gzip-compressed to clients that accept it."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

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


STATIC = Assets(Path(__file__).parent / "static", "/static")
