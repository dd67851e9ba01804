"""Prometheus metrics of one sidecar, in a registry of its own (no global state, so tests and
several apps in one process never collide). Labels never carry a token, a user id or a session."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Upstream latency buckets, seconds: fine below 100 ms where a proxy's cost shows.
_UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric the sidecar exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cc_sidecar_requests",
            "Shop requests served, by storefront and status.",
            ["storefront", "status"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "cc_sidecar_upstream_seconds",
            "Time until the shop's response headers arrived.",
            ["storefront"],
            buckets=_UPSTREAM_BUCKETS,
            registry=r,
        )
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
