"""Short-lived tokens over three lifetimes: every token handed out has half its life left.

The emulator issues 20-second tokens (``cc-sidecar emulator --token-lifetime-s 20``); a customer
browses editor pages and, like the page script, asks ``tokenUrl`` once ``renewIn`` has passed.
Real time runs (about a minute per test): the sidecar renews in the background on its own
clock, as it will in production.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from proxy.emulator import EmulatorOptions
from tests.fixtures.emulator import RunningEmulator, start_emulator
from tests.fixtures.redis import RedisProcess
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config
from tests.integration.test_replicas import StartReplica, redis_store_config, replica_config, start_replica

__all__ = ["start_replica"]  # the fixture, used here

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

LIFETIME_S = 20
LIFETIMES = 3
USER_HEADER = "X-Shop-User"
GET_TOKEN = "StorefrontUsers_GetToken"
ELEMENT = re.compile(rb'<script id="cc-storefront-user" type="application/json">(.*?)</script>', re.S)
# How often the customer clicks (a page, or the token endpoint once renewIn has passed).
STEP_S = 0.25

Fetch = Callable[[str], Awaitable[dict[str, Any]]]


@pytest.fixture
async def short_lived(aiohttp_server: Any) -> RunningEmulator:
    """The emulator issuing tokens that live LIFETIME_S seconds."""
    return await start_emulator(
        aiohttp_server, EmulatorOptions(enable_control=True, token_lifetime_s=LIFETIME_S)
    )


def fresh_config(document: dict[str, Any]) -> dict[str, Any]:
    # token_skew_s below half the lifetime, so the minimum is min(min_token_ttl_s, L/2) = 10 s.
    document["token_skew_s"] = 2
    return document


async def browse(fetch: Fetch) -> list[dict[str, Any]]:
    """A customer for three lifetimes: pages, and tokenUrl whenever renewIn has passed.

    Checks every answer: at least half the lifetime left (by the sidecar's count and by the
    token's exp), and from tokenUrl past renewIn a token other than the one it replaces.
    """
    answers: list[dict[str, Any]] = []
    ends = time.time() + LIFETIMES * LIFETIME_S
    current: str | None = None
    renew_at = float("inf")
    while time.time() < ends:
        asked_for_newer = time.time() >= renew_at
        answer = await fetch("/.cc-sidecar/token" if asked_for_newer else "/editor/mug")
        received = time.time()
        assert answer["expiresIn"] >= LIFETIME_S / 2, answer
        assert answer["expiresAt"] - received >= LIFETIME_S / 2 - 0.5, answer
        if asked_for_newer:
            assert answer["token"] != current
        current, renew_at = answer["token"], received + answer["renewIn"]
        answers.append(answer)
        await asyncio.sleep(STEP_S)
    return answers


async def test_one_sidecar_hands_out_half_lifetime_tokens_with_two_get_token_per_lifetime(
    shop: Shop, short_lived: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Over 3 lifetimes every page and tokenUrl answer has >= L/2 left; <= 2 GetToken per lifetime (+ the first)."""
    document = sidecar_config(
        shop.url, short_lived.url, trusted_networks=["127.0.0.1/32"], user={"header": USER_HEADER}
    )
    sidecar = await make_sidecar(fresh_config(document))

    async with aiohttp.ClientSession() as client:

        async def fetch(path: str) -> dict[str, Any]:
            async with client.get(
                sidecar.make_url(path), headers={USER_HEADER: "fresh@example.com"}
            ) as response:
                assert response.status == 200
                body = await response.read()
            return (
                json.loads(body) if path.startswith("/.cc-sidecar/") else json.loads(ELEMENT.findall(body)[0])
            )

        answers = await browse(fetch)
    tokens = {answer["token"] for answer in answers}
    assert len(tokens) >= LIFETIMES * 2 - 1  # renewed about every L/2
    assert short_lived.state.count(GET_TOKEN) <= 2 * LIFETIMES + 1
    assert short_lived.state.count(GET_TOKEN) == len(tokens)


async def test_three_replicas_on_redis_hand_out_half_lifetime_tokens_with_two_get_token_per_lifetime(
    shop: Shop, short_lived: RunningEmulator, redis_server: RedisProcess, start_replica: StartReplica
) -> None:
    """The same customer round-robined over 3 replicas sharing Redis: >= L/2 left, <= 2 GetToken per lifetime."""
    document = fresh_config(replica_config(shop, short_lived, redis_store_config(redis_server)))
    replicas = list(await asyncio.gather(*(start_replica(document) for _ in range(3))))
    turn = 0

    async with aiohttp.ClientSession() as client:

        async def fetch(path: str) -> dict[str, Any]:
            nonlocal turn
            replica = replicas[turn % 3]
            turn += 1
            async with client.get(replica.url(path), headers={USER_HEADER: "shared@example.com"}) as response:
                assert response.status == 200
                body = await response.read()
            return (
                json.loads(body) if path.startswith("/.cc-sidecar/") else json.loads(ELEMENT.findall(body)[0])
            )

        answers = await browse(fetch)
    tokens = {answer["token"] for answer in answers}
    assert len(tokens) >= LIFETIMES * 2 - 1
    assert short_lived.state.count(GET_TOKEN) <= 2 * LIFETIMES + 1
