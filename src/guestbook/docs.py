"""`/openapi.json` and `/docs`: the OpenAPI document, built from the routes with this app's
settings, and Swagger UI over it, with its assets served from this app (no CDN) and started by
a script file rather than an inline script, so the strict CSP holds.

The document must tell the truth: what it allows is what the server accepts, and every answer
the server gives is documented with its real shape. Routes declare their own answers; this
module adds only what no single route owns (the shared schemas, the limits that come from the
settings) and removes what the framework claims on its own that this app never answers.
"""

from __future__ import annotations

import functools
from importlib import metadata
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.responses import HTMLResponse, Response

from .api import new_message_schema
from .assets import STATIC, Assets
from .bodies import BODY_TIMEOUT, MAX_READERS
from .middleware import MAX_HEADERS, MAX_TARGET
from .moderation_api import BEARER_SCHEME
from .problems import (
    LEGACY_ERROR_SCHEMA,
    LEGACY_PATHS,
    PROBLEM_SCHEMA,
    documented_legacy_errors,
    documented_problems,
)
from .settings import Settings

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


# FastAPI documents a 422 `HTTPValidationError` for every route with parameters; this app's
# validation handler answers 400 problem+json instead (see `app._install_error_handlers`).
_FRAMEWORK_422 = "#/components/schemas/HTTPValidationError"


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter's schema without the `null` that `str | None` gives it: on the
    wire a parameter is a string or absent, and "null" is just a string (that the rules of the
    parameter refuse)."""
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    kept = [option for option in options if option != {"type": "null"}]
    if len(kept) != 1 or len(kept) == len(options):
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    return {**kept[0], **rest}


# What the connection limits answer, before any route runs: on every operation the middleware's
# size limits, and where a body is read, its deadline and the bound on bodies read at once.
_ANY_REQUEST = {
    414: f"The address (path and query) is over {MAX_TARGET // 1024} KiB.",
    431: f"The request's headers are over {MAX_HEADERS // 1024} KiB.",
}
_BODY_TOO_SLOW = (
    f"The body did not arrive whole within {BODY_TIMEOUT:g} s; the connection is closed after "
    "this answer."
)
_TOO_MANY_BODIES = (
    f"More than {MAX_READERS} request bodies are being read at once by this frontend: try "
    "again after Retry-After."
)


def _add_limit_answers(path: str, operation: dict[str, Any]) -> None:
    """The connection limits' answers on `operation`, in the shape its path answers errors in;
    a 503 the route documents already gains the limit's reason beside its own."""
    document = documented_legacy_errors if path in LEGACY_PATHS else documented_problems
    why: dict[int, str] = dict(_ANY_REQUEST)
    if "requestBody" in operation:
        why[408] = _BODY_TOO_SLOW
        why[503] = _TOO_MANY_BODIES
    responses = operation["responses"]
    for status, answer in document(why).items():
        known = responses.get(str(status))
        if known is None:
            responses[str(status)] = answer
        else:
            known["description"] = f"{known['description']}\n\nAlso: {why[int(status)]}"
    operation["responses"] = dict(sorted(responses.items()))


def openapi_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The document `/openapi.json` serves, for `app` as configured by `settings`."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
        separate_input_output_schemas=app.separate_input_output_schemas,
    )
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                parameter["schema"] = _not_null(parameter["schema"])
            responses = operation["responses"]
            framework = responses.get("422", {}).get("content", {}).get("application/json", {})
            if framework.get("schema", {}).get("$ref") == _FRAMEWORK_422:
                del responses["422"]
    for path, operations in document["paths"].items():
        for operation in operations.values():
            _add_limit_answers(path, operation)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas["LegacyError"] = LEGACY_ERROR_SCHEMA
    schemas["NewMessage"] = new_message_schema(settings.max_message_chars)
    components.setdefault("securitySchemes", {}).update(BEARER_SCHEME)
    return document


def serve_document(app: FastAPI, settings: Settings) -> None:
    """Make `app` serve `openapi_document` (built once, on the first request for it)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_document(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
