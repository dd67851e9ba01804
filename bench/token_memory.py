"""Resident memory per cached customer token, measured on the sidecar's own TokenService.

Run by bench/run.py in a fresh interpreter (so nothing else lives in the heap):
``python bench/token_memory.py --entries 100000 --token-length 700``. It builds
:class:`proxy.tokens.TokenService` over an in-process fake Storefront API, fills ``entries``
customers through ``token_for`` (each one a Get that 404s, a Create and a GetToken, exactly what
a first request costs) and prints one JSON line with (VmRSS after - VmRSS before) divided by
the entries filled in between (all but the first batch, which warms up).

The fake tokens are made like the emulator's: an RS256 JWT with the same header and claims,
unique per customer (own ``sub``, ``jti`` and signature), ``exp`` an hour after ``iat`` (so the
service caches it), padded to ``--token-length`` characters (the benchmark passes the length the
emulator really issues; Customer's Canvas's own tokens may be longer: pass a bigger length).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import time

from proxy.errors import NotFound
from proxy.metrics import Metrics
from proxy.tokens import Customer, TokenService

STOREFRONT_ID = 1
TENANT_ID = 1
BATCH = 1000  # customers filled concurrently, as a burst of first requests would
RS256_SIGNATURE_CHARS = 342  # a 2048-bit RSA signature, base64url without padding


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeUsersApi:
    """Answers like the Storefront API without a network: every user is new, tokens are fresh."""

    def __init__(self, token_length: int) -> None:
        self.token_length = token_length
        self.issued = 0
        # The emulator's header and claims (proxy/emulator.py), so the size is made the same way.
        header = {"alg": "RS256", "kid": os.urandom(16).hex(), "typ": "JWT"}
        self._header = _b64url(json.dumps(header, separators=(",", ":")).encode())

    async def get_user(self, storefront_id: int, user_id: str) -> object:
        raise NotFound("get_user", "no such user", 404)

    async def create_user(self, storefront_id: int, user_id: str, *, is_anonymous: bool) -> object:
        return {"id": user_id}

    async def get_token(self, storefront_id: int, user_id: str) -> str:
        self.issued += 1
        now = int(time.time())
        claims = {
            "sub": user_id,
            "storefront_id": storefront_id,
            "tenant_id": TENANT_ID,
            "iat": now,
            "nbf": now,
            "jti": os.urandom(16).hex(),
            "exp": now + 3600,
        }
        payload = json.dumps(claims, separators=(",", ":"))
        # Lengthen or shorten the jti so the token has the requested length (base64 rounds).
        room = self.token_length - len(self._header) - RS256_SIGNATURE_CHARS - 2
        jti_length = max(8, 32 + room * 3 // 4 - len(payload))
        claims["jti"] = (str(claims["jti"]) + "0" * jti_length)[:jti_length]
        payload = json.dumps(claims, separators=(",", ":"))
        signature = _b64url(os.urandom(256))
        return f"{self._header}.{_b64url(payload.encode())}.{signature}"

    async def merge_anonymous(self, storefront_id: int, anonymous_user_id: str, regular_user_id: str) -> None:
        raise AssertionError("no merges in this benchmark")


def vm_rss_bytes() -> int:
    """This process's resident set size, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def customer(n: int) -> Customer:
    return Customer(STOREFRONT_ID, f"customer-{n:07d}", False)


async def fill(service: TokenService, numbers: range) -> None:
    """Cache a token for each customer number, all of them concurrently."""
    await asyncio.gather(*(service.token_for(customer(n)) for n in numbers))


async def measure(entries: int, token_length: int) -> dict[str, object]:
    api = FakeUsersApi(token_length)
    metrics = Metrics()
    service = TokenService(
        api,
        metrics,
        tenant_id=TENANT_ID,
        cache_size=entries,
        skew_s=30.0,
        lifetime_without_exp_s=300.0,
        timeout_s=30.0,
    )
    # Warm up with one batch: imports, jwt, and the allocator's high-water mark for a burst of
    # BATCH concurrent fills are then in "before", so the difference is what entries cost.
    await fill(service, range(BATCH))
    gc.collect()
    before = vm_rss_bytes()
    started = time.perf_counter()
    for start in range(BATCH, entries, BATCH):
        await fill(service, range(start, min(start + BATCH, entries)))
    fill_s = time.perf_counter() - started
    gc.collect()
    after = vm_rss_bytes()
    cached = metrics.registry.get_sample_value("cc_sidecar_token_cache_entries") or 0.0
    probe = service.cached(customer(0))
    if int(cached) != entries or probe is None:
        raise RuntimeError(f"expected {entries} cached tokens, the cache holds {cached:.0f}")
    filled = entries - BATCH
    return {
        "entries": entries,
        "token_length": len(probe.token),
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_token": (after - before) / filled,
        "fill_seconds": round(fill_s, 2),
        "api_get_token_calls": api.issued,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--token-length", type=int, default=700)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.entries, args.token_length))), flush=True)


if __name__ == "__main__":
    main()
