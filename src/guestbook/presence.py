"""Every frontend reports itself: a short-lived record in the store, refreshed every few
seconds, so `/api/status` (and the `/status` page) can list every frontend that is up.

Records live in one hash, `guestbook:frontends`, a field per frontend holding its name, start
time, version, requests served, live clients and until when the record holds. A stopped
frontend's record lapses within `TTL` seconds (readers skip lapsed ones and prune them); one
that is told to stop (SIGTERM) deletes its own at once. Writing needs the leader; while the
leader is down the records lapse, which says what is true: nobody can tell who is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from redis.asyncio import Redis

from . import __version__
from .errors import StoreError
from .keys import PREFIX
from .messages import iso_from_ms
from .state import AppState

log = logging.getLogger("guestbook.presence")

FRONTENDS = PREFIX + "frontends"
EVERY = 5.0
# Three missed refreshes: a frontend stopped without a word drops off well within a minute.
TTL = 15.0


def record(state: AppState, started_ms: int, now: float) -> dict[str, Any]:
    return {
        "name": state.instance,
        "started_at": iso_from_ms(started_ms),
        "version": __version__,
        "requests": state.metrics.served,
        "live_clients": state.feed.subscriber_count,
        "expires_ms": int((now + TTL) * 1000),
    }


async def report(state: AppState) -> None:
    """Refresh this frontend's record until shutdown begins; then take it away at once."""
    started_ms = int(time.time() * 1000)
    try:
        while not state.shutting_down.is_set():
            entry = json.dumps(record(state, started_ms, time.time()))

            async def write(client: Redis, entry: str = entry) -> Any:
                return await client.hset(FRONTENDS, state.instance, entry)

            try:
                await state.store.on_leader(write, "presence")
            except StoreError as exc:
                log.debug("could not report this frontend: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.shutting_down.wait(), EVERY)
    finally:
        await leave(state)


async def leave(state: AppState) -> None:
    async def remove(client: Redis) -> Any:
        return await client.hdel(FRONTENDS, state.instance)

    with contextlib.suppress(StoreError):
        await state.store.on_leader(remove, "presence")


async def frontends(state: AppState) -> list[dict[str, Any]]:
    """Every frontend whose record holds, by name; lapsed records are pruned on the way."""

    async def read(client: Redis) -> Any:
        return await client.hgetall(FRONTENDS)

    raw, _ = await state.store.on_reader(read, "presence")
    now_ms = time.time() * 1000
    up: list[dict[str, Any]] = []
    lapsed: list[str] = []
    for name, value in dict(raw).items():
        try:
            entry = json.loads(value)
            expires = float(entry.pop("expires_ms"))
        except (ValueError, KeyError, TypeError, AttributeError):
            lapsed.append(name)
            continue
        if expires > now_ms:
            up.append(entry)
        else:
            lapsed.append(name)
    if lapsed:

        async def prune(client: Redis) -> Any:
            return await client.hdel(FRONTENDS, *lapsed)

        with contextlib.suppress(StoreError):
            await state.store.on_leader(prune, "presence")
    return sorted(up, key=lambda e: str(e.get("name")))
