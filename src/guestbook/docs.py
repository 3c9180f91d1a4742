"""`/docs`: Swagger UI over `/openapi.json`, with its assets served from this app (no CDN) and
started by a script file rather than an inline script, so the strict CSP holds."""

from __future__ import annotations

import functools
from importlib import metadata
from pathlib import Path

from fastapi import APIRouter
from starlette.responses import HTMLResponse, Response

from .assets import STATIC, Assets

router = APIRouter(include_in_schema=False)


def swagger_assets() -> Path | None:
    try:
        import fastapi_offline
    except ModuleNotFoundError:
        return None
    return Path(fastapi_offline.__file__).parent / "static"


@functools.cache
def assets() -> Assets | None:
    """Swagger UI's files, served under `/docs-assets`."""
    directory = swagger_assets()
    if directory is None:
        return None
    # The package's version names its files: hashing megabytes of them would cost every start.
    return Assets(directory, "/docs-assets", version=metadata.version("fastapi-offline"))


@functools.cache
def _page() -> str:
    swagger = assets()

    def url(name: str) -> str:
        return swagger.url(name) if swagger is not None else f"/docs-assets/{name}"

    # The icon link spares the browser its own guess, /favicon.ico.
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Guestbook API</title>
<link rel="icon" href="{STATIC.url("favicon.svg")}" type="image/svg+xml">
<link rel="stylesheet" href="{url("swagger-ui.css")}"></head>
<body><div id="swagger-ui"></div>
<script src="{url("swagger-ui-bundle.js")}"></script>
<script src="{STATIC.url("docs.js")}"></script></body></html>
"""


@router.get("/docs")
async def docs() -> Response:
    return HTMLResponse(_page())
