"""What the app holds for its lifetime (created in the lifespan) and the request helpers that
every router shares: reading a bounded body, posting a message, read-your-writes cookies."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from .feed import Feed
from .messages import Message, clean_text, is_id
from .metrics import Metrics
from .problems import HTTPProblem
from .ratelimit import RateLimiter
from .settings import Settings
from .store import MessageStore

MAX_BODY = 16 * 1024
WROTE_COOKIE = "gb_wrote"
# Long enough for any follower to catch up; after that the leader need not be asked.
WROTE_MAX_AGE = 60


@dataclass
class AppState:
    settings: Settings
    store: MessageStore
    feed: Feed
    metrics: Metrics
    instance: str
    mode: str
    limiter: RateLimiter
    shutting_down: bool = False
    read_from: str = "follower"
    extra: dict[str, Any] = field(default_factory=dict)

    async def post(self, request: Request, raw_text: str) -> Message:
        """Validate, rate-limit and append; raises what the error handlers turn into answers."""
        text = clean_text(raw_text, self.settings.max_message_chars)
        client = request.client.host if request.client else "unknown"
        wait = self.limiter.check(client)
        if wait is not None:
            raise HTTPProblem(
                429,
                f"Too many posts: at most {self.limiter.per_minute} a minute. "
                f"Try again in {math.ceil(wait)} s.",
                {"Retry-After": str(math.ceil(wait))},
            )
        message = await self.store.append(text)
        self.metrics.messages_posted.inc()
        return message

    async def status_dict(self) -> dict[str, Any]:
        status = await self.store.status()
        return {
            "instance": self.instance,
            "mode": self.mode,
            "leader": status.leader.as_dict(),
            "followers": [f.as_dict() for f in status.followers],
            "message_count": status.message_count,
            "last_id": status.last_id,
            "live_clients": self.feed.subscriber_count,
            "reading_from": self.feed.source if self.feed.live else self.read_from,
        }


async def read_body(request: Request) -> bytes:
    """The body, refusing more than 16 KiB before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPProblem(400, "Content-Length is not a number.")
        if int(declared) > MAX_BODY:
            raise HTTPProblem(413, f"The body is over {MAX_BODY // 1024} KiB.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPProblem(413, f"The body is over {MAX_BODY // 1024} KiB.")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_json_body(request: Request) -> Any:
    if _media_type(request) != "application/json":
        raise HTTPProblem(415, "Send the message as application/json.")
    body = await read_body(request)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise HTTPProblem(400, "The body is not valid JSON.") from None


async def read_form_text(request: Request) -> str:
    """The `text` field of a urlencoded form post."""
    if _media_type(request) != "application/x-www-form-urlencoded":
        raise HTTPProblem(415, "Send the form as application/x-www-form-urlencoded.")
    body = await read_body(request)
    try:
        fields = parse_qs(body.decode("utf-8", errors="strict"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise HTTPProblem(400, "The form is not valid UTF-8.") from None
    values = fields.get("text")
    if not values:
        raise HTTPProblem(422, "The form has no 'text' field.")
    return values[-1]


def remember_write(response: Response, message_id: str) -> None:
    """Let the poster's next reads, on any frontend, insist on seeing this message."""
    response.set_cookie(
        WROTE_COOKIE, message_id, max_age=WROTE_MAX_AGE, httponly=True, samesite="lax"
    )


def wrote_cookie(request: Request) -> str | None:
    value = request.cookies.get(WROTE_COOKIE)
    return value if value and is_id(value) else None
