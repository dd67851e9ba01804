"""What one client can cost Customer's Canvas: the minting tricks of issue #22, end to end.

Each trick sends 200 requests from one client; at most 20 new StorefrontUsers may come of them
(the default burst). The tests set ``budget.client_per_minute: 1`` so the bucket's refill (one
unit every 3 s by default) cannot add a unit while a slow machine runs them: the bound tested is
the burst, which is the default's.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from proxy.identity import GUEST_COOKIE
from proxy.metrics import Metrics
from tests.fixtures.emulator import RunningEmulator
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config
from tests.integration.test_tokens_e2e import Clock, element_of, get, guest_cookie_value

USER_HEADER = "X-Shop-User"
TOKEN = "/.cc-sidecar/token"
# The bound of every trick: the default client_burst.
MOST_USERS = 20


def config(shop: Shop, emulator: RunningEmulator, **budget: Any) -> dict[str, Any]:
    document = sidecar_config(
        shop.url, emulator.url, trusted_networks=["127.0.0.1/32"], user={"header": USER_HEADER}
    )
    document["budget"] = {"client_per_minute": 1, **budget}
    return document


async def harvest_guest_cookies(url: str, count: int) -> list[str]:
    """Valid guest cookies, free for the asking: cookie-less requests to the token endpoint."""
    cookies = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        for _ in range(count):
            async with client.get(url + TOKEN) as response:
                line = next(c for c in response.headers.getall("Set-Cookie") if c.startswith(GUEST_COOKIE))
                cookies.append(line.split(";", 1)[0])
    return cookies


async def test_rotating_phpsessid_makes_at_most_20_users(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """200 editor pages, each with a new PHPSESSID: at most 20 StorefrontUsers; the pages past the
    budget go without a token, marked token-deferred, and are counted."""
    metrics = Metrics()
    sidecar = await make_sidecar(config(shop, emulator), metrics=metrics)
    marks = []
    for n in range(200):
        response, body = await get(sidecar, "/editor/mug", headers={"Cookie": f"PHPSESSID=rotated-{n}"})
        assert response.status == 200
        marks.append(response.headers.get("X-CC-Sidecar"))
        if marks[-1] == "token-deferred":
            assert b"cc-storefront-user" not in body
            assert response.headers["Cache-Control"] == "private, no-store"
    assert emulator.state.count("StorefrontUsers_Create") == len(emulator.state.users) <= MOST_USERS
    assert marks.count(None) == len(emulator.state.users)
    assert marks.count("token-deferred") == 200 - len(emulator.state.users)
    assert metrics.registry.get_sample_value(
        "cc_sidecar_budget_exceeded_total", {"storefront": "main", "scope": "client"}
    ) == marks.count("token-deferred")


async def test_replayed_harvested_guest_cookies_make_at_most_20_users(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """200 guest cookies harvested for free, each brought back once to the token endpoint: at most
    20 StorefrontUsers; the rest answered 429 with Retry-After, no-store, nosniff."""
    sidecar = await make_sidecar(config(shop, emulator))
    url = str(sidecar.make_url("")).rstrip("/")
    statuses = []
    for cookie in await harvest_guest_cookies(url, 200):
        response, body = await get(sidecar, TOKEN, headers={"Cookie": cookie})
        statuses.append(response.status)
        if response.status == 429:
            assert 1 <= int(response.headers["Retry-After"]) <= 60
            assert response.headers["X-CC-Sidecar"] == "token-deferred"
            assert response.headers["Cache-Control"] == "no-store"
        else:
            assert json.loads(body)["token"]
    assert len(emulator.state.users) <= MOST_USERS
    assert statuses.count(200) == len(emulator.state.users)
    assert statuses.count(429) == 200 - len(emulator.state.users)


async def test_a_cached_customer_is_never_charged(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """A guest with a token keeps getting it on every page while the same client is over budget."""
    sidecar = await make_sidecar(config(shop, emulator))
    _, body = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=real"})
    token = element_of(body)["token"]
    for n in range(40):
        minted, _ = await get(sidecar, "/editor/mug", headers={"Cookie": f"PHPSESSID=mint-{n}"})
    assert minted.headers["X-CC-Sidecar"] == "token-deferred"
    response, body = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=real"})
    assert "X-CC-Sidecar" not in response.headers
    assert element_of(body)["token"] == token


async def test_one_client_over_budget_leaves_other_clients_theirs(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Clients are told apart by X-Forwarded-For from the trusted ingress: the one minting users is
    held back, a new customer behind the same ingress still gets a token."""
    sidecar = await make_sidecar(config(shop, emulator, storefront_per_s=1000))
    for n in range(40):
        await get(
            sidecar,
            "/editor/mug",
            headers={"Cookie": f"PHPSESSID=mint-{n}", "X-Forwarded-For": "203.0.113.66"},
        )
    assert len(emulator.state.users) == MOST_USERS
    _, body = await get(
        sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=someone", "X-Forwarded-For": "198.51.100.7"}
    )
    assert element_of(body)["token"]


async def test_a_login_over_budget_keeps_its_guest_cookie_and_merges_later(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """A merge past the budget is deferred: no MergeAnonymous, the guest cookie stays."""
    sidecar = await make_sidecar(config(shop, emulator, client_burst=1))
    response, _ = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=before"})
    guest = f"{GUEST_COOKIE}={guest_cookie_value(response)}"
    response, _ = await get(
        sidecar, "/plain", headers={USER_HEADER: "ann@example.com", "Cookie": f"PHPSESSID=after; {guest}"}
    )
    assert response.status == 200
    assert not [c for c in response.headers.getall("Set-Cookie", []) if c.startswith(GUEST_COOKIE)]
    assert emulator.state.count("StorefrontUsers_MergeAnonymous") == 0


async def test_known_customers_renewals_do_not_wait_behind_new_ones(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """150 new customers at once whose Create takes 3 s (more than the API client's 100
    connections): a known customer's renewal (GetToken alone) is served within 1.5 s."""
    clock = Clock()
    document = config(shop, emulator, client_burst=1000, storefront_per_s=1000)
    document["customers_canvas"]["timeout_s"] = 5
    sidecar = await make_sidecar(document, clock=clock)
    _, body = await get(sidecar, "/editor/mug", headers={USER_HEADER: "known@example.com"})
    assert element_of(body)["token"]
    clock.now += 3600  # the known customer's token is stale: the next page needs a GetToken
    emulator.state.delay(3.0, operations=["StorefrontUsers_Create"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def new_customer(n: int) -> None:
            # Each from an address of its own: one client's pages would wait for each other.
            headers = {USER_HEADER: f"new-{n}@example.com", "X-Forwarded-For": f"198.51.100.{n}"}
            async with client.get(sidecar.make_url("/editor/mug"), headers=headers) as response:
                await response.read()

        flood = [asyncio.create_task(new_customer(n)) for n in range(150)]
        while emulator.state.count("StorefrontUsers_Create") < 1 + 16:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # time for every Create the sidecar lets through to be sent
        started = time.monotonic()
        async with client.get(
            sidecar.make_url("/editor/mug"), headers={USER_HEADER: "known@example.com"}
        ) as page:
            body = await page.read()
        elapsed = time.monotonic() - started
        await asyncio.gather(*flood)
    assert element_of(body)["token"]
    assert elapsed < 1.5


async def test_one_clients_editor_pages_are_worked_on_a_few_at_a_time(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """12 editor pages of one client at once, budget.client_pages_at_once 3, a shop taking 0.3 s: the
    shop never has more than 3 of them at a time, every page gets its token, and another client's
    page, asked for after all 12, reaches the shop before the first client's last one does."""
    document = config(shop, emulator, client_burst=1000, client_pages_at_once=3)
    sidecar = await make_sidecar(document)
    shop.state.delay_s = 0.3
    flood = "198.51.100.40"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def page(user: str, address: str) -> bytes:
            headers = {USER_HEADER: user, "X-Forwarded-For": address}
            async with client.get(sidecar.make_url("/editor/mug"), headers=headers) as response:
                assert response.status == 200
                return await response.read()

        pages = [asyncio.create_task(page(f"flood-{n}@example.com", flood)) for n in range(12)]
        while shop.state.in_flight.get(flood, 0) < 3:
            await asyncio.sleep(0.01)
        other = await page("other@example.com", "203.0.113.9")
        bodies = await asyncio.gather(*pages)
    assert shop.state.most_in_flight[flood] == 3
    assert all(element_of(body)["token"] for body in [*bodies, other])
    arrivals = [r.headers["X-Forwarded-For"][0].split(",")[0] for r in shop.state.requests]
    assert arrivals.index("203.0.113.9") < len(arrivals) - 1 - arrivals[::-1].index(flood)


async def test_a_page_past_its_clients_wait_is_a_503_with_retry_after(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """One page at a time, a 0.3 s wait, a shop taking 0.8 s: the client's second page is a 503 with
    Retry-After that never reaches the shop."""
    sidecar = await make_sidecar(config(shop, emulator, client_pages_at_once=1, client_wait_s=0.3))
    shop.state.delay_s = 0.8
    headers = {USER_HEADER: "busy@example.com", "X-Forwarded-For": "198.51.100.50"}
    first = asyncio.create_task(get(sidecar, "/editor/mug", headers=headers))
    while shop.state.in_flight.get("198.51.100.50", 0) < 1:
        await asyncio.sleep(0.01)
    response, _ = await get(sidecar, "/editor/mug", headers=headers)
    assert (response.status, response.headers["Retry-After"], response.headers["Cache-Control"]) == (
        503,
        "1",
        "no-store",
    )
    assert (await first)[0].status == 200
    assert len([r for r in shop.state.requests if r.path_qs == "/editor/mug"]) == 1


async def test_a_page_whose_client_left_while_it_waited_never_reaches_the_shop(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """A page queued behind its client's first, its connection closed meanwhile: when its turn
    comes it is dropped (499), with no shop request and no token work for it."""
    sidecar = await make_sidecar(config(shop, emulator, client_pages_at_once=1))
    shop.state.delay_s = 0.5
    headers = {USER_HEADER: "first@example.com", "X-Forwarded-For": "198.51.100.60"}
    first = asyncio.create_task(get(sidecar, "/editor/mug", headers=headers))
    while shop.state.in_flight.get("198.51.100.60", 0) < 1:
        await asyncio.sleep(0.01)
    _, writer = await asyncio.open_connection(sidecar.host, sidecar.port)
    writer.write(
        b"GET /editor/mug HTTP/1.1\r\nHost: shop.test\r\nX-Shop-User: left@example.com\r\n"
        b"X-Forwarded-For: 198.51.100.60\r\n\r\n"
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    assert (await first)[0].status == 200
    await asyncio.sleep(0.3)  # the queued page's turn has come and gone
    assert [r.headers[USER_HEADER] for r in shop.state.requests] == [["first@example.com"]]
    assert emulator.state.count("StorefrontUsers_Create") == 1
