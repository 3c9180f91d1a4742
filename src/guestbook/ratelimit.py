"""Posts per minute per client, counted in this process (a sliding one-minute window).

Each frontend replica counts on its own, so N replicas admit up to N times the limit from a
client whose requests are spread across them; that keeps the limit free of a store round trip.
"""

from __future__ import annotations

import time
from collections import deque

WINDOW = 60.0
# Forget idle clients once this many are tracked, so memory stays bounded.
MAX_TRACKED = 10_000


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[str, deque[float]] = {}

    def check(self, client: str) -> float | None:
        """Record a post; None if allowed, else the seconds until the next one is."""
        if self.per_minute <= 0:
            return None
        now = time.monotonic()
        hits = self._hits.get(client)
        if hits is None:
            if len(self._hits) >= MAX_TRACKED:
                self._forget_idle(now)
            hits = self._hits[client] = deque()
        while hits and now - hits[0] >= WINDOW:
            hits.popleft()
        if len(hits) >= self.per_minute:
            return WINDOW - (now - hits[0])
        hits.append(now)
        return None

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or now - v[-1] >= WINDOW]:
            del self._hits[key]
