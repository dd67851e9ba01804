"""Prometheus metrics of one sidecar, in a registry of its own (no global state, so tests and
several apps in one process never collide). Labels never carry a token, a user id or a session."""

from __future__ import annotations

import bisect
import collections
import itertools
from collections.abc import Callable, Iterator
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Upstream latency buckets, seconds: fine below 100 ms where a proxy's cost shows.
_UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


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


class PerRequestMetrics(Collector):
    """``cc_sidecar_requests_total`` and ``cc_sidecar_upstream_seconds``, touched by every request.

    prometheus_client's own children take a lock and walk their buckets on each call; on the
    request path these two are plain integer additions instead, turned into metric families only
    when /metrics is scraped (the event loop is the only writer, so nothing needs a lock).
    """

    def __init__(self, buckets: tuple[float, ...] = _UPSTREAM_BUCKETS) -> None:
        self._buckets = tuple(float(bound) for bound in buckets)
        self._bucket_labels = (*(_go_float(bound) for bound in self._buckets), "+Inf")
        self._requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self._latencies: dict[str, LatencyHistogram] = {}

    def count_request(self, storefront: str, status: int) -> None:
        self._requests[storefront, status] += 1

    def upstream_latency(self, storefront: str) -> LatencyHistogram:
        """The histogram of one storefront (made on first use; the caller keeps it)."""
        return self._latencies.setdefault(storefront, LatencyHistogram(self._buckets))

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("cc_sidecar_requests", _REQUESTS_HELP, labels=("storefront", "status"))
        yield HistogramMetricFamily("cc_sidecar_upstream_seconds", _UPSTREAM_HELP, labels=("storefront",))

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("cc_sidecar_requests", _REQUESTS_HELP, labels=("storefront", "status"))
        for (storefront, status), count in sorted(self._requests.items()):
            requests.add_metric((storefront, str(status)), count)
        yield requests
        upstream = HistogramMetricFamily(
            "cc_sidecar_upstream_seconds", _UPSTREAM_HELP, labels=("storefront",)
        )
        for storefront, histogram in sorted(self._latencies.items()):
            cumulative = itertools.accumulate(histogram.counts)
            buckets = list(zip(self._bucket_labels, cumulative, strict=True))
            upstream.add_metric((storefront,), buckets, histogram.sum)
        yield upstream


# How Prometheus spells a bucket bound ("1.0", "0.005"); prometheus_client's helper has no types.
_go_float = cast(Callable[[float], str], floatToGoString)
_REQUESTS_HELP = "Shop requests served, by storefront and status."
_UPSTREAM_HELP = "Time until the shop's response headers arrived."


class Metrics:
    """Every metric the sidecar exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.per_request = PerRequestMetrics()
        r.register(self.per_request)
        self.token_cache_hits = Counter(
            "cc_sidecar_token_cache_hits",
            "Customer tokens served from the cache.",
            registry=r,
        )
        self.token_cache_misses = Counter(
            "cc_sidecar_token_cache_misses",
            "Customer tokens that had to be fetched.",
            registry=r,
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
        self.injections = Counter(
            "cc_sidecar_injections",
            "Responses a token was attached to, by storefront and mode.",
            ["storefront", "mode"],
            registry=r,
        )
        self.token_unavailable = Counter(
            "cc_sidecar_token_unavailable",
            "Editor pages served without a token (API down or slow).",
            ["storefront"],
            registry=r,
        )
        self.merges = Counter(
            "cc_sidecar_merges",
            "Guest-to-customer merges at login, by outcome.",
            ["storefront", "outcome"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "cc_sidecar_api_breaker_open",
            "1 while the Storefront API circuit breaker is open.",
            registry=r,
        )
        self.invalid_identities = Counter(
            "cc_sidecar_invalid_identities",
            "Customer ids, headers or cookies ignored as invalid.",
            ["storefront", "source"],
            registry=r,
        )
