"""Three `cc-sidecar run` processes on one Redis act as one sidecar (token_store.backend: redis)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from proxy.config.model import DEFAULT_STORE_TIMEOUT_S
from proxy.emulator import EmulatorOptions
from proxy.identity import GUEST_COOKIE
from proxy.store.redis import RETRY_AFTER_S
from tests.fixtures.emulator import RunningEmulator, start_emulator
from tests.fixtures.process import free_port, start_sidecar, wait_ready
from tests.fixtures.redis import RedisProcess, SentinelSet
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config
from tests.integration.test_budget import harvest_guest_cookies

ELEMENT = re.compile(rb'<script id="cc-storefront-user" type="application/json">(.*?)</script>', re.S)
USER_HEADER = "X-Shop-User"
GET_TOKEN = "StorefrontUsers_GetToken"
MERGE = "StorefrontUsers_MergeAnonymous"
API_TIMEOUT_S = 3.0


@dataclass
class Replica:
    """One running `cc-sidecar run` process."""

    process: asyncio.subprocess.Process
    port: int
    admin: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


StartReplica = Callable[..., Awaitable[Replica]]


def replica_config(
    shop: Shop, emulator: RunningEmulator, store: dict[str, Any], **storefront: Any
) -> dict[str, Any]:
    storefront.setdefault("trusted_networks", ["127.0.0.1/32"])
    storefront.setdefault("user", {"header": USER_HEADER})
    document = sidecar_config(shop.url, emulator.url, **storefront)
    document["customers_canvas"]["timeout_s"] = API_TIMEOUT_S
    document["token_store"] = store
    return document


@pytest.fixture
async def start_replica(tmp_path: Path) -> AsyncIterator[StartReplica]:
    """Starts `cc-sidecar run` processes from a config document; kills them by PID at the end."""
    started: list[Replica] = []
    numbers = itertools.count()

    async def start(document: dict[str, Any]) -> Replica:
        port, admin = free_port(), free_port()
        directory = tmp_path / f"replica-{next(numbers)}"
        directory.mkdir()
        stderr = (directory / "stderr.log").open("wb")
        process = await start_sidecar(
            directory,
            {**document, "listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}"},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
        stderr.close()
        replica = Replica(process, port, admin)
        started.append(replica)
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
        return replica

    try:
        yield start
    finally:
        for replica in started:
            await replica.stop()


def redis_store_config(server: RedisProcess, timeout_s: float = 1.0) -> dict[str, Any]:
    """The store on ``server``; each call given 1 s (the most allowed), so that a busy CI machine's
    slow round trip never passes for Redis being gone. The outage test asks for the default."""
    return {"backend": "redis", "redis": {"url": server.url, "timeout_s": timeout_s}}


async def three_replicas(start_replica: StartReplica, document: dict[str, Any]) -> list[Replica]:
    return list(await asyncio.gather(*(start_replica(document) for _ in range(3))))


def element_of(body: bytes) -> dict[str, Any]:
    [found] = ELEMENT.findall(body)
    payload: dict[str, Any] = json.loads(found)
    return payload


def user_calls(emulator: RunningEmulator) -> int:
    """StorefrontUsers_* calls so far (a starting replica's OAuth and storefront check are not)."""
    return sum(1 for call in emulator.state.calls if call.operation.startswith("StorefrontUsers_"))


async def editor_page(client: aiohttp.ClientSession, replica: Replica, customer: str) -> dict[str, Any]:
    """The element of an editor page the customer (named by the trusted header) gets."""
    async with client.get(replica.url("/editor/mug"), headers={USER_HEADER: customer}) as response:
        assert response.status == 200
        return element_of(await response.read())


async def test_customers_visiting_every_replica_cost_one_get_token_each(
    shop: Shop, emulator: RunningEmulator, redis_server: RedisProcess, start_replica: StartReplica
) -> None:
    """10 customers, each on all 3 replicas in turn: 10 GetToken, and one token per customer."""
    replicas = await three_replicas(
        start_replica, replica_config(shop, emulator, redis_store_config(redis_server))
    )
    customers = [f"visitor-{n}@example.com" for n in range(10)]
    async with aiohttp.ClientSession() as client:
        tokens = {
            customer: {(await editor_page(client, replica, customer))["token"] for replica in replicas}
            for customer in customers
        }
    assert emulator.state.count(GET_TOKEN) == 10
    assert all(len(seen) == 1 for seen in tokens.values())


async def test_concurrent_first_requests_over_replicas_cost_one_get_token_per_customer(
    shop: Shop, emulator: RunningEmulator, redis_server: RedisProcess, start_replica: StartReplica
) -> None:
    """240 concurrent first requests of 20 new customers spread over 3 replicas: 20 GetToken."""
    replicas = await three_replicas(
        start_replica, replica_config(shop, emulator, redis_store_config(redis_server))
    )
    customers = [f"rush-{n}@example.com" for n in range(20)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        elements = await asyncio.gather(
            *(editor_page(client, replicas[n % 3], customers[n % 20]) for n in range(240))
        )
    assert emulator.state.count(GET_TOKEN) == 20
    assert emulator.state.count("StorefrontUsers_Create") == 20
    assert {element["userId"] for element in elements} == set(customers)


async def test_login_sent_to_two_replicas_at_once_merges_once(
    shop: Shop, emulator: RunningEmulator, redis_server: RedisProcess, start_replica: StartReplica
) -> None:
    """A guest logs in and the request reaches two replicas at once: one MergeAnonymous, both clear the cookie."""
    replicas = await three_replicas(
        start_replica, replica_config(shop, emulator, redis_store_config(redis_server))
    )
    async with aiohttp.ClientSession() as client:
        async with client.get(
            replicas[0].url("/editor/mug"), headers={"Cookie": "PHPSESSID=guest"}
        ) as response:
            guest = response.cookies[GUEST_COOKIE].value
        login = {"Cookie": f"PHPSESSID=guest; {GUEST_COOKIE}={guest}", USER_HEADER: "login@example.com"}

        async def log_in(replica: Replica) -> list[str]:
            async with client.get(replica.url("/plain"), headers=login) as response:
                return [c for c in response.headers.getall("Set-Cookie", []) if c.startswith(GUEST_COOKIE)]

        cleared = await asyncio.gather(log_in(replicas[1]), log_in(replicas[2]))
    assert emulator.state.count(MERGE) == 1
    assert all(len(lines) == 1 and "Max-Age=0" in lines[0] for lines in cleared)


async def test_one_login_with_30_swapped_guest_cookies_over_three_replicas_merges_once(
    shop: Shop, emulator: RunningEmulator, redis_server: RedisProcess, start_replica: StartReplica
) -> None:
    """30 guests (each with its StorefrontUser) swapped into one logged-in session, at once, spread
    over three replicas on one Redis: one MergeAnonymous; every guest cookie is cleared."""
    document = replica_config(shop, emulator, redis_store_config(redis_server))
    document["budget"] = {"client_burst": 100, "storefront_per_s": 100}  # room for the harvest
    replicas = await three_replicas(start_replica, document)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        guests = []
        for cookie in await harvest_guest_cookies(f"http://127.0.0.1:{replicas[0].port}", 30):
            async with client.get(
                replicas[0].url("/.cc-sidecar/token"), headers={"Cookie": cookie}
            ) as response:
                assert response.status == 200
            guests.append(cookie)
        assert emulator.state.count("StorefrontUsers_Create") == 30

        async def swap_in(n: int) -> list[str]:
            headers = {"Cookie": f"PHPSESSID=eve; {guests[n]}", USER_HEADER: "eve@example.com"}
            async with client.get(replicas[n % 3].url("/plain"), headers=headers) as response:
                return [c for c in response.headers.getall("Set-Cookie", []) if c.startswith(GUEST_COOKIE)]

        cleared = await asyncio.gather(*(swap_in(n) for n in range(30)))
    assert emulator.state.count(MERGE) == 1
    assert all(len(lines) == 1 and "Max-Age=0" in lines[0] for lines in cleared)


async def test_response_header_memory_is_shared_by_every_replica(
    shop: Shop, emulator: RunningEmulator, redis_server: RedisProcess, start_replica: StartReplica
) -> None:
    """The shop names a customer on one replica: the token endpoint of another answers for them;
    after a logout page on a third, it answers for a guest."""
    replicas = await three_replicas(
        start_replica,
        replica_config(
            shop,
            emulator,
            redis_store_config(redis_server),
            trusted_networks=[],
            user={"response_header": "X-Shop-Customer"},
        ),
    )
    cookies = {"Cookie": "PHPSESSID=shared-session"}
    async with aiohttp.ClientSession() as client:
        shop.state.extra_response_headers = {"X-Shop-Customer": "max@example.com"}
        async with client.get(replicas[0].url("/plain"), headers=cookies) as response:
            assert response.status == 200
        async with client.get(replicas[1].url("/.cc-sidecar/token"), headers=cookies) as response:
            assert (await response.json())["userId"] == "max@example.com"
        shop.state.extra_response_headers = {}
        async with client.get(replicas[2].url("/page/logout"), headers=cookies) as response:
            assert response.status == 200
        async with client.get(replicas[1].url("/.cc-sidecar/token"), headers=cookies) as response:
            assert (await response.json())["isAnonymous"] is True


async def test_restarted_replica_serves_known_customers_without_api_calls(
    shop: Shop, emulator: RunningEmulator, redis_server: RedisProcess, start_replica: StartReplica
) -> None:
    """A replica started after the customers were served (a rolling deploy) makes no user call for them."""
    document = replica_config(shop, emulator, redis_store_config(redis_server))
    first = await start_replica(document)
    customers = [f"known-{n}@example.com" for n in range(5)]
    async with aiohttp.ClientSession() as client:
        for customer in customers:
            await editor_page(client, first, customer)
        await first.stop()
        calls = user_calls(emulator)
        restarted = await start_replica(document)
        for customer in customers:
            assert (await editor_page(client, restarted, customer))["userId"] == customer
    assert user_calls(emulator) == calls


async def test_redis_frozen_killed_and_back_empty_never_costs_a_page_its_token(
    shop: Shop, emulator: RunningEmulator, redis_server: RedisProcess, start_replica: StartReplica
) -> None:
    """Redis stopped (SIGSTOP), then killed, then back empty: every page has its token within the
    API timeout, /readyz stays 200, and the replicas share customers again once Redis returns."""
    replicas = await three_replicas(
        start_replica,
        replica_config(shop, emulator, redis_store_config(redis_server, timeout_s=DEFAULT_STORE_TIMEOUT_S)),
    )
    async with aiohttp.ClientSession() as client:

        async def timed_page(replica: Replica, customer: str) -> dict[str, Any]:
            started = time.monotonic()
            element = await editor_page(client, replica, customer)
            assert time.monotonic() - started < API_TIMEOUT_S
            return element

        await timed_page(replicas[0], "before@example.com")
        redis_server.freeze()
        assert (await timed_page(replicas[1], "frozen@example.com"))["userId"] == "frozen@example.com"
        assert (await timed_page(replicas[2], "before@example.com"))["userId"] == "before@example.com"
        redis_server.kill()
        assert (await timed_page(replicas[0], "killed@example.com"))["userId"] == "killed@example.com"
        for replica in replicas:
            async with client.get(f"http://127.0.0.1:{replica.admin}/readyz") as response:
                assert response.status == 200
        redis_server.start()
        await asyncio.sleep(RETRY_AFTER_S + 0.5)
        before = emulator.state.count(GET_TOKEN)
        tokens = {(await timed_page(replica, "after@example.com"))["token"] for replica in replicas}
    assert emulator.state.count(GET_TOKEN) == before + 1
    assert len(tokens) == 1


async def test_redis_holds_no_readable_token_or_id_and_every_key_expires(
    shop: Shop, emulator: RunningEmulator, redis_server: RedisProcess, start_replica: StartReplica
) -> None:
    """After customers, guests, a login and a remembered session: no id in a key, no JWT part in a
    value, and every key's TTL ends no later than its token's exp."""
    document = replica_config(
        shop,
        emulator,
        redis_store_config(redis_server),
        user={"header": USER_HEADER, "response_header": "X-Shop-Customer"},
    )
    replica = await start_replica(document)
    async with aiohttp.ClientSession() as client:
        element = await editor_page(client, replica, "private@example.com")
        async with client.get(
            replica.url("/editor/mug"), headers={"Cookie": "PHPSESSID=secret-session-id"}
        ) as response:
            guest = element_of(await response.read())
        shop.state.extra_response_headers = {"X-Shop-Customer": "named@example.com"}
        async with client.get(replica.url("/plain"), headers={"Cookie": "PHPSESSID=secret-session-id"}):
            pass
    redis = redis_server.client()
    names = [name.decode() for name in redis.keys("*")]
    assert {name.split(":")[1] for name in names} >= {"customer", "session"}
    fragments = [part for token in (element["token"], guest["token"]) for part in token.split(".")]
    for name in names:
        for secret in ("private@example.com", "named@example.com", guest["userId"], "secret-session-id"):
            assert secret not in name
        value = redis.get(name)
        assert value is not None
        assert b"eyJ" not in value
        assert not any(part.encode() in value for part in fragments)
        ttl_ms = redis.pttl(name)
        assert ttl_ms > 0
        if ":customer:" in name:
            assert (
                time.time() + ttl_ms / 1000
                <= jwt.decode(element["token"], options={"verify_signature": False})["exp"]
            )


async def test_sidecars_follow_a_sentinel_failover(
    shop: Shop, emulator: RunningEmulator, redis_sentinel: SentinelSet, start_replica: StartReplica
) -> None:
    """The master is killed and Sentinel promotes its replica: the sidecars use the new master,
    which already knows the customers stored before the failover."""
    store = {
        "backend": "redis",
        "redis": {
            "url": "redis://mymaster/0",
            "sentinel": {
                "master_name": redis_sentinel.name,
                "addresses": [sentinel.address for sentinel in redis_sentinel.sentinels],
            },
        },
    }
    first, second = await asyncio.gather(
        start_replica(replica_config(shop, emulator, store)),
        start_replica(replica_config(shop, emulator, store)),
    )
    async with aiohttp.ClientSession() as client:
        await editor_page(client, first, "before-failover@example.com")
        with redis_sentinel.master.client() as master:
            assert master.execute_command("WAIT", 1, 2000) == 1  # the replica has it too
        redis_sentinel.master.kill()
        deadline = time.monotonic() + 15
        while redis_sentinel.master_port() != redis_sentinel.replica.port:
            assert time.monotonic() < deadline, "sentinel never promoted the replica"
            await asyncio.sleep(0.1)
        await asyncio.sleep(RETRY_AFTER_S + 0.5)
        before = emulator.state.count(GET_TOKEN)
        await editor_page(client, second, "before-failover@example.com")
        await editor_page(client, first, "after-failover@example.com")
        await editor_page(client, second, "after-failover@example.com")
    assert emulator.state.count(GET_TOKEN) == before + 1
    assert len(redis_sentinel.replica.client().keys("cc-sidecar:customer:*")) == 2


# Customers whose keys must reach every one of the cluster's 3 masters: with keys placed at random,
# one is left without any in 3 * (2/3) ** 48 of runs, about 1 in 10 million.
CLUSTER_CUSTOMERS = 48


async def test_replicas_share_customers_through_a_redis_cluster(
    shop: Shop, emulator: RunningEmulator, redis_cluster: list[RedisProcess], start_replica: StartReplica
) -> None:
    """With cluster: true, 48 customers on all 3 replicas cost 48 GetToken, their keys on every master.

    48, not fewer: key names are HMACs that name the account (the emulator's URL, a new port each
    run), so where each lands is random; with 12 a master got none about one run in 40.
    """
    store = {"backend": "redis", "redis": {"url": redis_cluster[0].url, "cluster": True, "timeout_s": 1.0}}
    document = replica_config(shop, emulator, store)
    # More new customers from this one client than the default burst: the budget is not under test.
    document["budget"] = {"client_burst": CLUSTER_CUSTOMERS, "storefront_per_s": CLUSTER_CUSTOMERS}
    replicas = await three_replicas(start_replica, document)
    customers = [f"cluster-{n}@example.com" for n in range(CLUSTER_CUSTOMERS)]
    async with aiohttp.ClientSession() as client:
        for customer in customers:
            for replica in replicas:
                await editor_page(client, replica, customer)
    assert emulator.state.count(GET_TOKEN) == CLUSTER_CUSTOMERS
    held = [len(node.client().keys("cc-sidecar:customer:*")) for node in redis_cluster]
    assert sum(held) == CLUSTER_CUSTOMERS
    assert all(count > 0 for count in held)


async def test_three_replicas_on_redis_share_the_budget(
    shop: Shop, emulator: RunningEmulator, redis_server: RedisProcess, start_replica: StartReplica
) -> None:
    """Rotating PHPSESSID and replayed guest cookies, 200 requests each spread over three
    replicas on one Redis: at most 20 StorefrontUsers per trick."""
    document = replica_config(shop, emulator, redis_store_config(redis_server))
    # One unit a minute: the refill cannot add one while the test runs; the bound is the burst (20).
    document["budget"] = {"client_per_minute": 1}
    replicas = await three_replicas(start_replica, document)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        for n in range(200):
            replica = replicas[n % 3]
            async with client.get(
                replica.url("/editor/mug"), headers={"Cookie": f"PHPSESSID=r-{n}"}
            ) as response:
                assert response.status == 200
        assert len(emulator.state.users) <= 20
        rotated = len(emulator.state.users)
        emulator.state.users.clear()
        redis_server.client().flushall()  # a fresh budget for the second trick
        cookies = await harvest_guest_cookies(f"http://127.0.0.1:{replicas[0].port}", 200)
        for n, cookie in enumerate(cookies):
            async with client.get(
                replicas[n % 3].url("/.cc-sidecar/token"), headers={"Cookie": cookie}
            ) as response:
                assert response.status in (200, 429)
    assert rotated > 0
    assert 0 < len(emulator.state.users) <= 20


async def test_two_accounts_sharing_redis_secret_and_prefix_never_share_a_token(
    shop: Shop,
    emulator: RunningEmulator,
    redis_server: RedisProcess,
    aiohttp_server: Any,
    make_sidecar: SidecarFactory,
) -> None:
    """Two sidecars of two Customer's Canvas accounts (another API URL and client id, no tenant_id) on
    one Redis with one secret and key_prefix: each customer's token comes from its own account's API."""
    other = await start_emulator(
        aiohttp_server,
        EmulatorOptions(
            enable_control=True, client_id="other-app", client_secret="other-secret", tenant_id=2
        ),
    )
    first_document = replica_config(shop, emulator, redis_store_config(redis_server))
    second_document = replica_config(shop, other, redis_store_config(redis_server))
    second_document["customers_canvas"].update(client_id="other-app", client_secret="other-secret")
    for document in (first_document, second_document):
        # No tenant_id (as issue #22 found it): only the API URL and client id tell the accounts apart.
        del document["customers_canvas"]["tenant_id"]
    first, second = await make_sidecar(first_document), await make_sidecar(second_document)
    tokens = []
    for sidecar in (first, second):
        async with (
            aiohttp.ClientSession() as client,
            client.get(
                sidecar.make_url("/editor/mug"), headers={USER_HEADER: "same@example.com"}
            ) as response,
        ):
            tokens.append(element_of(await response.read())["token"])
    assert emulator.state.count(GET_TOKEN) == other.state.count(GET_TOKEN) == 1
    assert tokens[0] != tokens[1]
