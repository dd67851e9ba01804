"""Prometheus metrics of one sidecar, in a registry of its own (no global state, so tests and
several apps in one process never collide). Labels never carry a token, a user id or a session.

Metrics touched by every request (requests, upstream latency, token cache hits, injections) are
plain numbers, turned into metric families only when /metrics is scraped: prometheus_client's
own children take a lock on each call, and the event loop is the only writer here. The rest
(API calls, merges, breaker state) are prometheus_client's own.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Hashable, Iterator
from typing import Final, cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Upstream latency buckets, seconds: fine below 100 ms where a proxy's cost shows.
_UPSTREAM_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# How Prometheus spells a bucket bound ("1.0", "0.005"); prometheus_client's helper has no types.
_go_float = cast(Callable[[float], str], floatToGoString)


class PlainCounterChild:
    """One labelled counter: a number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class PlainCounter:
    """A counter family of plain numbers, with prometheus_client's ``labels().inc()`` shape.

    Label values may be any hashable (a status code as an int); they are spelled with ``str``
    when scraped.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._children: dict[tuple[Hashable, ...], PlainCounterChild] = {}

    def labels(self, *values: Hashable) -> PlainCounterChild:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values!r}")
            child = self._children[values] = PlainCounterChild()
        return child

    def inc(self, amount: float = 1) -> None:
        """For a family without labels."""
        self.labels().inc(amount)

    def total(self) -> float:
        """The sum over every label value."""
        return sum(child.value for child in self._children.values())

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        if not self._labelnames:
            family.add_metric((), self.labels().value)
            return family
        for values, child in sorted(self._children.items(), key=lambda item: [str(v) for v in item[0]]):
            family.add_metric([str(value) for value in values], child.value)
        return family


class LatencyHistogram:
    """One storefront's upstream latencies: a count per bucket and a sum, plain numbers."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # The first bucket whose upper bound (le) is at least the value.
        self.counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self.sum += seconds


class PlainHistogram:
    """A histogram family of plain numbers, one :class:`LatencyHistogram` per label value."""

    def __init__(self, name: str, documentation: str, labelname: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._documentation = documentation
        self._labelname = labelname
        self._bounds = tuple(float(bound) for bound in buckets)
        self._bucket_labels = (*[_go_float(bound) for bound in self._bounds], "+Inf")
        self._children: dict[str, LatencyHistogram] = {}

    def labels(self, value: str) -> LatencyHistogram:
        return self._children.setdefault(value, LatencyHistogram(self._bounds))

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self._name, self._documentation, labels=(self._labelname,))
        for value, child in sorted(self._children.items()):
            cumulative = itertools.accumulate(child.counts)
            family.add_metric((value,), list(zip(self._bucket_labels, cumulative, strict=True)), child.sum)
        return family


class _PlainCollector(Collector):
    """Exports the plain families when /metrics is scraped."""

    def __init__(self, families: list[PlainCounter | PlainHistogram]) -> None:
        self._families = families

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.family()


class Metrics:
    """Every metric the sidecar exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = PlainCounter(
            "cc_sidecar_requests", "Shop requests served, by storefront and status.", ("storefront", "status")
        )
        self.upstream_seconds = PlainHistogram(
            "cc_sidecar_upstream_seconds",
            "Time until the shop's response headers arrived.",
            "storefront",
            _UPSTREAM_BUCKETS,
        )
        self.token_cache_hits = PlainCounter(
            "cc_sidecar_token_cache_hits", "Customer tokens served from the cache."
        )
        self.token_cache_misses = PlainCounter(
            "cc_sidecar_token_cache_misses", "Customer tokens that had to be fetched."
        )
        self.injections = PlainCounter(
            "cc_sidecar_injections",
            "Responses a token was attached to, by storefront and mode.",
            ("storefront", "mode"),
        )
        self.token_unavailable = PlainCounter(
            "cc_sidecar_token_unavailable",
            "Editor pages served without a token (API down or slow).",
            ("storefront",),
        )
        self.deferred_guests = PlainCounter(
            "cc_sidecar_deferred_guests",
            "Answers to guests whose request carried no cookie: a guest id, no StorefrontUser, no token.",
            ("storefront",),
        )
        self.access_log_dropped = PlainCounter(
            "cc_sidecar_access_log_dropped",
            "Access log lines dropped: their reader (stderr's pipe, or the file) was that far behind"
            " (or failed), and the event loop never waits for it.",
        )
        r.register(
            _PlainCollector(
                [
                    self.requests,
                    self.upstream_seconds,
                    self.token_cache_hits,
                    self.token_cache_misses,
                    self.injections,
                    self.token_unavailable,
                    self.deferred_guests,
                    self.access_log_dropped,
                ]
            )
        )
        self.token_cache_entries = Gauge(
            "cc_sidecar_token_cache_entries",
            "Customers in the token cache (known to exist; with their token while it is fresh).",
            registry=r,
        )
        self.api_calls = Counter(
            "cc_sidecar_api_calls",
            "Storefront API calls, by operation and outcome.",
            ["operation", "outcome"],
            registry=r,
        )
        self.merges = Counter(
            "cc_sidecar_merges",
            "Guest-to-customer merges at login, by outcome.",
            ["storefront", "outcome"],
            registry=r,
        )
        self.token_renewals = Counter(
            "cc_sidecar_token_renewals",
            "Customer tokens renewed in the background ahead of time, by outcome (renewed, failed).",
            ["outcome"],
            registry=r,
        )
        self.budget_exceeded = Counter(
            "cc_sidecar_budget_exceeded",
            "New StorefrontUsers and merges held back by a budget, by storefront and scope"
            " (client, storefront).",
            ["storefront", "scope"],
            registry=r,
        )
        self.client_queued = Counter(
            "cc_sidecar_client_queued",
            "Editor pages and /.cc-sidecar/ requests that waited for their client's earlier ones"
            " (budget.client_pages_at_once).",
            registry=r,
        )
        self.breaker_open = Gauge(
            "cc_sidecar_api_breaker_open",
            "1 while the Storefront API circuit breaker is open.",
            registry=r,
        )
        self.session_checks = Counter(
            "cc_sidecar_session_checks",
            "Session checks the shop answered (or not), by storefront and outcome: customer, guest, "
            "bad_status, missing_field, not_json, invalid_id, error.",
            ["storefront", "outcome"],
            registry=r,
        )
        self.invalid_identities = Counter(
            "cc_sidecar_invalid_identities",
            "Customer ids, headers or cookies ignored as invalid.",
            ["storefront", "source"],
            registry=r,
        )
        self.store_operations = Counter(
            "cc_sidecar_store_operations",
            "Calls to the shared token store (Redis), by operation and outcome"
            " (hit, miss, ok, error; skipped while its breaker is open).",
            ["operation", "outcome"],
            registry=r,
        )
        self.store_lock_waits = Counter(
            "cc_sidecar_store_lock_waits",
            "Times this replica waited for another one's token or merge work instead of calling the API.",
            registry=r,
        )
        self.store_available = Gauge(
            "cc_sidecar_store_available",
            "1 while the shared token store is used, 0 while its breaker holds calls back"
            " (always 1 with the memory store).",
            registry=r,
        )
        self.store_available.set(1)
        self.temp_bytes = Gauge(
            "cc_sidecar_temp_bytes",
            "Bytes the request and response bodies held for clients keep in temp files now (at most"
            " buffering.max_temp_bytes).",
            registry=r,
        )
        self.temp_refused = Counter(
            "cc_sidecar_temp_refused",
            "Bodies the temp files had no room for (buffering.max_temp_bytes), by body: request (answered"
            " 503), response (held no further: the shop is read at the client's pace).",
            ["body"],
            registry=r,
        )
        self.connections_closed = Counter(
            "cc_sidecar_connections_closed",
            "Client connections the sidecar closed to protect itself or the shop, by reason: head_timeout,"
            " head_too_large, connection_limit (an idle one closed for a new one), connection_refused"
            " (none idle to close), body_timeout, send_timeout.",
            ["reason"],
            registry=r,
        )
