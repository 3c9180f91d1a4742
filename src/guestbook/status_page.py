"""The topology page, `GET /status`: the leader, each follower with its replication lag, every
frontend that is up with its load (the one that served the page highlighted), where writes
and reads go, and, with Redis Sentinel, each sentinel: whether it answers and whom it names
leader.

Rendered on the server from `AppState.status_dict()`, so it reads without JavaScript as a
snapshot; `status.js` then polls `/api/status` and redraws it in place.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse

from .state import AppState
from .templates import template

router = APIRouter(include_in_schema=False)

# Compiled on first use (the environment keeps it), not at import: a frontend nobody asks
# for this page spends nothing on it.
_TEMPLATE = "status.html"


def with_this_frontend(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The frontends to draw: those reporting themselves, and this one even before its first
    report has landed (or while the leader, which keeps the reports, is down)."""
    frontends = list(status.get("frontends") or [])
    if not any(f.get("name") == status["instance"] for f in frontends):
        frontends.insert(0, {"name": status["instance"]})
    return frontends


@router.get("/status")
async def status_page(request: Request) -> HTMLResponse:
    state: AppState = request.state.app
    status = await state.status_dict()
    body = template(_TEMPLATE).render(status=status, frontends=with_this_frontend(status))
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})
