"""Wiring: the shop and admin applications, their services under typed keys, and serving.

Ordering rules, each load-bearing:
- Services (one ClientSession per remote, the token service, the storefronts) are made in a
  cleanup context, so they exist before the first request and are closed after the last.
- The identity header is stripped inside the handler before anything reads it (see handler).
- Admin routes live on a separate application and listener: never reachable from shop traffic.
- On SIGTERM readiness drops first, then the shop listener drains, then the admin one stops.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter

from proxy.admin import Readiness, create_admin_app
from proxy.config import Settings
from proxy.config.model import split_listen
from proxy.errors import SidecarError, UpstreamError
from proxy.handler import STOREFRONT_NAME, ShopHandler, build_storefront
from proxy.identity import GuestKeys
from proxy.log import request_id_var, storefront_var
from proxy.metrics import Metrics
from proxy.routing import Router
from proxy.storefront_api import StorefrontApiClient, create_api_session
from proxy.tokens import TokenService
from proxy.upstream import Upstream, create_upstream_session

log = logging.getLogger("proxy.app")
access_log = logging.getLogger("proxy.access")

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
HANDLER = web.AppKey("handler", ShopHandler)
TOKENS = web.AppKey("tokens", TokenService)
API_CLIENT = web.AppKey("api_client", StorefrontApiClient)
Clock = Callable[[], float]
CLOCK: web.AppKey[Clock] = web.AppKey("clock")

# A client's X-Request-Id is kept when it looks like one; anything else gets a fresh id.
_MAX_REQUEST_ID = 128
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    settings: Settings, *, metrics: Metrics | None = None, clock: Callable[[], float] = time.time
) -> web.Application:
    """The shop application: every path is proxied (or answered under /.cc-sidecar/)."""
    app = web.Application(middlewares=[_observe])
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics()
    app[CLOCK] = clock
    app.cleanup_ctx.append(_services)
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app


async def _services(app: web.Application) -> AsyncIterator[None]:
    """Open one session per remote (the API, each shop) and build the per-request services."""
    settings = app[SETTINGS]
    metrics = app[METRICS]
    cc = settings.customers_canvas
    api_session = create_api_session(cc)
    upstream_sessions = [create_upstream_session(storefront) for storefront in settings.storefronts]
    try:
        client = StorefrontApiClient(cc, api_session, metrics)
        tokens = TokenService(
            client,
            metrics,
            tenant_id=cc.tenant_id,
            cache_size=settings.token_cache_size,
            skew_s=settings.token_skew_s,
            lifetime_without_exp_s=cc.token_lifetime_without_exp_s,
            timeout_s=cc.timeout_s,
            clock=app[CLOCK],
        )
        keys = GuestKeys(settings.secret.get_secret_value())
        storefronts = [
            build_storefront(storefront, Upstream(storefront, session), keys, metrics)
            for storefront, session in zip(settings.storefronts, upstream_sessions, strict=True)
        ]
        router = Router([(storefront.settings, storefront) for storefront in storefronts])
        app[API_CLIENT] = client
        app[TOKENS] = tokens
        app[HANDLER] = ShopHandler(
            router,
            tokens,
            metrics,
            api_timeout_s=cc.timeout_s,
            retry_after_s=max(1, round(cc.breaker.open_s)),
            clock=app[CLOCK],
        )
        yield
        await tokens.aclose()
    finally:
        for upstream_session in upstream_sessions:
            await upstream_session.close()
        await api_session.close()


async def _dispatch(request: web.Request) -> web.StreamResponse:
    return await request.app[HANDLER](request)


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, metrics, the access log, and the one place errors become HTTP responses."""
    request_id = request.headers.get("X-Request-Id", "")
    if not request_id or len(request_id) > _MAX_REQUEST_ID or not request_id.isascii():
        request_id = next(_request_ids)
    request_id_var.set(request_id)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except UpstreamError as exc:
        log.warning("shop request failed: %s", exc, extra={"status": exc.status})
        response = web.Response(status=exc.status, text=_UPSTREAM_TEXT[exc.status])
    except web.HTTPException as exc:
        # aiohttp answers these itself once re-raised (returning them is deprecated).
        _record(request, exc.status, started)
        raise
    except SidecarError as exc:
        log.error("request failed: %s", exc)
        response = web.Response(status=500, text="internal error\n")
    except Exception:
        log.exception("unexpected error")
        response = web.Response(status=500, text="internal error\n")
    _record(request, response.status, started)
    return response


def _record(request: web.Request, status: int, started: float) -> None:
    """Count the request and write its access log line."""
    storefront = request.get(STOREFRONT_NAME, "-")
    storefront_var.set(storefront)
    _requests_counter(request.app[METRICS], storefront, status).inc()
    if request.app[SETTINGS].access_log and access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "peer": request.remote,
            },
        )


# Unique, not secret: a random per-process prefix and a counter, cheaper than random bytes each time.
_request_ids = (f"{secrets.token_hex(4)}-{n:x}" for n in itertools.count(1))


@functools.lru_cache(maxsize=1024)
def _requests_counter(metrics: Metrics, storefront: str, status: int) -> Counter:
    """The request counter child of one (storefront, status); labels() is costly per request."""
    return metrics.requests.labels(storefront, str(status))


_UPSTREAM_TEXT = {
    502: "bad gateway: the shop did not answer\n",
    504: "gateway timeout: the shop was too slow\n",
}


def serve(settings: Settings) -> int:
    """Run the shop and admin listeners until SIGTERM/SIGINT, then drain; return the exit code."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        return runner.run(_serve(settings))


async def _serve(settings: Settings) -> int:
    metrics = Metrics()
    readiness = Readiness()
    shop_runner = web.AppRunner(
        create_app(settings, metrics=metrics),
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_s,
        handle_signals=False,
    )
    admin_runner = web.AppRunner(create_admin_app(readiness, metrics), access_log=None, handle_signals=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await shop_runner.setup()
    await admin_runner.setup()
    try:
        for runner, address in (
            (admin_runner, settings.admin_listen),
            (shop_runner, settings.listen),
        ):
            host, port = split_listen(address)
            await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        await shop_runner.cleanup()
        await admin_runner.cleanup()
        return 1
    # In the background: readiness never waits for (or depends on) Customer's Canvas.
    check = asyncio.create_task(
        shop_runner.app[API_CLIENT].warn_missing_storefronts(s.storefront_id for s in settings.storefronts)
    )
    readiness.ready = True
    log.info(
        "cc-sidecar listening",
        extra={
            "listen": settings.listen,
            "admin_listen": settings.admin_listen,
            "pid": os.getpid(),
        },
    )
    await stop.wait()
    readiness.ready = False
    check.cancel()
    log.info("draining", extra={"grace_s": settings.shutdown_grace_s})
    await shop_runner.cleanup()
    await admin_runner.cleanup()
    log.info("stopped")
    return 0
