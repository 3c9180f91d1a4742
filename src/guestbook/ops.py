"""Probes and metrics: `/healthz`, `/readyz`, `/metrics`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.responses import PlainTextResponse, Response

from .errors import StoreUnavailable
from .state import AppState

router = APIRouter(tags=["operations"])

# While the feed reader keeps up, a readiness ping slower than this counts as an answer: well
# inside a probe's timeout (2 s in the manifests), and a slow store is not a store gone.
SLOW_PING = 0.5


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
    if state.shutting_down.is_set():
        return PlainTextResponse("shutting down\n", status_code=503)
    summary = state.store.sentinel_summary()
    view = f"{summary}\n" if summary else ""
    if await _store_answers(state):
        return PlainTextResponse("ready\n" + view)
    return PlainTextResponse("store unavailable\n" + view, status_code=503)


async def _ping(client: Redis) -> object:
    return await client.ping()


async def _store_answers(state: AppState) -> bool:
    """Whether a store server answers now. Asked even while the feed reader is live: the
    reader learns that its server died only when its blocking read fails, and meanwhile (the
    embedded store's restart gap, say) a live flag alone would say ready with nothing there.

    While the reader keeps up, a ping that is only slow (past SLOW_PING, or timed out in the
    store) still counts, so one slow call does not flap readiness; a server that refuses the
    connection or is still loading its data does not answer, however live the reader was.
    """
    if not state.feed.live:
        return await state.store.readable()
    try:
        async with asyncio.timeout(SLOW_PING):
            await state.store.on_reader(_ping, "ping")
    except TimeoutError:
        return True
    except StoreUnavailable as exc:
        return _timed_out(exc)
    return True


def _timed_out(exc: BaseException) -> bool:
    """The store's failure was a timeout (slow), not a refusal (gone): told by its cause."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (TimeoutError, RedisTimeoutError)):
            return True
        cause = cause.__cause__
    return False


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    state: AppState = request.state.app
    state.metrics.live_clients.set(state.feed.subscriber_count)
    await state.metrics.refresh(state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
