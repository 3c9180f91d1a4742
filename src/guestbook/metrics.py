"""The Prometheus metrics of one app."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .readiness import not_ready

if TYPE_CHECKING:
    from .state import AppState


# Seconds; Prometheus's `le` bounds of the request-duration histogram.
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def _le(bound: float) -> str:
    """A bound as prometheus_client spells it: `0.001`, `1.0`, `+Inf`."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class Count:
    """A counter the event loop alone adds to, read at scrape time: a labelled
    prometheus_client child takes a lock on every `inc`, which a read from memory felt."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class RequestCollector(Collector):
    """`guestbook_http_requests_total` and `guestbook_http_request_duration_seconds`, kept as
    plain numbers per (method, route, status) and turned into families at scrape time.

    Every request adds to them, so they cost what a dict lookup and three additions cost;
    only the event loop's thread adds, and a scrape runs on that thread too."""

    def __init__(self) -> None:
        # (method, route, status) → [count, seconds, per-bound counts (the last is +Inf)]
        self.tallies: dict[tuple[str, str, int], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        tally = self.tallies.get((method, route, status))
        if tally is None:
            tally = self.tallies[(method, route, status)] = [0.0] * (len(LATENCY_BOUNDS) + 3)
        tally[0] += 1
        tally[1] += seconds
        tally[2 + bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "guestbook_http_requests",
            "HTTP requests answered, by route and status",
            labels=["method", "route", "status"],
        )
        by_route: dict[tuple[str, str], list[float]] = {}
        for (method, route, status), tally in list(self.tallies.items()):
            requests.add_metric([method, route, str(status)], tally[0])
            total = by_route.setdefault((method, route), [0.0] * len(tally))
            for i, value in enumerate(tally):
                total[i] += value
        latency = HistogramMetricFamily(
            "guestbook_http_request_duration_seconds",
            "Time from request to the end of the response",
            labels=["method", "route"],
        )
        for (method, route), total in by_route.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip((*LATENCY_BOUNDS, float("inf")), total[2:], strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            latency.add_metric([method, route], buckets, total[1])
        yield requests
        yield latency


class PageReads(Collector):
    """`guestbook_page_cache_total`: reads answered from the feed's memory or the store."""

    def __init__(self) -> None:
        self.hit = Count()
        self.miss = Count()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "guestbook_page_cache",
            "Page and legacy-list reads served from the feed's memory (hit) or the store (miss)",
            labels=["result"],
        )
        family.add_metric(["hit"], self.hit.value)
        family.add_metric(["miss"], self.miss.value)
        yield family


class Metrics:
    """The Prometheus metrics of one app; a registry of its own, so two apps never clash."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = RequestCollector()
        self.registry.register(self.requests)
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
        page_reads = PageReads()
        self.registry.register(page_reads)
        self.page_cache_hit = page_reads.hit
        self.page_cache_miss = page_reads.miss
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
        self.requests.observe(method, route, status, seconds)
        self.served += 1
