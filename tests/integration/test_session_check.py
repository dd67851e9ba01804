"""The session check reaches the shop as the page did: a strict shop, and answers that name nobody."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import BaseTestServer

from proxy.metrics import Metrics
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config

ELEMENT = re.compile(rb'<script id="cc-storefront-user" type="application/json">(.*?)</script>', re.S)
PUBLIC_HOST = "shop.example.com"
# What the TLS ingress in front of the sidecar sends with every browser request.
FROM_INGRESS = {"Host": PUBLIC_HOST, "X-Forwarded-Proto": "https"}


class Clock:
    """Time that a test moves by hand (the warnings' rate limit is judged against it)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def strict_shop(shop: Shop) -> Shop:
    """The fake shop with a host allow-list, behind a TLS ingress; session s1 is kim's."""
    shop.state.public_host = PUBLIC_HOST
    shop.state.logins["s1"] = "kim@example.com"
    return shop


async def start(
    make_sidecar: SidecarFactory,
    shop: Shop,
    emulator: Any,
    *,
    metrics: Metrics | None = None,
    clock: Clock | None = None,
    id_field: str = "customer.id",
    trusted: bool = True,
) -> BaseTestServer:
    document = sidecar_config(
        shop.url,
        emulator.url,
        trusted_networks=["127.0.0.1/32"] if trusted else [],
        user={"session_check": {"url": "/account/whoami", "id_field": id_field}},
    )
    if clock is None:
        return await make_sidecar(document, metrics=metrics)
    return await make_sidecar(document, clock=clock, metrics=metrics)


async def editor_page(sidecar: BaseTestServer, session: str, **extra: str) -> dict[str, Any]:
    """The element of the editor page a browser with this shop session gets through the ingress."""
    headers = {**FROM_INGRESS, "Cookie": f"PHPSESSID={session}", **extra}
    async with (
        aiohttp.ClientSession() as client,
        client.get(sidecar.make_url("/editor/mug"), headers=headers, allow_redirects=False) as response,
    ):
        assert response.status == 200
        [found] = ELEMENT.findall(await response.read())
        payload: dict[str, Any] = json.loads(found)
        return payload


def checks(shop: Shop) -> list[Any]:
    return [r for r in shop.state.requests if r.path_qs == "/account/whoami"]


def outcomes(metrics: Metrics) -> dict[str, float]:
    """cc_sidecar_session_checks_total of storefront main, by outcome (zeros left out)."""
    found = {}
    for metric in metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "cc_sidecar_session_checks_total" and sample.labels["storefront"] == "main":
                found[sample.labels["outcome"]] = sample.value
    return found


async def test_a_strict_shop_recognises_its_logged_in_customer(
    strict_shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """Behind an ingress, a shop that allows one Host and redirects plain http names its customer."""
    metrics = Metrics()
    sidecar = await start(make_sidecar, strict_shop, emulator, metrics=metrics)
    payload = await editor_page(sidecar, "s1")
    assert (payload["userId"], payload["isAnonymous"]) == ("kim@example.com", False)
    assert outcomes(metrics) == {"customer": 1}


async def test_the_check_carries_the_pages_host_forwarded_headers_and_cookies(
    strict_shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """The check goes with the page's Host, X-Forwarded-*, User-Agent, and the cookies less the sidecar's."""
    sidecar = await start(make_sidecar, strict_shop, emulator)
    await editor_page(
        sidecar,
        "s1; csrftoken=c1; cc_user_token=SECRET-TOKEN; cc_sidecar_guest=anon-x.sig",
        **{"X-Forwarded-For": "203.0.113.7", "User-Agent": "Browser/1.0"},
    )
    [page] = [r for r in strict_shop.state.requests if r.path_qs == "/editor/mug"]
    [check] = checks(strict_shop)
    for name in ("Host", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "User-Agent"):
        assert check.headers[name] == page.headers[name]
    assert check.headers["Host"] == [PUBLIC_HOST]
    assert check.headers["X-Forwarded-For"] == ["203.0.113.7, 127.0.0.1"]
    assert check.headers["X-Forwarded-Proto"] == ["https"]
    assert check.headers["Cookie"] == ["PHPSESSID=s1; csrftoken=c1"]
    assert check.headers["Accept"] == ["application/json"]


async def test_a_trusted_hops_underscored_proto_and_other_forwarded_headers_reach_the_check(
    strict_shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """``X_Forwarded_Proto: https`` from the ingress goes as X-Forwarded-Proto, and -Port and -Prefix go with the check."""
    sidecar = await start(make_sidecar, strict_shop, emulator)
    headers = {
        "Host": PUBLIC_HOST,
        "X_Forwarded_Proto": "https",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Prefix": "/shop",
        "Cookie": "PHPSESSID=s1",
    }
    async with (
        aiohttp.ClientSession() as client,
        client.get(sidecar.make_url("/editor/mug"), headers=headers, allow_redirects=False) as response,
    ):
        assert response.status == 200
        [found] = ELEMENT.findall(await response.read())
    assert json.loads(found)["userId"] == "kim@example.com"
    [check] = checks(strict_shop)
    assert check.headers["X-Forwarded-Proto"] == ["https"]
    assert check.headers["X-Forwarded-Port"] == ["443"]
    assert check.headers["X-Forwarded-Prefix"] == ["/shop"]


async def test_an_untrusted_peers_forwarded_proto_is_replaced_in_the_check_too(
    strict_shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """From outside trusted_networks X-Forwarded-Proto is the sidecar's own (http), as for pages."""
    sidecar = await start(make_sidecar, strict_shop, emulator, trusted=False)
    headers = {**FROM_INGRESS, "Cookie": "PHPSESSID=s1"}
    async with (
        aiohttp.ClientSession() as client,
        client.get(sidecar.make_url("/editor/mug"), headers=headers, allow_redirects=False) as response,
    ):
        assert response.status == 301  # the shop's own answer to the page
    [check] = checks(strict_shop)
    assert check.headers["X-Forwarded-Proto"] == ["http"]
    assert check.headers["X-Forwarded-For"] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("knob", "outcome", "warning"),
    [
        (
            {"whoami_status": 500},
            "bad_status",
            "session check answered HTTP 500, neither a customer (2xx with JSON) nor a guest (401 or 403); "
            "treating the request as a guest's",
        ),
        (
            {"whoami_status": 301},
            "bad_status",
            "session check answered HTTP 301, neither a customer (2xx with JSON) nor a guest (401 or 403); "
            "treating the request as a guest's",
        ),
        (
            {"id_field": "user.id"},
            "missing_field",
            "session check's JSON has no user.id (id_field); treating the request as a guest's",
        ),
    ],
    ids=["500", "301", "wrong-id-field"],
)
async def test_an_answer_naming_nobody_makes_guests_counted_and_warned_once_a_minute(
    strict_shop: Shop,
    emulator: Any,
    make_sidecar: SidecarFactory,
    caplog: pytest.LogCaptureFixture,
    knob: dict[str, Any],
    outcome: str,
    warning: str,
) -> None:
    """A 500, a 301 or a wrong id_field: each customer is a guest, each check counted, one warning a minute."""
    metrics = Metrics()
    clock = Clock()
    if "whoami_status" in knob:
        strict_shop.state.whoami_status = knob["whoami_status"]
    for session in ("s1", "s2", "s3"):
        strict_shop.state.logins[session] = f"{session}@example.com"
    sidecar = await start(
        make_sidecar,
        strict_shop,
        emulator,
        metrics=metrics,
        clock=clock,
        id_field=knob.get("id_field", "customer.id"),
    )
    with caplog.at_level(logging.WARNING, logger="proxy.identity"):
        first = await editor_page(sidecar, "s1")
        await editor_page(sidecar, "s2")
        clock.now += 61
        await editor_page(sidecar, "s3")
    assert first["isAnonymous"] is True
    assert first["userId"].startswith("anon-")
    assert outcomes(metrics) == {outcome: 3}
    warnings = [r.getMessage() for r in caplog.records if r.name == "proxy.identity"]
    assert warnings == [warning, warning]


async def test_a_guests_401_is_a_guest_without_a_warning(
    strict_shop: Shop, emulator: Any, make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The shop's 401 for a session nobody logged in on is a guest: counted as such, nothing logged."""
    metrics = Metrics()
    sidecar = await start(make_sidecar, strict_shop, emulator, metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="proxy.identity"):
        payload = await editor_page(sidecar, "nobody-logged-in")
    assert payload["isAnonymous"] is True
    assert outcomes(metrics) == {"guest": 1}
    assert [r for r in caplog.records if r.name == "proxy.identity"] == []


async def test_a_latin1_byte_in_the_pages_headers_still_reaches_the_check(
    strict_shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A Latin-1 byte in the browser's User-Agent and cookies does not break the check: kim is kim."""
    sidecar = await start(make_sidecar, strict_shop, emulator)
    url = sidecar.make_url("/editor/mug")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        b"GET /editor/mug HTTP/1.1\r\nHost: shop.example.com\r\nX-Forwarded-Proto: https\r\n"
        b"User-Agent: caf\xe9\r\nCookie: PHPSESSID=s1; x=caf\xe9\r\nConnection: close\r\n\r\n"
    )
    try:
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    [found] = ELEMENT.findall(answer)
    assert json.loads(found)["userId"] == "kim@example.com"
    [check] = checks(strict_shop)
    # aiohttp's client leaves out what is not UTF-8; the session cookie is all the check needs.
    assert check.headers["Cookie"][0].startswith("PHPSESSID=s1; x=caf")
