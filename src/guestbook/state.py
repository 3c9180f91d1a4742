"""What the app holds for its lifetime: built whole in the lifespan, published once, closed on
the way out. Requests reach it as `request.state.app` (the lifespan's state)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from .errors import StoreError
from .feed import Feed
from .metrics import Metrics
from .settings import Settings
from .store import MessageStore

if TYPE_CHECKING:
    from .live import Hub


class AnswerCache:
    """Responses built from the feed's memory, kept until the feed changes; at most
    MAX_ANSWERS of them, since older pages are keyed by the cursors clients send. A kept
    response is sent as it is to every reader of it: nothing may change its headers (the
    middleware adds its own to a copy)."""

    MAX_ANSWERS = 256

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self._answers: dict[object, Response] = {}
        self._version = -1

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: object, build: Callable[[], Response]) -> Response:
        if self._version != self.feed.version or len(self._answers) >= self.MAX_ANSWERS:
            self._answers.clear()
            self._version = self.feed.version
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = build()
        return answer


async def _or_empty(listing: Awaitable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """No store to read the records from: no frontend can be named (the rest of the status
    says why)."""
    try:
        return await listing
    except StoreError:
        return []


@dataclass
class AppState:
    settings: Settings
    store: MessageStore
    feed: Feed
    metrics: Metrics
    instance: str
    mode: str
    # Set on SIGTERM (by the server) and at the lifespan's end: readiness turns 503, live
    # streams end with a reconnect hint, responses ask keep-alive clients to go elsewhere.
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    # The live clients; made right after this object, in the lifespan, since it reads it.
    hub: Hub = field(init=False)
    # Answers from memory built once per change of the feed, shared by every reader.
    answers: AnswerCache = field(init=False)
    read_from: str = "follower"
    # The block list as last read from the store, and until when it is trusted.
    blocklist: frozenset[str] = frozenset()
    blocklist_until: float = 0.0
    # The read of it that posts finding it due wait for (`posting._blocked`).
    blocklist_read: asyncio.Future[frozenset[str]] | None = None

    def __post_init__(self) -> None:
        self.answers = AnswerCache(self.feed)

    async def status_dict(self) -> dict[str, Any]:
        from .presence import frontends  # presence reads this state: imported when asked

        status = await self.store.status()
        return {
            "instance": self.instance,
            "mode": self.mode,
            "leader": status.leader.as_dict(),
            "followers": [f.as_dict() for f in status.followers],
            "message_count": status.message_count,
            "last_id": status.last_id,
            # With sentinels: each one, whether it answers and whom it names leader.
            "sentinel": status.sentinel.as_dict() if status.sentinel else None,
            "live_clients": self.feed.subscriber_count,
            "reading_from": self.feed.source if self.feed.live else self.read_from,
            "frontends": await _or_empty(frontends(self)),
        }
