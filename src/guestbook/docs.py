"""`/docs`: Swagger UI over `/openapi.json`, with its assets served from this app (no CDN) and
started by a script file rather than an inline script, so the strict CSP holds."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)


def swagger_assets() -> Path | None:
    try:
        import fastapi_offline
    except ModuleNotFoundError:
        return None
    return Path(fastapi_offline.__file__).parent / "static"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Guestbook API</title>
<link rel="stylesheet" href="/docs-assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs-assets/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script></body></html>
"""


@router.get("/docs")
async def docs() -> Response:
    return HTMLResponse(_PAGE)
