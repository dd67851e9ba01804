"""A real browser: the demo's editor page through the sidecar, in headless Chromium over CDP."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aiohttp import web

from proxy.demo import running_demo
from proxy.emulator import EMULATOR_STATE
from tests.fixtures.browser import DevTools, needs_chromium
from tests.fixtures.emulator import RunningEmulator
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config

pytestmark = [*needs_chromium, pytest.mark.timeout(90)]


@pytest.mark.timeout(150)
async def test_demo_editor_page_gets_and_renews_a_token_then_login_merges(
    browser: tuple[DevTools, str],
) -> None:
    """With 40-second tokens the demo's Workflow Elements page starts its editor with the guest's
    token, the page script brings a different one before it expires, and after login the editor
    gets the customer's."""
    devtools, session = browser
    lifetime_s = 40
    async with running_demo(0, token_lifetime_s=lifetime_s) as demo:
        url = demo.url
        state = demo.emulator_app[EMULATOR_STATE]
        await devtools.call("Page.navigate", session, url=url + "editor/mug")
        await devtools.wait_for(session, "document.getElementById('status').dataset.state", "token")
        started = await devtools.evaluate(session, "document.getElementById('editor').integration")
        guest_user = json.loads(await devtools.evaluate(session, "JSON.stringify(window.ccUser)"))
        assert started == {
            "tenantId": 1,
            "storefrontId": 1,
            "user": {"id": guest_user["userId"], "token": guest_user["token"]},
            "cchubApiGatewayUrl": guest_user["cchubApiGatewayUrl"],
        }
        assert guest_user["userId"].startswith("anon-")
        assert guest_user["isAnonymous"] is True
        assert guest_user["tokenUrl"] == "/.cc-sidecar/token"
        assert await devtools.evaluate(session, "document.getElementById('user-kind').textContent") == "guest"
        shown = await devtools.evaluate(session, "document.getElementById('token').textContent")
        assert shown == guest_user["token"][:24] + "\u2026"

        await devtools.wait_for(
            session, "document.getElementById('status').dataset.state", "renewed", timeout_s=lifetime_s
        )
        renewed = json.loads(await devtools.evaluate(session, "JSON.stringify(window.ccUser)"))
        assert renewed["userId"] == guest_user["userId"]
        assert renewed["token"] != guest_user["token"]
        assert time.time() < guest_user["expiresAt"]
        assert await devtools.evaluate(session, "document.getElementById('token').textContent") == (
            renewed["token"][:24] + "\u2026"
        )
        assert await devtools.evaluate(session, "document.getElementById('renewals').children.length") == 1
        assert state.count("StorefrontUsers_GetToken") == 2

        await devtools.call("Page.navigate", session, url=url + "login")
        await devtools.wait_for(session, "document.readyState", "complete")
        await devtools.evaluate(session, "document.querySelector('form[action=\"/login\"]').submit()")
        await devtools.wait_for(
            session,
            "document.getElementById('status') && document.getElementById('status').dataset.state",
            "token",
        )
        customer = json.loads(await devtools.evaluate(session, "JSON.stringify(window.ccUser)"))
        assert customer["userId"] == "jane@example.com"
        assert customer["isAnonymous"] is False
        assert state.count("StorefrontUsers_MergeAnonymous") == 1
        merge = next(call for call in state.calls if call.operation == "StorefrontUsers_MergeAnonymous")
        assert merge.json == {
            "anonymousStorefrontUserId": guest_user["userId"],
            "regularStorefrontUserId": "jane@example.com",
        }
        await devtools.wait_for(
            session,
            "document.getElementById('merged').textContent",
            f"guest {guest_user['userId']} merged into this account at login (MergeAnonymous)",
        )


async def test_first_visit_to_a_gzip_editor_page_with_an_empty_profile_ends_with_a_token(
    browser: tuple[DevTools, str],
) -> None:
    """An empty profile straight on an editor page the shop gzips: the page arrives gzip with a
    null-token element, its script fetches tokenUrl, and the guest's one user and token are made."""
    devtools, session = browser
    async with running_demo(0) as demo:
        state = demo.emulator_app[EMULATOR_STATE]
        await devtools.call("Page.navigate", session, url=demo.url + "editor/mug")
        await devtools.wait_for(session, "document.getElementById('status').dataset.state", "token")
        navigation = await devtools.evaluate(
            session,
            "(() => { const e = performance.getEntriesByType('navigation')[0];"
            " return {coding: e.contentEncoding, encoded: e.encodedBodySize, decoded: e.decodedBodySize}; })()",
        )
        assert navigation["coding"] == "gzip"
        assert 0 < navigation["encoded"] < navigation["decoded"]
        on_page = json.loads(
            await devtools.evaluate(session, "document.getElementById('cc-storefront-user').textContent")
        )
        assert (on_page["token"], on_page["expiresAt"]) == (None, None)
        user = json.loads(await devtools.evaluate(session, "JSON.stringify(window.ccUser)"))
        assert user["userId"] == on_page["userId"]
        assert user["isAnonymous"] is True
        assert isinstance(user["token"], str)
        assert isinstance(user["expiresAt"], int)
        assert state.count("StorefrontUsers_Create") == 1
        assert state.count("StorefrontUsers_GetToken") == 1


async def test_a_page_of_another_origin_cannot_read_the_token_of_an_editor_page(
    browser: tuple[DevTools, str],
    shop: Shop,
    emulator: RunningEmulator,
    make_sidecar: SidecarFactory,
    aiohttp_server: Any,
) -> None:
    """A page on another origin of the same site (127.0.0.1, another port) fetches an editor page
    with the victim's cookies, the shop reflecting its Origin with Allow-Credentials: it gets no token."""
    devtools, session = browser

    async def elsewhere(_: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>elsewhere</title>", content_type="text/html")

    attacker = web.Application()
    attacker.router.add_get("/", elsewhere)
    attacker_server = await aiohttp_server(attacker)
    attacker_origin = f"http://127.0.0.1:{attacker_server.port}"
    shop.state.extra_response_headers.update(
        {"Access-Control-Allow-Origin": attacker_origin, "Access-Control-Allow-Credentials": "true"}
    )
    sidecar = await make_sidecar(sidecar_config(shop.url, emulator.url))
    editor_url = str(sidecar.make_url("/editor/mug"))
    # The victim's browser holds a session of the shop.
    await devtools.call("Network.setCookie", session, name="PHPSESSID", value="victim", url=editor_url)
    await devtools.call("Page.navigate", session, url=attacker_origin + "/")
    await devtools.wait_for(session, "document.title", "elsewhere")
    outcome = await devtools.evaluate(
        session,
        f"fetch({json.dumps(editor_url)}, {{credentials: 'include'}})"
        '.then(r => r.text()).then(t => /"token":"[^"]+"/.test(t) ? \'token read\' : \'no token\')'
        ".catch(() => 'not readable')",
    )
    assert outcome in ("no token", "not readable")
    editor_requests = [r for r in shop.state.requests if r.path_qs == "/editor/mug"]
    assert editor_requests, "the fetch reached the shop through the sidecar"
    assert emulator.state.count("StorefrontUsers_GetToken") == 0
