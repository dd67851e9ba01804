"""Isolation: two storefronts in one sidecar never share users or tokens, and no shared cache keeps one.

Storefront "a" (id 1, host a.example) and storefront "b" (id 2, host b.example) sit in one
sidecar in front of one shop, with one emulator (tenant 1) behind both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import BaseTestServer

from proxy.identity import GUEST_COOKIE, GuestKeys
from tests.fixtures.emulator import RunningEmulator
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config
from tests.reliability.helpers import USER_HEADER, Answer, element_of, eventually, fetch

KEYS = GuestKeys("test-secret-0123456789abcdef")  # sidecar_config's secret
GET_TOKEN = "StorefrontUsers_GetToken"
NO_SHARED_CACHE = "private, no-store"


def two_storefronts(shop: Shop, emulator: RunningEmulator, **both: Any) -> dict[str, Any]:
    both.setdefault("trusted_networks", ["127.0.0.1/32"])
    both.setdefault("user", {"header": USER_HEADER})
    document = sidecar_config(shop.url, emulator.url, name="a", storefront_id=1, hosts=["a.example"], **both)
    second = dict(document["storefronts"][0], name="b", storefront_id=2, hosts=["b.example"])
    document["storefronts"].append(second)
    return document


@pytest.fixture
async def sidecar(shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory) -> BaseTestServer:
    return await make_sidecar(two_storefronts(shop, emulator))


async def on(sidecar: BaseTestServer, host: str, path: str = "/editor/mug", **headers: str) -> Answer:
    return await fetch(sidecar, path, headers={"Host": host, **headers})


def guest_cookie(answer: Answer) -> str:
    """The value of the guest cookie a response sets."""
    for header in answer.headers.getall("Set-Cookie", []):
        name, _, rest = header.partition("=")
        if name == GUEST_COOKIE:
            return rest.partition(";")[0]
    raise AssertionError("no guest cookie set")


def storefront_claim(payload: dict[str, Any]) -> int:
    claims = jwt.decode(payload["token"], options={"verify_signature": False})
    assert claims["sub"] == payload["userId"]
    return int(claims["storefront_id"])


async def test_same_session_cookie_gives_each_storefront_its_own_guest(
    sidecar: BaseTestServer, emulator: RunningEmulator
) -> None:
    """One PHPSESSID in both storefronts: two guest ids, each derived for its storefront, each token for its own."""
    a = element_of((await on(sidecar, "a.example", Cookie="PHPSESSID=shared")).body)
    b = element_of((await on(sidecar, "b.example", Cookie="PHPSESSID=shared")).body)
    assert a["userId"] == KEYS.guest_id_for_session(1, "shared")
    assert b["userId"] == KEYS.guest_id_for_session(2, "shared")
    assert a["userId"] != b["userId"]
    assert (a["storefrontId"], storefront_claim(a)) == (1, 1)
    assert (b["storefrontId"], storefront_claim(b)) == (2, 2)
    assert {(sid, uid) for (sid, uid) in emulator.state.users} == {(1, a["userId"]), (2, b["userId"])}


async def test_guest_cookie_of_one_storefront_is_not_valid_in_the_other(sidecar: BaseTestServer) -> None:
    """A's signed guest cookie, brought to B: ignored there (B derives its own guest), and B signs anew."""
    first = await on(sidecar, "a.example", Cookie="PHPSESSID=s-a")
    a_cookie = guest_cookie(first)
    assert KEYS.verify(1, a_cookie) == element_of(first.body)["userId"]
    assert KEYS.verify(2, a_cookie) is None

    at_b = await on(sidecar, "b.example", Cookie=f"PHPSESSID=s-b; {GUEST_COOKIE}={a_cookie}")
    assert element_of(at_b.body)["userId"] == KEYS.guest_id_for_session(2, "s-b")
    assert KEYS.verify(2, guest_cookie(at_b)) == KEYS.guest_id_for_session(2, "s-b")

    renewal = await on(sidecar, "b.example", "/.cc-sidecar/token", Cookie=f"{GUEST_COOKIE}={a_cookie}")
    assert renewal.status == 200
    renewed = json.loads(renewal.body)
    assert (renewed["storefrontId"], renewed["isAnonymous"]) == (2, True)
    assert renewed["userId"] != element_of(first.body)["userId"]


async def test_login_at_one_storefront_never_merges_the_other_storefronts_guest(
    sidecar: BaseTestServer, emulator: RunningEmulator
) -> None:
    """A's guest cookie on a login at B: no MergeAnonymous (the cookie is not B's); at A it merges once."""
    a_cookie = guest_cookie(await on(sidecar, "a.example", Cookie="PHPSESSID=before"))
    await on(sidecar, "b.example", "/plain", Cookie=f"{GUEST_COOKIE}={a_cookie}", **{USER_HEADER: "jane"})
    assert emulator.state.count("StorefrontUsers_MergeAnonymous") == 0
    await on(sidecar, "a.example", "/plain", Cookie=f"{GUEST_COOKIE}={a_cookie}", **{USER_HEADER: "jane"})
    merges = emulator.state.calls_of("StorefrontUsers_MergeAnonymous")
    assert len(merges) == 1
    assert merges[0].query["storefrontId"] == "1"


async def test_one_customer_id_in_two_storefronts_has_two_tokens_cached_apart(
    sidecar: BaseTestServer, emulator: RunningEmulator
) -> None:
    """The same customer id at A and B: two GetTokens (one per storefront, tenant 1), then both cached."""
    a = element_of((await on(sidecar, "a.example", **{USER_HEADER: "john"})).body)
    b = element_of((await on(sidecar, "b.example", **{USER_HEADER: "john"})).body)
    assert (a["userId"], b["userId"]) == ("john", "john")
    assert a["token"] != b["token"]
    assert (storefront_claim(a), storefront_claim(b)) == (1, 2)
    calls = emulator.state.calls_of(GET_TOKEN)
    assert [(call.query["storefrontId"], call.query["tenantId"]) for call in calls] == [
        ("1", "1"),
        ("2", "1"),
    ]
    again_a = element_of((await on(sidecar, "a.example", **{USER_HEADER: "john"})).body)
    again_b = element_of((await on(sidecar, "b.example", **{USER_HEADER: "john"})).body)
    assert (again_a["token"], again_b["token"]) == (a["token"], b["token"])
    assert emulator.state.count(GET_TOKEN) == 2


async def test_unknown_host_reaches_neither_storefront(sidecar: BaseTestServer, shop: Shop) -> None:
    """With two storefronts a Host that names neither gets 421, not the first storefront."""
    answer = await on(sidecar, "c.example", **{USER_HEADER: "john"})
    assert answer.status == 421
    assert shop.state.requests == []


# -- Cache-Control ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["html", "header", "cookie"])
async def test_every_response_carrying_a_token_is_private_no_store(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory, mode: str
) -> None:
    """Each inject mode: the shop's public caching is replaced by private, no-store (and Expires dropped)."""
    shop.state.extra_response_headers = {
        "Cache-Control": "public, max-age=600",
        "Expires": "Wed, 21 Oct 2099 07:28:00 GMT",
    }
    sidecar = await make_sidecar(
        sidecar_config(
            shop.url,
            emulator.url,
            trusted_networks=["127.0.0.1/32"],
            user={"header": USER_HEADER},
            inject=[mode],
        )
    )
    answer = await fetch(sidecar, "/editor/mug", headers={USER_HEADER: "cached-nowhere"})
    carries = {
        "html": b"cc-storefront-user" in answer.body,
        "header": "X-CC-User-Token" in answer.headers,
        "cookie": "cc_user_token=" in " ".join(answer.headers.getall("Set-Cookie", [])),
    }
    assert carries == {name: name == mode for name in carries}
    assert answer.headers.getall("Cache-Control") == [NO_SHARED_CACHE]
    assert "Expires" not in answer.headers

    renewal = await fetch(sidecar, "/.cc-sidecar/token", headers={USER_HEADER: "cached-nowhere"})
    assert renewal.status == 200
    assert renewal.headers.getall("Cache-Control") == ["no-store"]

    plain = await fetch(sidecar, "/plain", headers={USER_HEADER: "cached-nowhere"})
    assert plain.headers.getall("Cache-Control") == ["public, max-age=600"]
    assert "X-CC-User-Token" not in plain.headers


async def test_guest_cookie_set_only_with_a_token_and_only_httponly(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """The guest cookie goes out only on a response that carries a token, HttpOnly and SameSite=Lax."""
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url))
    plain = await fetch(sidecar, "/plain", headers={"Cookie": "PHPSESSID=s"})
    assert plain.headers.getall("Set-Cookie", []) == []
    editor = await fetch(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=s"})
    [cookie] = [c for c in editor.headers.getall("Set-Cookie") if c.startswith(GUEST_COOKIE + "=")]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http from an untrusted peer
    assert editor.headers["Cache-Control"] == NO_SHARED_CACHE


async def test_tokens_and_session_ids_never_reach_a_log_record(
    shop: Shop,
    emulator: RunningEmulator,
    make_sidecar: SidecarFactory,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """Every logger at DEBUG, access log on, all modes, renewal, login and a failure: no token or session id logged."""
    caplog.set_level(logging.DEBUG)
    access_log = tmp_path / "access.log"
    document = sidecar_config(
        shop.url,
        emulator.url,
        trusted_networks=["127.0.0.1/32"],
        user={"header": USER_HEADER},
        inject=["html", "header", "cookie"],
    )
    document.update(access_log=True, access_log_path=str(access_log))
    sidecar = await make_sidecar(document)
    tokens = []
    for headers in ({USER_HEADER: "logged@example.com"}, {"Cookie": "PHPSESSID=secret-session-value"}):
        answer = await fetch(sidecar, "/editor/mug", headers=headers)
        tokens.append(element_of(answer.body)["token"])
        renewal = await fetch(sidecar, "/.cc-sidecar/token", headers=headers)
        tokens.append(json.loads(renewal.body)["token"])
    guest = guest_cookie(
        await fetch(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=secret-session-value"})
    )
    await fetch(
        sidecar, "/plain", headers={USER_HEADER: "logged@example.com", "Cookie": f"{GUEST_COOKIE}={guest}"}
    )
    emulator.state.faults.token_text = "eyJhbGciOiJIUzI1NiJ9.not-json.leaked-token-text"
    await fetch(sidecar, "/editor/mug", headers={USER_HEADER: "another@example.com"})

    async def every_request_logged() -> bool:
        return access_log.read_text().count("\n") == 7

    await eventually(every_request_logged)
    secrets = [*tokens, "secret-session-value", "leaked-token-text", guest.rpartition(".")[2], "demo-secret"]
    for record in caplog.records:
        text = record.getMessage() + " " + json.dumps(vars(record), default=str)
        for secret in secrets:
            assert secret not in text, (record.name, record.getMessage())
    for line in access_log.read_text().splitlines():
        for secret in secrets:
            assert secret not in line, line


@pytest.mark.parametrize("session_check", [False, True])
async def test_token_cookie_the_browser_sends_back_never_goes_upstream(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory, session_check: bool
) -> None:
    """Cookie mode: the browser returns cc_user_token with every request; the shop (and its session check) never gets it."""
    user = {"session_check": {"url": "/account/whoami", "id_field": "customer.id"}} if session_check else {}
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url, inject=["cookie"], user=user))
    shop.state.logins["s1"] = "whoami-customer"
    first = await fetch(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=s1"})
    [token_cookie] = [c for c in first.headers.getall("Set-Cookie") if c.startswith("cc_user_token=")]
    token = token_cookie.partition("=")[2].partition(";")[0]
    assert len(token) > 100
    shop.state.requests.clear()

    await fetch(sidecar, "/plain", headers={"Cookie": f"PHPSESSID=s1; cc_user_token={token}; other=1"})
    await fetch(sidecar, "/editor/mug", headers={"Cookie": f"cc_user_token={token}; PHPSESSID=s2"})
    await fetch(sidecar, "/plain", headers={"Cookie": f"cc_user_token={token}"})
    assert len(shop.state.requests) >= 3
    for seen in shop.state.requests:
        assert token not in json.dumps(seen.headers)
    assert shop.state.requests[0].headers["Cookie"] == ["PHPSESSID=s1; other=1"]
    assert "Cookie" not in shop.state.requests[-1].headers
