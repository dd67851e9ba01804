"""Customers and their tokens end to end: fake shop, sidecar and the Storefront API emulator."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
import zlib
from collections.abc import Callable
from typing import Any

import aiohttp
import brotli
import jwt
import pytest

from proxy.emulator import EmulatorOptions
from proxy.identity import GUEST_COOKIE
from proxy.metrics import Metrics
from tests.fixtures.emulator import start_emulator
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config

ELEMENT = re.compile(rb'<script id="cc-storefront-user" type="application/json">(.*?)</script>', re.S)
USER_HEADER = "X-Shop-User"


class Clock:
    """Wall-clock time that a test moves by hand (token expiry is judged against it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def element_of(body: bytes) -> dict[str, Any]:
    found = ELEMENT.findall(body)
    assert len(found) == 1, f"expected exactly one element, found {len(found)}"
    payload: dict[str, Any] = json.loads(found[0])
    return payload


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def guest_cookie_lines(response: aiohttp.ClientResponse) -> list[str]:
    """The response's Set-Cookie lines for the sidecar's guest cookie."""
    return [c for c in response.headers.getall("Set-Cookie", []) if c.startswith(GUEST_COOKIE + "=")]


def config(shop: Shop, emulator: Any, **storefront: Any) -> dict[str, Any]:
    storefront.setdefault("trusted_networks", ["127.0.0.1/32"])
    storefront.setdefault("user", {"header": USER_HEADER})
    return sidecar_config(shop.url, emulator.url, **storefront)


async def get(server: Any, path: str, **kwargs: Any) -> tuple[aiohttp.ClientResponse, bytes]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(server.make_url(path), allow_redirects=False, **kwargs) as response,
    ):
        return response, await response.read()


async def test_guest_gets_the_element_with_a_token_issued_for_them(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A guest's editor page carries one element whose token the emulator issued for that anon- user."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, body = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=session-one"})
    assert response.status == 200
    payload = element_of(body)
    assert payload["storefrontId"] == 1
    assert payload["userId"].startswith("anon-")
    assert payload["isAnonymous"] is True
    assert payload["tokenUrl"] == "/.cc-sidecar/token"
    token_claims = claims(payload["token"])
    assert token_claims["sub"] == payload["userId"]
    assert payload["expiresAt"] == token_claims["exp"]
    assert response.headers["Cache-Control"] == "private, no-store"
    assert "ETag" not in response.headers
    assert "Last-Modified" not in response.headers
    assert response.headers.get("Content-Length", str(len(body))) == str(len(body))
    assert any("HttpOnly" in c for c in guest_cookie_lines(response))
    assert emulator.state.count("StorefrontUsers_GetToken") == 1


async def test_logged_in_customer_gets_their_own_token(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """The trusted identity header names the customer; the element is theirs and not anonymous."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, body = await get(sidecar, "/editor/mug", headers={USER_HEADER: "john@wood.com"})
    payload = element_of(body)
    assert (payload["userId"], payload["isAnonymous"]) == ("john@wood.com", False)
    assert claims(payload["token"])["sub"] == "john@wood.com"
    assert shop.state.header(USER_HEADER) == ["john@wood.com"]
    assert guest_cookie_lines(response) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/plain"),
        ("POST", "/editor/mug"),
        ("GET", "/editor/mug/deeper"),
        ("HEAD", "/editor/mug"),
    ],
)
async def test_non_editor_requests_get_nothing(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory, method: str, path: str
) -> None:
    """Other paths, other methods: no element, no token headers, no API call."""
    sidecar = await make_sidecar(config(shop, emulator, inject=["html", "header", "cookie"]))
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, sidecar.make_url(path)) as response,
    ):
        body = await response.read()
        assert b"cc-storefront-user" not in body
        assert "X-CC-User-Token" not in response.headers
        assert "cc_user_token" not in " ".join(response.headers.getall("Set-Cookie", []))
    assert emulator.state.calls == []


async def test_editor_404_gets_nothing(shop: Shop, emulator: Any, make_sidecar: SidecarFactory) -> None:
    """An editor path the shop answers 404 is passed through as the shop sent it, without a token."""
    sidecar = await make_sidecar(
        config(shop, emulator, editor_paths=["/notfound/*"], inject=["html", "header"])
    )
    response, body = await get(sidecar, "/notfound/page")
    assert response.status == 404
    assert body == b"<html><head></head><body>no such page</body></html>"
    assert "X-CC-User-Token" not in response.headers
    assert "X-CC-Sidecar" not in response.headers


async def test_200_concurrent_first_requests_make_one_chain_of_calls(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """One new customer, 200 requests at once: one GetToken, at most one Get and one Create."""
    sidecar = await make_sidecar(config(shop, emulator))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

        async def one() -> str:
            async with client.get(
                sidecar.make_url("/editor/mug"), headers={USER_HEADER: "crowd@example.com"}
            ) as response:
                return str(element_of(await response.read())["token"])

        tokens = await asyncio.gather(*(one() for _ in range(200)))
    assert len(set(tokens)) == 1
    assert emulator.state.count("StorefrontUsers_GetToken") == 1
    assert emulator.state.count("StorefrontUsers_Get") <= 1
    assert emulator.state.count("StorefrontUsers_Create") <= 1


async def test_cached_token_until_its_renewal_point_then_one_renewal_behind_the_page(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """No call before renewIn; the page at renewIn gets the current token and one GetToken runs behind it."""
    clock = Clock()
    emulator.state.clock = clock  # the emulator signs exp with the same moved time
    sidecar = await make_sidecar(config(shop, emulator), clock=clock)
    headers = {USER_HEADER: "clocked@example.com"}
    started = clock.now
    _, body = await get(sidecar, "/editor/mug", headers=headers)
    first = element_of(body)
    for _ in range(5):
        await get(sidecar, "/editor/mug", headers=headers)
    assert emulator.state.count("StorefrontUsers_GetToken") == 1
    # 1-hour tokens, min_token_ttl_s 1800: handed out with at least half their life left.
    assert 1790 <= first["renewIn"] < 1800
    clock.now = started + first["renewIn"] - 1
    _, body = await get(sidecar, "/editor/mug", headers=headers)
    assert element_of(body)["token"] == first["token"]
    assert emulator.state.count("StorefrontUsers_GetToken") == 1
    clock.now = started + first["renewIn"]
    _, body = await get(sidecar, "/editor/mug", headers=headers)
    served = element_of(body)
    assert (served["token"], served["renewIn"]) == (first["token"], 0)
    assert served["expiresIn"] >= 1800
    for _ in range(100):
        if emulator.state.count("StorefrontUsers_GetToken") == 2:
            break
        await asyncio.sleep(0.01)
    _, body = await get(sidecar, "/editor/mug", headers=headers)
    renewed = element_of(body)
    assert renewed["token"] != first["token"]
    assert renewed["expiresIn"] in (3599, 3600)
    assert emulator.state.count("StorefrontUsers_GetToken") == 2


async def test_token_endpoint_at_renew_in_answers_with_a_newer_token(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """tokenUrl asked renewIn seconds after the page answers with a different, full-lifetime token."""
    clock = Clock()
    emulator.state.clock = clock
    sidecar = await make_sidecar(config(shop, emulator), clock=clock)
    headers = {USER_HEADER: "renewing@example.com"}
    started = clock.now
    _, body = await get(sidecar, "/editor/mug", headers=headers)
    first = element_of(body)
    clock.now = started + first["renewIn"]
    response, body = await get(sidecar, "/.cc-sidecar/token", headers=headers)
    newer = json.loads(body)
    assert response.status == 200
    assert newer["token"] != first["token"]
    assert newer["expiresIn"] in (3599, 3600)
    assert newer["renewIn"] > 1700
    assert emulator.state.count("StorefrontUsers_GetToken") == 2


@pytest.mark.parametrize(
    "spelling", ["X-Shop-User", "x-shop-user", "X-SHOP-USER", "X_Shop_User", "x_shop-user"]
)
async def test_identity_header_from_untrusted_peer_is_stripped(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory, spelling: str
) -> None:
    """From outside trusted_networks no spelling of the identity header is believed or forwarded."""
    sidecar = await make_sidecar(config(shop, emulator, trusted_networks=["10.0.0.0/8"]))
    _, body = await get(
        sidecar, "/editor/mug", headers={spelling: "victim@example.com", "Cookie": "PHPSESSID=s"}
    )
    payload = element_of(body)
    assert payload["isAnonymous"] is True
    assert payload["userId"] != "victim@example.com"
    seen = {name.lower().replace("_", "-") for name in shop.state.last().headers}
    assert "x-shop-user" not in seen
    assert all("victim" not in json.dumps(call.__dict__, default=str) for call in emulator.state.calls)


@pytest.mark.parametrize(
    "hostile", ['a"b</script><script>alert(1)</script>', "x" * 8_000, "caf\u00e9", "a b"]
)
async def test_hostile_ids_never_break_out_or_reach_the_api_unchecked(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory, hostile: str
) -> None:
    """An id within the rules is escaped in the element; one outside them is ignored (guest)."""
    sidecar = await make_sidecar(config(shop, emulator))
    headers = {USER_HEADER: hostile.encode("utf-8").decode("latin-1")}
    _, body = await get(sidecar, "/editor/mug", headers=headers)
    payload = element_of(body)
    assert body.count(b"</script>") == body.count(b"<script")
    if hostile.startswith('a"b'):
        assert payload["userId"] == hostile
    else:
        assert payload["isAnonymous"] is True
        for call in emulator.state.calls:
            assert hostile not in json.dumps(call.__dict__, default=str)


async def test_tampered_guest_cookie_is_ignored(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A guest cookie with a forged id is ignored: the guest id comes from the session instead."""
    sidecar = await make_sidecar(config(shop, emulator))
    _, body = await get(
        sidecar,
        "/editor/mug",
        headers={"Cookie": f"PHPSESSID=s1; {GUEST_COOKIE}=anon-victim.forged"},
    )
    _, session_only = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=s1"})
    assert element_of(body)["userId"] == element_of(session_only)["userId"] != "anon-victim"


async def test_a_planted_guest_cookie_beside_the_browsers_own_gets_neither_guest(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """An attacker's valid guest cookie planted beside the victim's own: neither guest's token is
    handed out, the session's guest is; at the victim's login neither is merged nor deleted."""
    sidecar = await make_sidecar(config(shop, emulator))
    attacker, _ = await get_raw(sidecar, "/editor/mug", None)
    planted = guest_cookie_value(attacker)
    victim, _ = await get_raw(sidecar, "/editor/mug", None, Cookie="PHPSESSID=victim")
    own = guest_cookie_value(victim)
    both = f"{GUEST_COOKIE}={planted}; {GUEST_COOKIE}={own}; PHPSESSID=victim"
    _, body = await get(sidecar, "/editor/mug", headers={"Cookie": both})
    _, session_only = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=victim"})
    assert element_of(body)["userId"] == element_of(session_only)["userId"]
    assert element_of(body)["userId"] not in (planted.split(".")[0], "")
    login, _ = await get(sidecar, "/plain", headers={USER_HEADER: "victim@example.com", "Cookie": both})
    # Neither is deleted: the deletion would reach the browser's own and leave the planted one.
    assert guest_cookie_lines(login) == []
    merges = [
        call.json for call in emulator.state.calls if call.operation == "StorefrontUsers_MergeAnonymous"
    ]
    assert merges == []


async def test_raw_session_id_never_reaches_the_api(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """The shop's session id appears in no API call; the guest id is derived from it."""
    sidecar = await make_sidecar(config(shop, emulator))
    await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=very-secret-session-id"})
    assert emulator.state.calls
    for call in emulator.state.calls:
        assert "very-secret-session-id" not in json.dumps(call.__dict__, default=str)


async def test_guest_keeps_id_across_session_rotation_and_merges_once_at_login(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """Guest page, then login with a new session id: one MergeAnonymous guest -> customer, cookie cleared."""
    sidecar = await make_sidecar(config(shop, emulator))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        client.cookie_jar.update_cookies({"PHPSESSID": "before-login"})
        async with client.get(sidecar.make_url("/editor/mug")) as response:
            guest_id = element_of(await response.read())["userId"]
        client.cookie_jar.update_cookies({"PHPSESSID": "after-login"})
        async with client.get(
            sidecar.make_url("/plain"), headers={USER_HEADER: "jane@example.com"}
        ) as response:
            assert response.status == 200
            [cleared] = guest_cookie_lines(response)
            assert "Max-Age=0" in cleared
        async with client.get(
            sidecar.make_url("/editor/mug"), headers={USER_HEADER: "jane@example.com"}
        ) as response:
            assert element_of(await response.read())["userId"] == "jane@example.com"
    merges = [call for call in emulator.state.calls if call.operation == "StorefrontUsers_MergeAnonymous"]
    assert len(merges) == 1
    assert merges[0].json == {
        "anonymousStorefrontUserId": guest_id,
        "regularStorefrontUserId": "jane@example.com",
    }


async def test_one_login_with_30_swapped_guest_cookies_merges_once(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """30 harvested guest cookies (each with its StorefrontUser) swapped into one logged-in session:
    one MergeAnonymous; every other guest cookie is cleared without a merge."""
    document = config(shop, emulator)
    # Budgets wide enough for the harvest itself (30 new guests from one client).
    document["budget"] = {"client_burst": 100, "storefront_per_s": 100}
    sidecar = await make_sidecar(document)
    harvested = []
    for _ in range(30):
        response, _ = await get_raw(sidecar, "/editor/mug", None)
        cookie = f"{GUEST_COOKIE}={guest_cookie_value(response)}"
        await get(sidecar, "/.cc-sidecar/token", headers={"Cookie": cookie})
        harvested.append(cookie)
    assert emulator.state.count("StorefrontUsers_Create") == 30
    for cookie in harvested:
        response, _ = await get(
            sidecar, "/plain", headers={USER_HEADER: "eve@example.com", "Cookie": f"PHPSESSID=eve; {cookie}"}
        )
        [cleared] = guest_cookie_lines(response)
        assert "Max-Age=0" in cleared
    assert emulator.state.count("StorefrontUsers_MergeAnonymous") == 1


async def test_failing_merge_keeps_the_page_and_is_retried(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A 500 on MergeAnonymous: the page is served, the guest cookie stays, the next request merges."""
    sidecar = await make_sidecar(config(shop, emulator))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        client.cookie_jar.update_cookies({"PHPSESSID": "s"})
        async with client.get(sidecar.make_url("/editor/mug")) as response:
            assert response.status == 200
        emulator.state.fail_operation("StorefrontUsers_MergeAnonymous", status=500, times=1)
        async with client.get(
            sidecar.make_url("/plain"), headers={USER_HEADER: "kim@example.com"}
        ) as response:
            assert response.status == 200
            assert guest_cookie_lines(response) == []
        async with client.get(
            sidecar.make_url("/plain"), headers={USER_HEADER: "kim@example.com"}
        ) as response:
            assert any("Max-Age=0" in c for c in guest_cookie_lines(response))
    assert emulator.state.count("StorefrontUsers_MergeAnonymous") == 2


async def get_raw(
    server: Any, path: str, accept_encoding: str | None, **headers: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    """GET with exactly this Accept-Encoding (none when None); the body as it came over the wire."""
    if accept_encoding is not None:
        headers["Accept-Encoding"] = accept_encoding
    async with (
        aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=["Accept-Encoding"]) as client,
        client.get(server.make_url(path), allow_redirects=False, headers=headers) as response,
    ):
        return response, await response.read()


DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": brotli.decompress,
}


@pytest.mark.parametrize(
    "query",
    ["encoding=gzip", "encoding=br", "encoding=deflate", "chunked=1", "encoding=gzip&chunked=1"],
)
async def test_encoded_and_chunked_editor_pages_are_injected(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory, query: str
) -> None:
    """To a client that accepts no coding, gzip, br, deflate and chunked pages come out decoded,
    with the element, lengths right."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, body = await get_raw(sidecar, f"/editor/mug?{query}", None, **{USER_HEADER: "enc@example.com"})
    assert response.status == 200
    assert "Content-Encoding" not in response.headers
    assert response.headers.get("Content-Length", str(len(body))) == str(len(body))
    assert body.startswith(b'<!doctype html><html><head><title>Editor</title><script id="cc-storefront-user"')
    assert body.endswith(
        b"</script></head><body><h1>Personalize</h1><script>window.editor = true;</script></body></html>"
    )
    element_of(body)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("accept", ["gzip", "deflate", "br"])
@pytest.mark.parametrize("shop_encoding", ["gzip", "deflate", "br"])
async def test_compressed_editor_pages_go_out_compressed_when_the_client_accepts(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory, shop_encoding: str, accept: str, chunked: bool
) -> None:
    """A compressed shop page goes to a client accepting one coding in that coding, with Vary on
    Accept-Encoding and the right length; it decodes to the shop's page plus exactly one element."""
    sidecar = await make_sidecar(config(shop, emulator))
    query = f"encoding={shop_encoding}" + ("&chunked=1&trickle=1" if chunked else "")
    response, wire = await get_raw(sidecar, f"/editor/mug?{query}", accept, **{USER_HEADER: "z@example.com"})
    assert response.status == 200
    assert response.headers["Content-Encoding"] == accept
    assert "Accept-Encoding" in response.headers["Vary"]
    if chunked:
        assert response.headers["Transfer-Encoding"] == "chunked"
    else:
        assert response.headers["Content-Length"] == str(len(wire))
    page = DECOMPRESS[accept](wire)
    assert element_of(page)["userId"] == "z@example.com"
    assert ELEMENT.sub(b"", page) == shop.state.editor_html.encode()


async def test_a_br_editor_page_goes_to_a_browser_in_gzip(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A br page to a client accepting gzip, deflate and br goes out gzip (the token kept apart)."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, wire = await get_raw(
        sidecar, "/editor/mug?encoding=br", "gzip, deflate, br, zstd", **{USER_HEADER: "b@example.com"}
    )
    assert response.headers["Content-Encoding"] == "gzip"
    assert ELEMENT.sub(b"", gzip.decompress(wire)) == shop.state.editor_html.encode()


async def test_an_uncompressed_editor_page_stays_uncompressed(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A page the shop sent as it is goes out as it is, to a client accepting every coding too."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, wire = await get_raw(
        sidecar, "/editor/mug", "gzip, deflate, br", **{USER_HEADER: "u@example.com"}
    )
    assert "Content-Encoding" not in response.headers
    assert "Vary" not in response.headers
    assert response.headers["Content-Length"] == str(len(wire))
    assert ELEMENT.sub(b"", wire) == shop.state.editor_html.encode()


async def test_conditional_headers_are_not_sent_upstream_on_editor_gets(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """If-None-Match would get a 304 with nothing to inject into: it is dropped on editor GETs."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, body = await get(
        sidecar,
        "/editor/mug",
        headers={
            "If-None-Match": '"editor-1"',
            "If-Modified-Since": "Wed, 21 Oct 2025 07:28:00 GMT",
        },
    )
    assert response.status == 200
    element_of(body)
    assert shop.state.header("If-None-Match") == []
    assert shop.state.header("If-Modified-Since") == []


async def test_header_and_cookie_modes(shop: Shop, emulator: Any, make_sidecar: SidecarFactory) -> None:
    """header mode sets X-CC-User-Id/-Token; cookie mode sets a readable SameSite=Lax cc_user_token."""
    sidecar = await make_sidecar(config(shop, emulator, inject=["header", "cookie"]))
    response, body = await get(sidecar, "/editor/mug", headers={USER_HEADER: "h@example.com"})
    assert b"cc-storefront-user" not in body
    assert response.headers["X-CC-User-Id"] == "h@example.com"
    token = response.headers["X-CC-User-Token"]
    assert claims(token)["sub"] == "h@example.com"
    [cookie] = [c for c in response.headers.getall("Set-Cookie") if c.startswith("cc_user_token=")]
    assert cookie.startswith(f"cc_user_token={token};")
    assert "HttpOnly" not in cookie
    assert "SameSite=Lax" in cookie
    assert response.headers["Cache-Control"] == "private, no-store"


async def test_without_tenant_id_the_page_carries_the_tenant_the_api_reports(
    shop: Shop, aiohttp_server: Any, make_sidecar: SidecarFactory
) -> None:
    """tenant_id unset: the element's tenantId is the storefront's tenant from Storefronts_GetAll."""
    running = await start_emulator(aiohttp_server, EmulatorOptions(tenant_id=42, storefront_ids=(1,)))
    document = config(shop, running)
    del document["customers_canvas"]["tenant_id"]
    sidecar = await make_sidecar(document)
    headers = {USER_HEADER: "tenant@example.com"}
    for _ in range(100):
        _, body = await get(sidecar, "/editor/mug", headers=headers)
        if element_of(body)["tenantId"] is not None:
            break
        await asyncio.sleep(0.01)
    assert element_of(body)["tenantId"] == 42
    _, body = await get(sidecar, "/.cc-sidecar/token", headers=headers)
    assert json.loads(body)["tenantId"] == 42
    assert running.state.count("Storefronts_GetAll") == 1


async def test_token_endpoint_answers_for_the_current_customer(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """GET /.cc-sidecar/token gives the same JSON object, no-store, without going upstream."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, body = await get(sidecar, "/.cc-sidecar/token", headers={USER_HEADER: "t@example.com"})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    payload = json.loads(body)
    assert list(payload) == [
        "storefrontId",
        "tenantId",
        "userId",
        "isAnonymous",
        "token",
        "expiresAt",
        "expiresIn",
        "renewIn",
        "tokenUrl",
        "cchubUrl",
        "cchubApiGatewayUrl",
    ]
    assert payload["tenantId"] == 1
    assert payload["cchubApiGatewayUrl"] == emulator.url
    assert payload["userId"] == "t@example.com"
    assert shop.state.requests == []


async def test_api_down_serves_page_marked_unavailable_then_recovers(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """Customer's Canvas failing: pages 200 untouched but marked, fast once the breaker opens, tokens back later."""
    sidecar = await make_sidecar(config(shop, emulator))
    emulator.state.fail_all(status=500)
    for _ in range(3):
        response, body = await get(sidecar, "/editor/mug", headers={USER_HEADER: "down@example.com"})
        assert response.status == 200
        assert response.headers["X-CC-Sidecar"] == "token-unavailable"
        assert response.headers["Cache-Control"] == "private, no-store"
        assert b"cc-storefront-user" not in body
    calls_before = len(emulator.state.calls)
    started = time.monotonic()
    response, _ = await get(sidecar, "/editor/mug", headers={USER_HEADER: "down@example.com"})
    assert time.monotonic() - started < 0.5
    assert response.headers["X-CC-Sidecar"] == "token-unavailable"
    assert len(emulator.state.calls) == calls_before
    response, _ = await get(sidecar, "/.cc-sidecar/token", headers={USER_HEADER: "down@example.com"})
    assert response.status == 503
    assert "Retry-After" in response.headers
    emulator.state.clear_faults()
    await asyncio.sleep(0.6)  # breaker open_s is 0.5 in the test config
    response, body = await get(sidecar, "/editor/mug", headers={USER_HEADER: "down@example.com"})
    assert "X-CC-Sidecar" not in response.headers
    assert element_of(body)["userId"] == "down@example.com"


async def test_gzip_page_decodes_after_injection(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """The shop's gzip body is the page plus exactly the element."""
    sidecar = await make_sidecar(config(shop, emulator))
    _, body = await get(sidecar, "/editor/mug?encoding=gzip")
    assert ELEMENT.sub(b"", body) == shop.state.editor_html.encode()


async def test_token_cookie_never_reaches_the_session_check(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """On /.cc-sidecar/token the browser's cc_user_token is removed before the session check's GET."""
    shop.state.logins["s1"] = "kim@example.com"
    sidecar = await make_sidecar(
        config(
            shop,
            emulator,
            user={"session_check": {"url": "/account/whoami", "id_field": "customer.id"}},
            inject=["cookie"],
        )
    )
    response, body = await get(
        sidecar, "/.cc-sidecar/token", headers={"Cookie": "PHPSESSID=s1; cc_user_token=SECRET-TOKEN"}
    )
    assert response.status == 200
    assert json.loads(body)["userId"] == "kim@example.com"
    [check] = [r for r in shop.state.requests if r.path_qs == "/account/whoami"]
    assert check.headers["Cookie"] == ["PHPSESSID=s1"]


async def test_a_new_guest_after_a_logout_gets_the_old_customers_token_cookie_deleted(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """Cookie mode, no session_cookie: alice's page sets cc_user_token; the browser's next editor
    page without her identity (she logged out) is a new guest's, and deletes the cookie."""
    sidecar = await make_sidecar(config(shop, emulator, inject=["html", "cookie"], session_cookie=None))
    alices, _ = await get(sidecar, "/editor/mug", headers={USER_HEADER: "alice@example.com"})
    token = alices.cookies["cc_user_token"].value
    assert token
    response, body = await get(sidecar, "/editor/mug", headers={"Cookie": f"cc_user_token={token}"})
    assert element_of(body)["token"] is None
    [deleted] = [line for line in response.headers.getall("Set-Cookie") if line.startswith("cc_user_token=")]
    assert deleted == 'cc_user_token=""; Max-Age=0; Path=/; SameSite=Lax'


async def test_cdn_cache_headers_are_removed_from_token_pages(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """Surrogate-Control and CDN-Cache-Control can't let an edge cache keep a page with a token."""
    shop.state.extra_response_headers = {
        "Surrogate-Control": "max-age=600",
        "CDN-Cache-Control": "max-age=600",
        "Cloudflare-CDN-Cache-Control": "max-age=600",
        "Surrogate-Key": "editor",
        "Expires": "Thu, 01 Dec 2039 16:00:00 GMT",
    }
    sidecar = await make_sidecar(config(shop, emulator))
    response, body = await get(sidecar, "/editor/mug", headers={USER_HEADER: "cdn@example.com"})
    element_of(body)
    assert response.headers["Cache-Control"] == "private, no-store"
    for name in shop.state.extra_response_headers:
        assert name not in response.headers


async def test_guest_cookie_is_renewed_with_each_token_fetched(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A returning guest whose token is fetched again gets the guest cookie set again (Max-Age renewed)."""
    clock = Clock()
    emulator.state.clock = clock
    sidecar = await make_sidecar(config(shop, emulator), clock=clock)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        client.cookie_jar.update_cookies({"PHPSESSID": "s"})
        async with client.get(sidecar.make_url("/editor/mug")) as response:
            first = element_of(await response.read())
        clock.now = first["expiresAt"]  # the token is due: the next page fetches a new one
        async with client.get(sidecar.make_url("/editor/mug")) as response:
            again = element_of(await response.read())
            renewed = guest_cookie_lines(response)
    assert again["userId"] == first["userId"]
    assert len(renewed) == 1
    assert "Max-Age=2592000" in renewed[0]


async def test_invalid_guest_cookie_of_a_logged_in_customer_is_cleared(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A forged guest cookie next to a logged-in id is deleted, and no merge is attempted."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, body = await get(
        sidecar,
        "/editor/mug",
        headers={USER_HEADER: "lee@example.com", "Cookie": f"{GUEST_COOKIE}=anon-x.forged"},
    )
    assert element_of(body)["userId"] == "lee@example.com"
    [cleared] = guest_cookie_lines(response)
    assert "Max-Age=0" in cleared
    assert emulator.state.count("StorefrontUsers_MergeAnonymous") == 0


async def test_response_header_memory_ends_on_a_page_naming_nobody(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """After a logout page without the shop's header, the token endpoint answers for the guest."""
    sidecar = await make_sidecar(
        config(shop, emulator, trusted_networks=[], user={"response_header": "X-Shop-Customer"})
    )
    cookies = {"Cookie": "PHPSESSID=sess"}
    shop.state.extra_response_headers = {"X-Shop-Customer": "max@example.com"}
    response, _ = await get(sidecar, "/plain", headers=cookies)
    assert "X-Shop-Customer" not in response.headers
    _, body = await get(sidecar, "/.cc-sidecar/token", headers=cookies)
    assert json.loads(body)["userId"] == "max@example.com"
    shop.state.extra_response_headers = {}
    await get(sidecar, "/notfound/logout", headers=cookies)  # a 404 page: memory kept
    _, body = await get(sidecar, "/.cc-sidecar/token", headers=cookies)
    assert json.loads(body)["userId"] == "max@example.com"
    await get(sidecar, "/page/logout", headers=cookies)  # a 200 HTML page (not an editor page) naming nobody
    _, body = await get(sidecar, "/.cc-sidecar/token", headers=cookies)
    assert json.loads(body)["isAnonymous"] is True


async def test_editor_gets_ask_the_shop_only_for_decodable_encodings(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A browser's zstd is not passed on for editor pages (the token couldn't go in); elsewhere it is."""
    sidecar = await make_sidecar(config(shop, emulator))
    accept = {"Accept-Encoding": "gzip, deflate, br, zstd"}
    await get(sidecar, "/editor/mug", headers={**accept, USER_HEADER: "enc@example.com"})
    assert shop.state.header("Accept-Encoding") == ["gzip, deflate, br"]
    await get(sidecar, "/plain", headers=accept)
    assert shop.state.header("Accept-Encoding") == ["gzip, deflate, br, zstd"]


async def test_response_header_mode_editor_page_gets_the_named_customers_token(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """With only response_header, the token work starts once the shop has named the customer."""
    sidecar = await make_sidecar(
        config(shop, emulator, trusted_networks=[], user={"response_header": "X-Shop-Customer"})
    )
    shop.state.extra_response_headers = {"X-Shop-Customer": "rita@example.com"}
    response, body = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=sess"})
    assert "X-Shop-Customer" not in response.headers
    payload = element_of(body)
    assert (payload["userId"], payload["isAnonymous"]) == ("rita@example.com", False)
    assert response.headers["Cache-Control"] == "private, no-store"


async def test_editor_404_of_a_new_guest_sets_no_guest_cookie(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """The token work an editor path started goes unused when the shop answers 404: no Set-Cookie."""
    sidecar = await make_sidecar(config(shop, emulator, editor_paths=["/notfound/*"]))
    response, _ = await get(sidecar, "/notfound/page", headers={"Cookie": "PHPSESSID=fresh"})
    assert response.status == 404
    assert response.headers.getall("Set-Cookie", []) == []


async def test_login_redirect_clears_the_guest_cookie_after_the_merge(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A merge at login happens on any response, the shop's 302 after the login form included."""
    sidecar = await make_sidecar(config(shop, emulator))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        client.cookie_jar.update_cookies({"PHPSESSID": "s"})
        async with client.get(sidecar.make_url("/editor/mug")) as response:
            guest_id = element_of(await response.read())["userId"]
        async with client.get(
            sidecar.make_url("/redirect"), headers={USER_HEADER: "lee@example.com"}, allow_redirects=False
        ) as response:
            assert response.status == 302
            [cleared] = guest_cookie_lines(response)
    assert "Max-Age=0" in cleared
    merges = [call for call in emulator.state.calls if call.operation == "StorefrontUsers_MergeAnonymous"]
    assert [call.json for call in merges] == [
        {"anonymousStorefrontUserId": guest_id, "regularStorefrontUserId": "lee@example.com"}
    ]


def guest_cookie_value(response: aiohttp.ClientResponse) -> str:
    """The value the response sets the guest cookie to (there must be exactly one)."""
    [line] = guest_cookie_lines(response)
    return line.split(";", 1)[0].split("=", 1)[1]


async def test_cookie_less_editor_requests_get_a_guest_id_but_no_user_or_token(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """20 requests without any cookie: each its own guest cookie and id, a null token, no API call."""
    metrics = Metrics()
    sidecar = await make_sidecar(config(shop, emulator), metrics=metrics)
    cookies, ids = set(), set()
    for _ in range(20):
        response, body = await get_raw(sidecar, "/editor/mug", None)
        payload = element_of(body)
        assert (payload["isAnonymous"], payload["token"], payload["expiresAt"]) == (True, None, None)
        assert payload["tokenUrl"] == "/.cc-sidecar/token"
        assert "X-CC-Sidecar" not in response.headers
        assert response.headers["Cache-Control"] == "private, no-store"
        cookies.add(guest_cookie_value(response))
        ids.add(payload["userId"])
    assert len(cookies) == len(ids) == 20
    assert emulator.state.calls == []
    assert metrics.registry.get_sample_value("cc_sidecar_deferred_guests_total", {"storefront": "main"}) == 20


async def test_the_guest_cookie_brought_back_makes_one_user_and_token_for_the_same_id(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A cookie-less page, then the page script's tokenUrl call and the next page with the cookie:
    one Create and one GetToken, for the id the first page named."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, body = await get_raw(sidecar, "/editor/mug", None)
    guest_id = element_of(body)["userId"]
    cookie = {"Cookie": f"{GUEST_COOKIE}={guest_cookie_value(response)}"}
    _, body = await get(sidecar, "/.cc-sidecar/token", headers=cookie)
    from_endpoint = json.loads(body)
    _, page = await get(sidecar, "/editor/mug", headers=cookie)
    assert from_endpoint["userId"] == element_of(page)["userId"] == guest_id
    assert claims(from_endpoint["token"])["sub"] == guest_id
    assert element_of(page)["token"] == from_endpoint["token"]
    assert [(u.user_id, u.is_anonymous) for u in emulator.state.users.values()] == [(guest_id, True)]
    assert emulator.state.count("StorefrontUsers_Create") == 1
    assert emulator.state.count("StorefrontUsers_GetToken") == 1


@pytest.mark.parametrize("cookie", ["junk=1", "csrftoken=abc; _ga=GA1.2.3", f"{GUEST_COOKIE}=anon-x.forged"])
async def test_a_request_with_only_unrelated_cookies_is_a_first_visit(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory, cookie: str
) -> None:
    """Cookies that are neither the shop's session nor a valid guest cookie: a minted guest id, the
    guest cookie, a null token, and no API call, on the editor page and on the token endpoint."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, body = await get(sidecar, "/editor/mug", headers={"Cookie": cookie})
    payload = element_of(body)
    assert (payload["isAnonymous"], payload["token"], payload["expiresAt"]) == (True, None, None)
    assert guest_cookie_value(response).startswith(payload["userId"] + ".")
    response, body = await get(sidecar, "/.cc-sidecar/token", headers={"Cookie": cookie})
    answer = json.loads(body)
    assert (response.status, answer["token"], answer["expiresAt"]) == (200, None, None)
    assert answer["userId"] != payload["userId"]
    assert emulator.state.calls == []


async def test_200_requests_with_a_junk_cookie_make_no_storefront_user(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """200 requests with `Cookie: junk=1` to the token endpoint and editor pages: 0 StorefrontUsers."""
    sidecar = await make_sidecar(config(shop, emulator))
    for number in range(200):
        path = "/.cc-sidecar/token" if number % 2 else "/editor/mug"
        response, _ = await get(sidecar, path, headers={"Cookie": "junk=1"})
        assert response.status == 200
    assert emulator.state.users == {}
    assert emulator.state.calls == []


async def test_token_endpoint_without_a_cookie_answers_the_guest_id_without_a_token(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """/.cc-sidecar/token without a cookie: 200, no-store, the guest cookie, the JSON with null token."""
    sidecar = await make_sidecar(config(shop, emulator))
    response, body = await get_raw(sidecar, "/.cc-sidecar/token", None)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    payload = json.loads(body)
    assert (payload["isAnonymous"], payload["token"], payload["expiresAt"]) == (True, None, None)
    assert guest_cookie_value(response).startswith(payload["userId"] + ".")
    assert emulator.state.calls == []


async def test_cookie_less_guest_in_header_and_cookie_modes_gets_only_the_id(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """header mode: X-CC-User-Id alone, no X-CC-User-Token; cookie mode: no cc_user_token cookie."""
    sidecar = await make_sidecar(config(shop, emulator, inject=["header", "cookie"]))
    response, body = await get_raw(sidecar, "/editor/mug", None)
    assert body == shop.state.editor_html.encode()
    assert response.headers["X-CC-User-Id"].startswith("anon-")
    assert "X-CC-User-Token" not in response.headers
    assert [c.split("=", 1)[0] for c in response.headers.getall("Set-Cookie")] == [GUEST_COOKIE]
    assert guest_cookie_value(response).startswith(response.headers["X-CC-User-Id"] + ".")


# -- the shop's session replaced or ended: what was learnt about the old one goes ------------------

RESPONSE_HEADER = {"response_header": "X-Shop-Customer"}
SESSION_CHECK = {"session_check": {"url": "/account/whoami", "id_field": "customer.id"}}


async def token_user(sidecar: Any, cookie: str) -> dict[str, Any]:
    response, body = await get(sidecar, "/.cc-sidecar/token", headers={"Cookie": cookie})
    assert response.status == 200
    payload: dict[str, Any] = json.loads(body)
    return payload


async def test_a_login_that_rotates_the_session_leaves_the_old_session_a_guest(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """Session fixation: the id planted before the login gets a guest's token; the shop's new id gets kim's."""
    sidecar = await make_sidecar(config(shop, emulator, trusted_networks=[], user=RESPONSE_HEADER))
    shop.state.extra_response_headers = {
        "X-Shop-Customer": "kim@example.com",
        "Set-Cookie": "PHPSESSID=fresh-after-login; Path=/; HttpOnly",
    }
    await get(sidecar, "/page/login", headers={"Cookie": "PHPSESSID=planted"})
    shop.state.extra_response_headers = {}
    assert (await token_user(sidecar, "PHPSESSID=planted"))["isAnonymous"] is True
    assert (await token_user(sidecar, "PHPSESSID=fresh-after-login"))["userId"] == "kim@example.com"


async def test_a_logout_that_deletes_the_session_ends_what_was_remembered(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A logout redirect (no page naming nobody) that deletes PHPSESSID: the old id no longer names the customer."""
    sidecar = await make_sidecar(config(shop, emulator, trusted_networks=[], user=RESPONSE_HEADER))
    shop.state.extra_response_headers = {"X-Shop-Customer": "kim@example.com"}
    await get(sidecar, "/plain", headers={"Cookie": "PHPSESSID=kims"})
    assert (await token_user(sidecar, "PHPSESSID=kims"))["userId"] == "kim@example.com"
    shop.state.extra_response_headers = {
        "Set-Cookie": "PHPSESSID=deleted; expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; path=/"
    }
    response, _ = await get(sidecar, "/redirect", headers={"Cookie": "PHPSESSID=kims"})
    assert response.status == 302
    shop.state.extra_response_headers = {}
    assert (await token_user(sidecar, "PHPSESSID=kims"))["isAnonymous"] is True


async def test_a_response_renewing_the_same_session_keeps_what_was_remembered(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """A Set-Cookie that only renews the session (same value, new expiry) is no login or logout."""
    sidecar = await make_sidecar(config(shop, emulator, trusted_networks=[], user=RESPONSE_HEADER))
    shop.state.extra_response_headers = {"X-Shop-Customer": "kim@example.com"}
    await get(sidecar, "/plain", headers={"Cookie": "PHPSESSID=kims"})
    shop.state.extra_response_headers = {"Set-Cookie": "PHPSESSID=kims; Max-Age=1800; Path=/"}
    await get(sidecar, "/plain", headers={"Cookie": "PHPSESSID=kims"})
    shop.state.extra_response_headers = {}
    assert (await token_user(sidecar, "PHPSESSID=kims"))["userId"] == "kim@example.com"


async def test_a_session_cookie_sent_twice_is_remembered_for_nobody(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """``PHPSESSID=victim; PHPSESSID=attacker`` named mallory (the shop read the last): the victim's id stays a guest's."""
    sidecar = await make_sidecar(config(shop, emulator, trusted_networks=[], user=RESPONSE_HEADER))
    shop.state.extra_response_headers = {"X-Shop-Customer": "mallory@example.com"}
    await get(sidecar, "/plain", headers={"Cookie": "PHPSESSID=victim; PHPSESSID=attacker"})
    shop.state.extra_response_headers = {}
    assert (await token_user(sidecar, "PHPSESSID=victim"))["isAnonymous"] is True


async def test_a_session_cookie_sent_twice_is_never_checked_or_cached(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """Two PHPSESSIDs (or two Cookie headers): a guest, no session check, and nothing cached for either id."""
    shop.state.logins["attacker"] = "mallory@example.com"
    sidecar = await make_sidecar(config(shop, emulator, trusted_networks=[], user=SESSION_CHECK))
    assert (await token_user(sidecar, "PHPSESSID=victim; PHPSESSID=attacker"))["isAnonymous"] is True
    _, body = await get(
        sidecar,
        "/.cc-sidecar/token",
        headers=[("Cookie", "PHPSESSID=victim"), ("Cookie", "PHPSESSID=attacker")],
    )
    assert json.loads(body)["isAnonymous"] is True
    assert [r for r in shop.state.requests if r.path_qs == "/account/whoami"] == []
    assert (await token_user(sidecar, "PHPSESSID=victim"))["isAnonymous"] is True


async def test_a_session_check_answer_ends_when_the_shop_replaces_the_session(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """kim's cached answer (ttl 60 s) is dropped when a response gives her browser a new session id."""
    shop.state.logins["old"] = "kim@example.com"
    sidecar = await make_sidecar(config(shop, emulator, trusted_networks=[], user=SESSION_CHECK))
    assert (await token_user(sidecar, "PHPSESSID=old"))["userId"] == "kim@example.com"
    del shop.state.logins["old"]
    shop.state.extra_response_headers = {"Set-Cookie": "PHPSESSID=new; Path=/"}
    await get(sidecar, "/plain", headers={"Cookie": "PHPSESSID=old"})
    shop.state.extra_response_headers = {}
    assert (await token_user(sidecar, "PHPSESSID=old"))["isAnonymous"] is True


async def test_head_of_an_editor_page_says_what_its_get_says_about_caching(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """HEAD gets no token but the GET's private Cache-Control and no validators, so no cache re-labels a stored GET."""
    sidecar = await make_sidecar(config(shop, emulator))
    async with (
        aiohttp.ClientSession() as client,
        client.head(sidecar.make_url("/editor/mug"), headers={USER_HEADER: "head@example.com"}) as response,
    ):
        assert response.status == 200
        assert response.headers["Cache-Control"] == "private, no-store"
        assert "ETag" not in response.headers
        assert "Last-Modified" not in response.headers
    assert emulator.state.count("StorefrontUsers_GetToken") == 0


# -- secure_cookies, and the token cookie ending with the shop's session ---------------------------


def set_cookie_lines(response: aiohttp.ClientResponse, name: str) -> list[str]:
    return [c for c in response.headers.getall("Set-Cookie", []) if c.startswith(name + "=")]


async def test_auto_secure_cookies_believe_any_hops_https(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """secure_cookies auto, no trusted_networks: X-Forwarded-Proto https (any item) or Forwarded
    proto=https from an untrusted peer makes both cookies Secure; plain http leaves them without."""
    sidecar = await make_sidecar(
        config(shop, emulator, trusted_networks=[], user={}, inject=["html", "cookie"])
    )
    for headers, secure in (
        ({"X-Forwarded-Proto": "https"}, True),
        ({"X-Forwarded-Proto": "http, https"}, True),
        ({"Forwarded": "for=192.0.2.1;proto=https"}, True),
        ({"X-Forwarded-Proto": "http"}, False),
        ({}, False),
    ):
        response, _ = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=s", **headers})
        lines = set_cookie_lines(response, GUEST_COOKIE) + set_cookie_lines(response, "cc_user_token")
        assert len(lines) == 2
        assert all(("; Secure" in line) is secure for line in lines), (headers, lines)


async def test_secure_cookies_always_marks_them_secure_over_plain_http(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """secure_cookies: always: Secure without any X-Forwarded-Proto, on the first visit's guest cookie too."""
    sidecar = await make_sidecar(config(shop, emulator, secure_cookies="always", inject=["html", "cookie"]))
    response, _ = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=s"})
    lines = set_cookie_lines(response, GUEST_COOKIE) + set_cookie_lines(response, "cc_user_token")
    assert len(lines) == 2
    assert all("; Secure" in line for line in lines)
    response, _ = await get_raw(sidecar, "/editor/mug", None)
    assert "; Secure" in set_cookie_lines(response, GUEST_COOKIE)[0]


@pytest.mark.parametrize(
    "session_cookie",
    [
        "PHPSESSID=deleted; expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0; path=/",
        "PHPSESSID=rotated; path=/",
    ],
)
async def test_the_token_cookie_goes_with_the_shops_session(
    shop: Shop, emulator: Any, make_sidecar: SidecarFactory, session_cookie: str
) -> None:
    """Cookie mode: a response that deletes or replaces PHPSESSID (a logout, a login) deletes
    cc_user_token too, editor page or not; the editor page sets no new token cookie then. One
    that sets PHPSESSID again to the browser's own value sets the token cookie as usual."""
    sidecar = await make_sidecar(config(shop, emulator, inject=["html", "cookie"]))
    shop.state.extra_response_headers = {"Set-Cookie": session_cookie}
    for path in ("/redirect", "/editor/mug"):
        response, _ = await get(sidecar, path, headers={"Cookie": "PHPSESSID=kims"})
        [line] = set_cookie_lines(response, "cc_user_token")
        assert "Max-Age=0" in line
    shop.state.extra_response_headers = {"Set-Cookie": "PHPSESSID=kims; path=/"}
    response, _ = await get(sidecar, "/editor/mug", headers={"Cookie": "PHPSESSID=kims"})
    [line] = set_cookie_lines(response, "cc_user_token")
    assert "Max-Age=0" not in line
