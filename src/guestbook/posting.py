"""What happens to a post, whichever door it came in by (the API, the page's form, the legacy
`set`): its text checked, its client counted against the rate limit, then stored."""

from __future__ import annotations

import math

from starlette.requests import Request

from .errors import RateLimited
from .messages import Message, clean_text
from .state import AppState


async def post(state: AppState, request: Request, raw_text: str) -> Message:
    """Validate, rate-limit and append; raises what `problems.problem_for` explains."""
    text = clean_text(raw_text, state.settings.max_message_chars)
    client = request.client.host if request.client else "unknown"
    wait = state.limiter.check(client)
    if wait is not None:
        raise RateLimited(math.ceil(wait), state.limiter.per_minute)
    message = await state.store.append(text)
    state.metrics.messages_posted.inc()
    return message
