"""The admin listener: liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from proxy.admin import Readiness, create_admin_app
from proxy.metrics import Metrics


async def test_healthz_is_200_while_running(aiohttp_client: Any) -> None:
    """/healthz answers 200 whatever the readiness."""
    client = await aiohttp_client(create_admin_app(Readiness(), Metrics()))
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.text() == "ok\n"


async def test_readyz_follows_readiness(aiohttp_client: Any) -> None:
    """/readyz is 503 before start-up completes, 200 when ready, 503 again once draining."""
    readiness = Readiness()
    client = await aiohttp_client(create_admin_app(readiness, Metrics()))
    assert (await client.get("/readyz")).status == 503
    readiness.ready = True
    assert (await client.get("/readyz")).status == 200
    readiness.ready = False
    assert (await client.get("/readyz")).status == 503


async def test_metrics_exposes_the_contract_names(aiohttp_client: Any) -> None:
    """/metrics is Prometheus text with every metric the contract names."""
    metrics = Metrics()
    metrics.requests.labels("main", 200).inc()
    metrics.api_calls.labels("StorefrontUsers_GetToken", "ok").inc()
    metrics.injections.labels("main", "html").inc()
    metrics.upstream_seconds.labels("main").observe(0.01)
    client = await aiohttp_client(create_admin_app(Readiness(), metrics))
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = await response.text()
    for line in (
        'cc_sidecar_requests_total{status="200",storefront="main"} 1.0',
        'cc_sidecar_api_calls_total{operation="StorefrontUsers_GetToken",outcome="ok"} 1.0',
        'cc_sidecar_injections_total{mode="html",storefront="main"} 1.0',
        'cc_sidecar_upstream_seconds_count{storefront="main"} 1.0',
        "cc_sidecar_token_cache_hits_total 0.0",
        "cc_sidecar_token_cache_misses_total 0.0",
    ):
        assert line in text, line


async def test_metrics_speaks_openmetrics_when_asked(aiohttp_client: Any) -> None:
    """A scraper that accepts OpenMetrics gets it, ending with # EOF."""
    client = await aiohttp_client(create_admin_app(Readiness(), Metrics()))
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert (await response.text()).endswith("# EOF\n")


async def test_shop_routes_are_not_on_the_admin_listener(aiohttp_client: Any) -> None:
    """Anything but the three admin paths is 404 there (and nothing is proxied)."""
    client = await aiohttp_client(create_admin_app(Readiness(), Metrics()))
    assert (await client.get("/.cc-sidecar/token")).status == 404
    assert (await client.get("/editor/mug")).status == 404
