"""Wiring: the shop listener and its services, the admin application, and serving.

Ordering rules, each load-bearing:
- Services (one ClientSession per remote, the token service, the storefronts) are opened before
  the shop listener takes its first request and closed after its last (:func:`shop_services`).
- The shop listener is aiohttp's low-level ``web.Server`` around one handler: every path is
  proxied, so an Application's router and middleware chain would only cost time (about a tenth
  of a pass-through request's CPU, measured by ``make bench``). Its protocol is aiohttp's with
  nginx's client limits (:mod:`proxy.limits`), the open-files limit raised first, as the
  automatic connection limit is half of it.
- The identity header is stripped inside the handler before anything reads it (see handler).
- Admin routes live on a separate application and listener: never reachable from shop traffic.
- On SIGTERM readiness drops first, then the shop listener drains, then the admin one stops,
  then the access log writes its last lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from aiohttp import web

import proxy.handler
from proxy.access_log import AccessLog
from proxy.admin import Readiness, create_admin_app
from proxy.budget import Budget
from proxy.buffering import Buffering
from proxy.client_gate import ClientGate
from proxy.compiled import is_compiled
from proxy.config import Settings
from proxy.config.model import split_listen
from proxy.errors import ConfigError
from proxy.handler import ShopHandler, build_storefront, shop_request
from proxy.identity import GuestKeys
from proxy.limits import ConnectionLimits, ShopServer, raise_open_files_limit
from proxy.metrics import Metrics
from proxy.payload import PayloadMaker, Tenants
from proxy.routing import Router
from proxy.store import TokenStore
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore, account_of
from proxy.storefront_api import StorefrontApiClient, create_api_session
from proxy.tokens import TokenService
from proxy.upstream import Upstream, create_upstream_session

log = logging.getLogger("proxy.app")

Clock = Callable[[], float]
# aiohttp low-level server options of the shop listener; the demo and the tests serve with these.
# - auto_decompress off: a request body is relayed byte for byte. aiohttp decodes gzip and
#   deflate bodies by default, and the decoded bytes would go upstream under the client's
#   Content-Length (the compressed size): everything past it, a second request of the
#   client's making (with any identity header), on the shop's connection.
# - shop_request: a request in another HTTP version than 1.x is answered 505 in HTTP/1.1.
# - aiohttp's own access log stays off: ours (proxy.access) names the storefront and request.
SHOP_SERVER_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {"auto_decompress": False, "request_factory": shop_request, "access_log": None}
)
# Allocations between young-generation collections while serving (CPython's default is 700).
_GC_YOUNG_THRESHOLD = 50_000
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ShopServices:
    """What the shop listener serves with: its handler, and the API client (for the start-up check)."""

    handler: Handler
    api_client: StorefrontApiClient
    # None when the access log is off; closed (its last lines written) after the drain.
    access_log: AccessLog | None


@contextlib.asynccontextmanager
async def shop_services(
    settings: Settings, *, metrics: Metrics, clock: Clock = time.time
) -> AsyncIterator[ShopServices]:
    """Open one session per remote (the API, each shop), build the request path; close them after."""
    # First: a file that cannot be opened stops start-up before anything else is opened.
    access_log = open_access_log(settings, metrics)
    cc = settings.customers_canvas
    api_session = create_api_session(cc)
    upstream_sessions = [create_upstream_session(storefront) for storefront in settings.storefronts]
    store = create_store(settings, metrics)
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
            min_ttl_s=settings.min_token_ttl_s,
            store=store,
            clock=clock,
            concurrent_new_customers=settings.budget.concurrent_new_customers,
            api_held_back=lambda: client.breaker.is_open,
        )
        keys = GuestKeys(settings.secret.get_secret_value())
        # Learnt in the background from now on: a page never waits for the tenant.
        tenants = Tenants(cc.tenant_id, client.storefront_tenants)
        tenants.start()
        storefronts = [
            build_storefront(
                storefront,
                Upstream(storefront, session),
                keys,
                metrics,
                store,
                PayloadMaker(
                    storefront.storefront_id,
                    tenants,
                    hub_url=cc.effective_hub_url,
                    api_url=cc.api_url,
                    clock=clock,
                ),
                clock,
            )
            for storefront, session in zip(settings.storefronts, upstream_sessions, strict=True)
        ]
        handler = ShopHandler(
            Router([(storefront.settings, storefront) for storefront in storefronts]),
            tokens,
            metrics,
            api_timeout_s=cc.timeout_s,
            retry_after_s=max(1, round(cc.breaker.open_s)),
            clock=clock,
            access_log=access_log,
            budget=Budget(settings.budget, store, metrics),
            buffering=Buffering(settings.buffering, settings.limits.body_timeout_s, metrics),
            client_gate=ClientGate(
                settings.budget.client_pages_at_once, settings.budget.client_wait_s, metrics
            ),
        )
        yield ShopServices(handler, client, access_log)
        await tokens.aclose()
        await tenants.aclose()
    finally:
        if access_log is not None:
            await access_log.aclose()
        for upstream_session in upstream_sessions:
            await upstream_session.close()
        await api_session.close()
        await store.aclose()


def open_access_log(settings: Settings, metrics: Metrics) -> AccessLog | None:
    """The access log ``access_log`` asks for (written at log level INFO or DEBUG, as before), or None."""
    if not settings.access_log or logging.getLevelName(settings.log_level) > logging.INFO:
        return None
    try:
        return AccessLog.open(settings.access_log_path, metrics.access_log_dropped)
    except OSError as exc:
        raise ConfigError(
            [f"access_log_path: cannot open {settings.access_log_path}: {exc.strerror}"]
        ) from exc


def create_store(settings: Settings, metrics: Metrics) -> TokenStore:
    """The token store ``token_store`` names; Redis is connected lazily, so start-up never waits for it."""
    redis = settings.token_store.redis
    if settings.token_store.backend == "redis" and redis is not None:
        return RedisStore.from_settings(
            redis,
            secret=settings.secret.get_secret_value(),
            metrics=metrics,
            account=account_of(settings.customers_canvas),
        )
    return MemoryStore()


# Names the event loop `run` serves on: "uvloop" (the default; a dependency wherever it builds)
# or "asyncio" (the standard library's, e.g. to rule uvloop out while chasing a problem).
EVENT_LOOP_ENV = "CC_SIDECAR_EVENT_LOOP"
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def event_loop_factory(environ: Mapping[str, str] = os.environ) -> tuple[str, LoopFactory | None]:
    """The event loop to serve on, by name, and its factory (None: asyncio's default)."""
    choice = environ.get(EVENT_LOOP_ENV, "uvloop").strip().lower() or "uvloop"
    if choice == "asyncio":
        return "asyncio", None
    if choice != "uvloop":
        raise ConfigError([f"{EVENT_LOOP_ENV}: must be uvloop or asyncio, not {choice!r}"])
    try:
        import uvloop
    except ImportError:
        # A platform uvloop does not build on (Windows): the dependency is skipped there.
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def serve(settings: Settings) -> int:
    """Run the shop and admin listeners until SIGTERM/SIGINT, then drain; return the exit code."""
    loop_name, loop_factory = event_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(settings, loop_name))


async def _serve(settings: Settings, loop_name: str) -> int:
    metrics = Metrics()
    async with shop_services(settings, metrics=metrics) as services:
        return await _listen(settings, services, metrics, loop_name)


async def _listen(settings: Settings, services: ShopServices, metrics: Metrics, loop_name: str) -> int:
    readiness = Readiness()
    limits = ConnectionLimits.from_settings(settings.limits, raise_open_files_limit())
    shop_runner = web.ServerRunner(
        ShopServer(services.handler, limits=limits, metrics=metrics, **SHOP_SERVER_OPTIONS),
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
        services.api_client.warn_missing_storefronts(s.storefront_id for s in settings.storefronts)
    )
    # Everything built at start-up lives as long as the process: out of the cyclic collector's
    # sight, its full collections stop walking it (about 5 % of a request's CPU, by make bench).
    gc.freeze()
    # A proxied request leaves no reference cycles (reference counting frees it; a test holds
    # the shop client to that), yet its allocations set off a young collection every few
    # requests, each walking the objects of every request in flight: ~3 % of the CPU for
    # nothing. Collected every 50,000 allocations instead, rarer cyclic garbage (an error's
    # traceback) still goes within moments.
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    readiness.ready = True
    log.info(
        "cc-sidecar listening",
        extra={
            "listen": settings.listen,
            "admin_listen": settings.admin_listen,
            "pid": os.getpid(),
            "event_loop": loop_name,
            # The request path as a mypyc-compiled extension (the image) or its Python source.
            "compiled": is_compiled(proxy.handler),
        },
    )
    await stop.wait()
    readiness.ready = False
    check.cancel()
    log.info("draining", extra={"grace_s": settings.shutdown_grace_s})
    await shop_runner.cleanup()
    # Requests cut at the grace's end were cancelled, not awaited: a turn of the loop, and most
    # have written their access lines into the batch (a later one is written on its own).
    await asyncio.sleep(0)
    await admin_runner.cleanup()
    if services.access_log is not None:
        # Every request has finished: its line goes out before the last word.
        await services.access_log.aclose()
    log.info("stopped")
    return 0
