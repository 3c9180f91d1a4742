"""The Prometheus metrics of one app."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .readiness import not_ready

if TYPE_CHECKING:
    from .state import AppState


class Metrics:
    """The Prometheus metrics of one app; a registry of its own, so two apps never clash."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "guestbook_http_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "guestbook_http_request_duration_seconds",
            "Time from request to the end of the response",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.store_calls = Counter(
            "guestbook_store_calls",
            "Store operations, by operation and server role",
            ["operation", "role"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "guestbook_store_errors",
            "Store operations that failed, by operation and error",
            ["operation", "error"],
            registry=self.registry,
        )
        self.messages_posted = Counter(
            "guestbook_messages_posted", "Messages accepted", registry=self.registry
        )
        self.messages_held = Counter(
            "guestbook_messages_held",
            "Posts held for a moderator (pre-moderation or a spam check)",
            registry=self.registry,
        )
        self.live_clients = Gauge(
            "guestbook_live_clients", "Connected live-feed clients", registry=self.registry
        )
        page_cache = Counter(
            "guestbook_page_cache",
            "Page and legacy-list reads served from the feed's memory (hit) or the store (miss)",
            ["result"],
            registry=self.registry,
        )
        self.page_cache_hit = page_cache.labels("hit")
        self.page_cache_miss = page_cache.labels("miss")
        # Read at scrape time (`refresh`): what the alerts on readiness and the store need.
        self.ready = Gauge(
            "guestbook_ready",
            "1 while this frontend can serve reads and is not stopping (as /readyz answers)",
            registry=self.registry,
        )
        self.store_up = Gauge(
            "guestbook_store_up",
            "1 when a store server answered this frontend's scrape-time check, else 0",
            ["role", "server"],
            registry=self.registry,
        )
        self.replication_link_up = Gauge(
            "guestbook_store_replication_link_up",
            "1 while a reachable follower reports its link to the leader up, else 0",
            ["server"],
            registry=self.registry,
        )
        self.replication_lag = Gauge(
            "guestbook_store_replication_lag_bytes",
            "Bytes of the leader's replication stream a reachable follower has not applied",
            ["server"],
            registry=self.registry,
        )
        self.replication_contact = Gauge(
            "guestbook_store_replication_last_contact_seconds",
            "Seconds since a reachable follower last heard from its leader",
            ["server"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # Requests answered since start, for this frontend's own record (presence.py).
        self.served = 0

    async def refresh(self, state: AppState) -> None:
        """Scrape time: the store servers' reachability and replication, as /api/status reads
        them, and this frontend's readiness. A server that does not answer drops its
        replication series rather than keep a stale figure."""
        status = await state.store.status()
        self.store_up.clear()
        self.store_up.labels("leader", status.leader.url).set(status.leader.reachable)
        for gauge in (self.replication_link_up, self.replication_lag, self.replication_contact):
            gauge.clear()
        for follower in status.followers:
            self.store_up.labels("follower", follower.url).set(follower.reachable)
            if not follower.reachable:
                continue
            self.replication_link_up.labels(follower.url).set(follower.link == "up")
            if follower.lag_bytes is not None:
                self.replication_lag.labels(follower.url).set(follower.lag_bytes)
            if follower.lag_seconds is not None:
                self.replication_contact.labels(follower.url).set(follower.lag_seconds)
        # The rule /readyz answers, asked the same way at the same moment.
        self.ready.set(await not_ready(state) is None)

    def observe_store_call(self, operation: str, role: str, error: str | None) -> None:
        if error is None:
            self.store_calls.labels(operation, role).inc()
        else:
            self.store_errors.labels(operation, error).inc()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        # Looking a labelled child up costs more than using it: keep them.
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)
        self.served += 1
