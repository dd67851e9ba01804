"""The Redis (or Valkey) store: replicas with one ``secret`` share customers, claims and sessions.

At rest, Redis learns nothing useful: a key is ``{key_prefix}{kind}:{HMAC}`` of what it indexes
(never a customer or session id), a value is AES-GCM under a key derived from ``secret`` with
HKDF, bound to its key name (a value moved to another key does not decrypt), and every key has a
TTL. Both keys are derived from the Customer's Canvas account too (API URL, client id, tenant:
:func:`account_of`), so two accounts sharing a Redis, a ``secret`` and a ``key_prefix`` never
read each other's entries. Claims hold a random owner id, the only thing stored in the clear.

Redis is a cache, never a dependency of a page. Every call is bounded by ``timeout_s`` (connect
included) and never retried; a call that fails raises :class:`~proxy.errors.StoreUnavailable`.
:data:`BREAKER_FAILURES` failures in a row open a breaker: calls then raise
:class:`~proxy.errors.StoreUnavailable` at once, with no I/O, until one call every
:data:`RETRY_AFTER_S` probes Redis again; the first that succeeds closes it. One warning is logged
per change of state, never per request, and ``cc_sidecar_store_available`` shows the state.
redis-py's pool reconnects by itself (and, with Sentinel, asks the sentinels for the master anew).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.config.model import CustomersCanvasSettings, RedisSettings, split_listen
from proxy.errors import StoreUnavailable
from proxy.metrics import Metrics
from proxy.store import Claim, StoreKey

log = logging.getLogger("proxy.store")

# While the breaker is open, one call this often tries Redis again (so Redis is used again within
# this long of coming back); the others fail at once.
RETRY_AFTER_S = 5.0
# Failed calls in a row that open the breaker. One late answer (the replica's own loop busy under a
# burst of first requests, a CPU-throttled pod, Redis forking for a snapshot) costs its request
# alone, not every other request's sharing until a call succeeds again.
BREAKER_FAILURES = 3
_NONCE_BYTES = 12
_KEY_NAME_HEX = 32  # 128 bits of HMAC-SHA256 in a key name
# Frees a claim only while it still holds this owner. EVAL rather than EVALSHA: a Redis restarted
# empty has no script cache, and the script is shorter than a NOSCRIPT round trip.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

# A token bucket as GCRA (see TokenStore.spend) on Redis' own clock, so replicas whose clocks
# differ share one bucket; atomic as one script. ARGV: interval_s, burst. Returns "0" when a unit
# was taken, else the seconds to wait.
_SPEND = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local interval = tonumber(ARGV[1])
local held = redis.call('GET', KEYS[1])
local due = now
if held then due = math.max(tonumber(held), now) end
local wait = (due - now) - (tonumber(ARGV[2]) - 1) * interval
if wait > 0 then return string.format('%.6f', wait) end
due = due + interval
redis.call('SET', KEYS[1], string.format('%.6f', due), 'PX', math.ceil((due - now) * 1000))
return '0'
"""

T = TypeVar("T")


def account_of(settings: CustomersCanvasSettings) -> str:
    """What names one Customer's Canvas account: its API URL, External App client id and tenant."""
    return f"{settings.api_url}\0{settings.client_id}\0{settings.tenant_id or ''}"


class SealedKeys:
    """Key names and value encryption, both derived from ``secret`` and the account (HKDF, separate keys)."""

    def __init__(self, secret: str, prefix: str, account: str = "") -> None:
        self._prefix = prefix
        salt = account.encode()
        self._name_key = _derive(secret, b"cc-sidecar store key names v2", salt)
        self._aead = AESGCM(_derive(secret, b"cc-sidecar store values v2", salt))

    def name(self, key: StoreKey) -> str:
        """The Redis key of ``key``: its kind in the clear, an HMAC of what it indexes."""
        mac = hmac.new(self._name_key, f"{key.kind}\0{key.name}".encode(), hashlib.sha256)
        return f"{self._prefix}{key.kind}:{mac.hexdigest()[:_KEY_NAME_HEX]}"

    def seal(self, name: str, value: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value, name.encode())

    def open(self, name: str, sealed: bytes) -> bytes | None:
        """The value, or None if it was not sealed under this secret for this key."""
        try:
            return self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], name.encode())
        except (InvalidTag, ValueError):
            return None


def _derive(secret: str, purpose: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt or None, info=purpose).derive(secret.encode())


def create_client(settings: RedisSettings) -> Any:
    """A redis-py asyncio client for standalone, Sentinel or Cluster, calls bounded, never retried."""
    bounds: dict[str, Any] = {
        "socket_timeout": settings.timeout_s,
        "socket_connect_timeout": settings.timeout_s,
    }
    tls: dict[str, Any] = {"ssl_ca_certs": settings.ca_file} if settings.ca_file else {}
    # token_store.redis.password, as given (check-config refuses one in the url as well, whose
    # options from_url would prefer).
    auth: dict[str, Any] = {"password": settings.password.get_secret_value()} if settings.password else {}
    if settings.cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(
            settings.url, **bounds, **tls, **auth, retry=Retry(NoBackoff(), 0), cluster_error_retry_attempts=1
        )
    if settings.sentinel is not None:
        sentinel = settings.sentinel
        parts = urlsplit(settings.url)
        sentinel_auth = (
            {"password": sentinel.password.get_secret_value()} if sentinel.password is not None else {}
        )
        master_options: dict[str, Any] = {
            **bounds,
            "retry": Retry(NoBackoff(), 0),
            "db": int(parts.path.strip("/") or 0),
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
            **auth,
        }
        # rediss:// means TLS to the sentinels as well as to the master (one CA for both).
        encryption: dict[str, Any] = {"ssl": True, **tls} if parts.scheme == "rediss" else {}
        # redis-py before 8 carries no annotations on Sentinel; 8.x does (unused-ignore keeps both clean).
        watchers = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            [split_listen(address) for address in sentinel.addresses],
            sentinel_kwargs={**bounds, **sentinel_auth, **encryption},
            **master_options,
            **encryption,
        )
        return watchers.master_for(sentinel.master_name)
    return redis.asyncio.Redis.from_url(settings.url, **bounds, **tls, **auth, retry=Retry(NoBackoff(), 0))


class RedisStore:
    """The shared store on Redis; see the module docstring."""

    shared = True

    def __init__(
        self,
        client: Any,
        *,
        secret: str,
        key_prefix: str,
        timeout_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        account: str = "",
    ) -> None:
        self._client = client
        self._keys = SealedKeys(secret, key_prefix, account)
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._clock = clock
        self._available = True
        self._retry_at = 0.0
        self._probing = False
        self._failures_in_a_row = 0
        metrics.store_available.set(1)

    @classmethod
    def from_settings(
        cls, settings: RedisSettings, *, secret: str, metrics: Metrics, account: str = ""
    ) -> RedisStore:
        """The store of ``settings``; ``account`` (:func:`account_of`) keeps accounts apart."""
        return cls(
            create_client(settings),
            secret=secret,
            key_prefix=settings.key_prefix,
            timeout_s=settings.timeout_s,
            metrics=metrics,
            account=account,
        )

    @property
    def available(self) -> bool:
        """Whether calls go to Redis (the breaker is closed)."""
        return self._available

    async def get(self, key: StoreKey) -> bytes | None:
        name = self._keys.name(key)
        sealed: bytes | None = await self._call("get", lambda: self._client.get(name))
        value = None if sealed is None else self._keys.open(name, sealed)
        self._metrics.store_operations.labels("get", "miss" if value is None else "hit").inc()
        return value

    async def put(self, key: StoreKey, value: bytes, ttl_s: float) -> None:
        name = self._keys.name(key)
        sealed = self._keys.seal(name, value)
        await self._call("put", lambda: self._client.set(name, sealed, px=_ms(ttl_s)))
        self._metrics.store_operations.labels("put", "ok").inc()

    async def delete(self, key: StoreKey) -> None:
        name = self._keys.name(key)
        await self._call("delete", lambda: self._client.delete(name))
        self._metrics.store_operations.labels("delete", "ok").inc()

    async def claim(self, key: StoreKey, ttl_s: float) -> Claim | None:
        name = self._keys.name(key)
        owner = secrets.token_hex(16)
        taken = await self._call("claim", lambda: self._client.set(name, owner, nx=True, px=_ms(ttl_s)))
        self._metrics.store_operations.labels("claim", "ok" if taken else "held").inc()
        return Claim(key, owner) if taken else None

    async def release(self, claim: Claim) -> None:
        name = self._keys.name(claim.key)
        await self._call("release", lambda: self._client.eval(_RELEASE, 1, name, claim.owner))
        self._metrics.store_operations.labels("release", "ok").inc()

    async def spend(self, key: StoreKey, interval_s: float, burst: int) -> float:
        name = self._keys.name(key)
        wait = await self._call("spend", lambda: self._client.eval(_SPEND, 1, name, repr(interval_s), burst))
        self._metrics.store_operations.labels("spend", "ok").inc()
        return float(wait)

    async def aclose(self) -> None:
        await self._client.aclose()
        # A Sentinel master's pool has its own clients of the sentinels.
        manager = getattr(getattr(self._client, "connection_pool", None), "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()

    async def _call(self, operation: str, command: Callable[[], Awaitable[T]]) -> T:
        """Run one command within the timeout, through the breaker; failures raise StoreUnavailable."""
        probe = False
        if not self._available:
            if self._probing or self._clock() < self._retry_at:
                self._metrics.store_operations.labels(operation, "skipped").inc()
                raise StoreUnavailable("the token store is unavailable (breaker open)")
            probe = self._probing = True
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await command()
        except Exception as exc:
            # RedisError, OSError and TimeoutError are the expected ones; anything else a client
            # library raises from a broken connection must not reach a page either.
            self._metrics.store_operations.labels(operation, "error").inc()
            self._failures_in_a_row += 1
            if probe or self._failures_in_a_row >= BREAKER_FAILURES:
                self._opened(exc)
            raise StoreUnavailable(f"the token store failed: {type(exc).__name__}") from None
        finally:
            if probe:
                self._probing = False
        self._failures_in_a_row = 0
        if not self._available:
            self._available = True
            self._metrics.store_available.set(1)
            # One line per change of state, never merged by the log's once-a-minute limit.
            log.warning(
                "token store is back: customers are shared with the other replicas again",
                extra={"_every_time": True},
            )
        return result

    def _opened(self, exc: BaseException) -> None:
        self._retry_at = self._clock() + RETRY_AFTER_S
        if self._available:
            self._available = False
            self._metrics.store_available.set(0)
            # The error's type only: a message could quote a URL with its password.
            log.warning(
                "token store unavailable: serving from this replica's memory until it returns",
                extra={"error": type(exc).__name__, "retry_after_s": RETRY_AFTER_S, "_every_time": True},
            )


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (Redis refuses 0)."""
    return max(1, int(seconds * 1000))
