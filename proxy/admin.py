"""The admin listener: liveness, readiness and Prometheus metrics; never shop traffic."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from proxy.metrics import Metrics


class Readiness:
    """Whether the sidecar should get traffic: true once listening, false from SIGTERM on."""

    __slots__ = ("ready",)

    def __init__(self) -> None:
        self.ready = False


READINESS = web.AppKey("readiness", Readiness)
ADMIN_METRICS = web.AppKey("admin_metrics", Metrics)


async def healthz(request: web.Request) -> web.Response:
    """200 while the process runs (and its event loop answers)."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """200 when listening with a loaded config; 503 once draining. Never asks Customer's Canvas."""
    if request.app[READINESS].ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready\n")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition, in the format the scraper asks for (text 0.0.4 or OpenMetrics)."""
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[ADMIN_METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


def create_admin_app(readiness: Readiness, registry: Metrics) -> web.Application:
    """The admin application, separate from the shop's so its routes are never reachable there."""
    app = web.Application()
    app[READINESS] = readiness
    app[ADMIN_METRICS] = registry
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
