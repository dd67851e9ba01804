"""A real browser: the demo's editor page through the sidecar, in headless Chromium over CDP."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.demo import running_demo
from proxy.emulator import EMULATOR_STATE
from tests.fixtures.emulator import RunningEmulator
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it)"),
    pytest.mark.timeout(90),
]
# The flags this machine needs: no sandbox as root, and no background calls to the internet.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)


class DevTools:
    """A minimal Chrome DevTools Protocol client over one WebSocket (flattened sessions)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self._ws.send_str(json.dumps(message))
        while True:
            reply = json.loads((await self._ws.receive(timeout=30)).data)
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    async def evaluate(self, session: str, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        return result["result"].get("value")

    async def wait_for(self, session: str, expression: str, expected: Any, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(session, expression)
            if value == expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expression} stayed {value!r}, expected {expected!r}")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[tuple[DevTools, str]]:
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        ws_url = None
        while ws_url is None:
            line = (await asyncio.wait_for(process.stderr.readline(), timeout=30)).decode()
            if not line:
                raise AssertionError("Chromium exited before DevTools listened")
            if "DevTools listening on " in line:
                ws_url = line.split("DevTools listening on ", 1)[1].strip()
        async with (
            aiohttp.ClientSession() as client,
            client.ws_connect(ws_url, max_msg_size=0) as ws,
        ):
            devtools = DevTools(ws)
            target = await devtools.call("Target.createTarget", url="about:blank")
            attached = await devtools.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
            session = attached["sessionId"]
            await devtools.call("Page.enable", session)
            await devtools.call("Runtime.enable", session)
            yield devtools, session
    finally:
        process.kill()
        await process.wait()


async def test_demo_editor_page_gets_and_renews_a_token_then_login_merges(
    browser: tuple[DevTools, str],
) -> None:
    """In Chromium the editor script finds the guest's token, renews it, and after login gets the customer's."""
    devtools, session = browser
    async with running_demo(0) as demo:
        url = demo.url
        state = demo.emulator_app[EMULATOR_STATE]
        await devtools.call("Page.navigate", session, url=url + "editor/mug#renew-now")
        await devtools.wait_for(session, "document.getElementById('status').dataset.state", "renewed")
        guest = await devtools.evaluate(session, "JSON.stringify(window.ccUser)")
        guest_user = json.loads(guest)
        assert guest_user["userId"].startswith("anon-")
        assert guest_user["isAnonymous"] is True
        assert guest_user["tokenUrl"] == "/.cc-sidecar/token"
        assert await devtools.evaluate(session, "document.getElementById('user-kind').textContent") == "guest"

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
