"""Probes and metrics: `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import PlainTextResponse, Response

from .readiness import SHUTTING_DOWN, not_ready
from .state import AppState

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness", response_class=PlainTextResponse)
async def healthz() -> Response:
    """200 while the process serves requests."""
    return PlainTextResponse("ok\n")


@router.get(
    "/readyz",
    summary="Readiness",
    response_class=PlainTextResponse,
    responses={
        503: {
            "description": "No store server answers, or this frontend is stopping",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def readyz(request: Request) -> Response:
    """200 when reads can be served; 503 when no store server answers or while stopping.
    With sentinels, a second line says what they last named."""
    state: AppState = request.state.app
    reason = await not_ready(state)
    if reason == SHUTTING_DOWN:
        return PlainTextResponse(f"{reason}\n", status_code=503)
    summary = state.store.sentinel_summary()
    view = f"{summary}\n" if summary else ""
    if reason is None:
        return PlainTextResponse("ready\n" + view)
    return PlainTextResponse(f"{reason}\n{view}", status_code=503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state: AppState = request.state.app
    state.metrics.live_clients.set(state.feed.subscriber_count)
    await state.metrics.refresh(state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
