"""Faults on both sides: Customer's Canvas and the shop misbehave, the shop's customers never notice.

Each test breaks one thing for real (a closed port, a server that answers 500s, late, with a bad
token, or a shop that resets, hangs or truncates mid-body) and checks four things: the client gets
a well-formed answer (the page untouched and marked ``token-unavailable``, or 502/504, or a
connection cut cleanly once headers were out), it never waits much longer than the timeout in
force, nothing is logged at ERROR (the autouse fixture of this package), and once the fault is
gone the same sidecar serves normally again.

Timeouts in force (``sidecar_config``): the API's ``timeout_s`` 1 s, the shop's
``upstream_timeout_s`` 1 s, breaker 3 failures / 0.5 s open.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.emulator import EmulatorOptions, create_emulator_app
from tests.fixtures.emulator import RunningEmulator
from tests.fixtures.process import free_port
from tests.fixtures.shop import EDITOR_PAGE, Shop, SidecarFactory, create_shop_app, sidecar_config
from tests.reliability.helpers import (
    SLACK_S,
    USER_HEADER,
    Answer,
    element_of,
    eventually,
    fetch,
    serve_on,
)

API_TIMEOUT_S = 1.0
SHOP_TIMEOUT_S = 1.0
GET_TOKEN = "StorefrontUsers_GetToken"


def config(shop_url: str, api_url: str, **storefront: Any) -> dict[str, Any]:
    storefront.setdefault("trusted_networks", ["127.0.0.1/32"])
    storefront.setdefault("user", {"header": USER_HEADER})
    document = sidecar_config(shop_url, api_url, **storefront)
    document["customers_canvas"]["timeout_s"] = API_TIMEOUT_S
    assert document["storefronts"][0]["upstream_timeout_s"] == SHOP_TIMEOUT_S
    return document


def as_customer(user: str) -> dict[str, str]:
    return {USER_HEADER: user}


def assert_untouched(answer: Answer) -> None:
    """The editor page as the shop sent it, marked as served without a token, never cached."""
    assert answer.status == 200
    assert answer.body == EDITOR_PAGE.encode()
    assert answer.headers["X-CC-Sidecar"] == "token-unavailable"
    assert answer.headers["Cache-Control"] == "private, no-store"


def assert_token_for(answer: Answer, user: str) -> None:
    assert answer.status == 200
    assert element_of(answer.body)["userId"] == user
    assert "X-CC-Sidecar" not in answer.headers


async def has_token(sidecar: TestServer, user: str) -> bool:
    answer = await fetch(sidecar, "/editor/mug", headers=as_customer(user))
    return answer.status == 200 and b"cc-storefront-user" in answer.body


# -- Customer's Canvas ------------------------------------------------------------------------


async def test_api_going_away_and_coming_back_on_its_port(shop: Shop, make_sidecar: SidecarFactory) -> None:
    """API stopped: pages untouched within the timeout, cached tokens still served; restarted: tokens flow."""
    port = free_port()
    options = EmulatorOptions(storefront_ids=(1,))
    runner = await serve_on(create_emulator_app(options), port)
    sidecar = await make_sidecar(config(shop.url, f"http://127.0.0.1:{port}"))
    assert_token_for(await fetch(sidecar, "/editor/mug", headers=as_customer("cached")), "cached")
    await runner.cleanup()  # connections are refused from now on

    for user in ("new-1", "new-2", "new-3", "new-4"):
        answer = await fetch(sidecar, "/editor/mug", headers=as_customer(user))
        assert_untouched(answer)
        assert answer.elapsed_s < API_TIMEOUT_S + SLACK_S
    assert_token_for(await fetch(sidecar, "/editor/mug", headers=as_customer("cached")), "cached")
    renewal = await fetch(sidecar, "/.cc-sidecar/token", headers=as_customer("new-1"))
    assert (renewal.status, renewal.headers["Retry-After"]) == (503, "1")
    assert renewal.headers["Cache-Control"] == "no-store"

    runner = await serve_on(create_emulator_app(options), port)
    try:
        await eventually(lambda: has_token(sidecar, "new-1"))
    finally:
        await runner.cleanup()


async def test_api_answering_500_then_recovering(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Every call a 500: untouched pages, a 503 renewal, the breaker opens; cleared: tokens again."""
    sidecar = await make_sidecar(config(shop.url, emulator.url))
    emulator.state.fail_all(status=500)
    for number in range(5):
        answer = await fetch(sidecar, "/editor/mug", headers=as_customer(f"user-{number}"))
        assert_untouched(answer)
        assert answer.elapsed_s < API_TIMEOUT_S + SLACK_S
    calls_while_open = len(emulator.state.calls)
    assert_untouched(await fetch(sidecar, "/editor/mug", headers=as_customer("held-back")))
    assert len(emulator.state.calls) == calls_while_open  # the open circuit spared the dead API
    renewal = await fetch(sidecar, "/.cc-sidecar/token", headers=as_customer("user-0"))
    assert renewal.status == 503
    assert renewal.headers["Retry-After"] == "1"

    emulator.state.clear_faults()
    await eventually(lambda: has_token(sidecar, "user-0"))
    assert_token_for(await fetch(sidecar, "/editor/mug", headers=as_customer("user-1")), "user-1")


async def test_api_answering_after_the_timeout(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Answers later than timeout_s: the page goes out untouched at the timeout, never much later."""
    sidecar = await make_sidecar(config(shop.url, emulator.url))
    emulator.state.delay(API_TIMEOUT_S + 0.5)
    answers = await asyncio.gather(
        *(fetch(sidecar, "/editor/mug", headers=as_customer(f"late-{n}")) for n in range(3))
    )
    for answer in answers:
        assert_untouched(answer)
        assert API_TIMEOUT_S * 0.9 <= answer.elapsed_s < API_TIMEOUT_S + SLACK_S
    # Three slow calls opened the circuit: the next request does not wait for the dead API at all.
    answer = await fetch(sidecar, "/editor/mug", headers=as_customer("late-3"))
    assert_untouched(answer)
    assert answer.elapsed_s < API_TIMEOUT_S / 2

    emulator.state.clear_faults()
    await eventually(lambda: has_token(sidecar, "late-0"))


@pytest.mark.parametrize(
    "fault",
    [
        {"malformed_token": True},
        {"token_text": "</script><script>alert(1)</script>"},
        {"token_text": ""},
    ],
    ids=["not-a-jwt", "markup", "empty"],
)
async def test_unusable_token_is_never_handed_out(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory, fault: dict[str, Any]
) -> None:
    """A token that is not a JWT is neither injected nor cached; a good one follows once the API mends."""
    sidecar = await make_sidecar(config(shop.url, emulator.url, inject=["html", "header", "cookie"]))
    for name, value in fault.items():
        setattr(emulator.state.faults, name, value)
    answer = await fetch(sidecar, "/editor/mug", headers=as_customer("victim"))
    assert_untouched(answer)
    assert answer.elapsed_s < API_TIMEOUT_S + SLACK_S
    assert "X-CC-User-Token" not in answer.headers
    assert "cc_user_token" not in " ".join(answer.headers.getall("Set-Cookie", []))
    renewal = await fetch(sidecar, "/.cc-sidecar/token", headers=as_customer("victim"))
    assert renewal.status == 503

    emulator.state.clear_faults()
    assert_token_for(await fetch(sidecar, "/editor/mug", headers=as_customer("victim")), "victim")


async def test_token_without_exp_is_served_for_the_configured_lifetime(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """A JWT without exp is used, with expiresAt now + token_lifetime_without_exp_s (300 s by default)."""
    sidecar = await make_sidecar(config(shop.url, emulator.url))
    emulator.state.faults.token_without_exp = True
    before = int(time.time())
    answer = await fetch(sidecar, "/editor/mug", headers=as_customer("no-exp"))
    after = int(time.time())
    payload = element_of(answer.body)
    assert payload["userId"] == "no-exp"
    assert before + 300 <= payload["expiresAt"] <= after + 300
    await fetch(sidecar, "/editor/mug", headers=as_customer("no-exp"))
    assert emulator.state.count(GET_TOKEN) == 1  # cached like any other


async def test_flapping_api_serves_every_page_it_can(
    shop: Shop, emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Fail, succeed, fail...: each page gets a token exactly when GetToken succeeds; one 500 is retried."""
    sidecar = await make_sidecar(config(shop.url, emulator.url))
    outcomes = []
    for number in range(8):
        if number % 2 == 0:
            emulator.state.fail_operation(GET_TOKEN, status=500, times=2)  # both attempts fail
        else:
            emulator.state.clear_faults()
        answer = await fetch(sidecar, "/editor/mug", headers=as_customer(f"flap-{number}"))
        assert answer.elapsed_s < API_TIMEOUT_S + SLACK_S
        outcomes.append("token" if b"cc-storefront-user" in answer.body else answer.headers["X-CC-Sidecar"])
    assert outcomes == ["token-unavailable", "token"] * 4

    emulator.state.fail_operation(GET_TOKEN, status=500, times=1)
    assert_token_for(await fetch(sidecar, "/editor/mug", headers=as_customer("retried")), "retried")


# -- the shop ---------------------------------------------------------------------------------


class Misbehaving:
    """A shop that breaks off mid-body in the ways real ones do; ``release`` ends the hangs."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.page = EDITOR_PAGE.encode() * 50

    async def reset(self, request: web.Request) -> web.StreamResponse:
        """Headers and part of the body, then a TCP reset."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/html", "Content-Length": str(len(self.page))}
        )
        await response.prepare(request)
        await response.write(self.page[: len(self.page) // 3])
        await asyncio.sleep(0.05)
        transport = request.transport
        assert transport is not None
        sock: socket.socket = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return response

    async def hang(self, request: web.Request) -> web.StreamResponse:
        """Headers and part of the body, then nothing until the test ends."""
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        await response.prepare(request)
        await response.write(self.page[: len(self.page) // 3])
        await self.release.wait()
        return response

    async def truncated_gzip(self, request: web.Request) -> web.Response:
        """A well-framed body (right Content-Length) whose gzip stream stops halfway."""
        compressed = gzip.compress(self.page)
        return web.Response(
            body=compressed[: len(compressed) // 2],
            headers={"Content-Type": "text/html", "Content-Encoding": "gzip"},
        )

    async def corrupt_gzip(self, request: web.Request) -> web.Response:
        """A body labelled gzip that is not gzip at all."""
        return web.Response(
            body=b"\x1f\x8b\x08\x00garbage" * 100,
            headers={"Content-Type": "text/html", "Content-Encoding": "gzip"},
        )

    async def plain(self, request: web.Request) -> web.Response:
        return web.Response(text="fine")


@pytest.fixture
async def misbehaving(aiohttp_server: Any) -> AsyncIterator[tuple[Misbehaving, TestServer]]:
    shop = Misbehaving()
    app = web.Application()
    for prefix in ("/page", "/editor"):
        app.router.add_get(f"{prefix}/reset", shop.reset)
        app.router.add_get(f"{prefix}/hang", shop.hang)
        app.router.add_get(f"{prefix}/truncated-gzip", shop.truncated_gzip)
        app.router.add_get(f"{prefix}/corrupt-gzip", shop.corrupt_gzip)
    app.router.add_get("/plain", shop.plain)
    server = await aiohttp_server(app)
    yield shop, server
    shop.release.set()


async def test_shop_refusing_connections_gives_502_then_recovers(
    emulator: RunningEmulator, make_sidecar: SidecarFactory
) -> None:
    """Nothing listening upstream: 502 at once (editor pages too); a shop started there is served."""
    port = free_port()
    sidecar = await make_sidecar(config(f"http://127.0.0.1:{port}", emulator.url))
    for path in ("/plain", "/editor/mug"):
        answer = await fetch(sidecar, path, headers=as_customer("someone"))
        assert answer.status == 502
        assert answer.body == b"bad gateway: the shop did not answer\n"
        assert answer.elapsed_s < SLACK_S
    runner = await serve_on(create_shop_app(), port)
    try:
        assert (await fetch(sidecar, "/plain")).body == b"hello from the shop"
        assert_token_for(await fetch(sidecar, "/editor/mug", headers=as_customer("someone")), "someone")
    finally:
        await runner.cleanup()


async def test_shop_too_slow_for_headers_gives_504_on_editor_pages(
    emulator: RunningEmulator, make_sidecar: SidecarFactory, shop: Shop
) -> None:
    """No headers within upstream_timeout_s on an editor page: 504 at the timeout, token work dropped."""
    sidecar = await make_sidecar(config(shop.url, emulator.url))
    shop.state.delay_s = SHOP_TIMEOUT_S + 1
    answer = await fetch(sidecar, "/editor/mug", headers=as_customer("patient"))
    assert answer.status == 504
    assert answer.body == b"gateway timeout: the shop was too slow\n"
    assert SHOP_TIMEOUT_S * 0.9 <= answer.elapsed_s < SHOP_TIMEOUT_S + SLACK_S
    shop.state.delay_s = 0
    assert_token_for(await fetch(sidecar, "/editor/mug", headers=as_customer("patient")), "patient")


@pytest.mark.parametrize("prefix", ["/page", "/editor"])
@pytest.mark.parametrize(
    ("fault", "least_s"),
    [("reset", 0.0), ("hang", SHOP_TIMEOUT_S * 0.9)],
)
async def test_shop_breaking_off_mid_body_cuts_the_client_cleanly(
    emulator: RunningEmulator,
    make_sidecar: SidecarFactory,
    misbehaving: tuple[Misbehaving, TestServer],
    prefix: str,
    fault: str,
    least_s: float,
) -> None:
    """Headers were out: the client's connection is cut mid-body (no 500), within the read timeout."""
    _, server = misbehaving
    sidecar = await make_sidecar(
        config(str(server.make_url("")).rstrip("/"), emulator.url, editor_paths=["/editor/*"])
    )
    answer = await fetch(sidecar, f"{prefix}/{fault}", headers=as_customer("cut"))
    assert (answer.status, answer.cut) == (200, True)
    assert least_s <= answer.elapsed_s < SHOP_TIMEOUT_S + SLACK_S
    assert (await fetch(sidecar, "/plain")).body == b"fine"


@pytest.mark.parametrize("fault", ["truncated-gzip", "corrupt-gzip"])
async def test_broken_gzip_editor_page_is_a_502_not_served_as_whole(
    emulator: RunningEmulator,
    make_sidecar: SidecarFactory,
    misbehaving: tuple[Misbehaving, TestServer],
    fault: str,
) -> None:
    """A gzip editor page that cannot be decoded (found before anything was sent): a clean 502."""
    _, server = misbehaving
    sidecar = await make_sidecar(config(str(server.make_url("")).rstrip("/"), emulator.url))
    answer = await fetch(sidecar, f"/editor/{fault}", headers=as_customer("gz"))
    assert (answer.status, answer.cut, answer.body) == (
        502,
        False,
        b"bad gateway: the shop's answer broke off\n",
    )
    assert answer.elapsed_s < SLACK_S
    assert (await fetch(sidecar, "/plain")).body == b"fine"


@pytest.mark.parametrize("fault", ["truncated-gzip", "corrupt-gzip"])
async def test_broken_gzip_elsewhere_passes_through_byte_for_byte(
    emulator: RunningEmulator,
    make_sidecar: SidecarFactory,
    misbehaving: tuple[Misbehaving, TestServer],
    fault: str,
) -> None:
    """Off the editor paths the sidecar does not decode: the shop's bytes reach the client as sent."""
    _, server = misbehaving
    sidecar = await make_sidecar(config(str(server.make_url("")).rstrip("/"), emulator.url))
    direct = await fetch(server, f"/page/{fault}", decompress=False)
    answer = await fetch(sidecar, f"/page/{fault}", decompress=False)
    assert (answer.status, answer.cut) == (200, False)
    assert answer.body == direct.body
    assert answer.headers["Content-Encoding"] == "gzip"


WS_HANDSHAKE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def answer_with_status(request: web.Request) -> web.Response:
    """A shop page that ignores the upgrade and answers with the status its path names."""
    return web.Response(status=int(request.match_info["status"]), text="no sockets here")


@pytest.mark.parametrize(
    ("shop_status", "status", "body"),
    [
        (200, 502, b"bad gateway: the shop did not accept the WebSocket\n"),
        (204, 502, b"bad gateway: the shop did not accept the WebSocket\n"),
        (403, 403, b"shop refused the WebSocket\n"),
        (503, 503, b"shop refused the WebSocket\n"),
    ],
)
async def test_shop_answering_a_websocket_upgrade_without_101(
    emulator: RunningEmulator,
    make_sidecar: SidecarFactory,
    aiohttp_server: Any,
    shop_status: int,
    status: int,
    body: bytes,
) -> None:
    """A shop that answers an upgrade with an ordinary response: 502 for a 2xx, its own 4xx/5xx kept."""
    app = web.Application()
    app.router.add_get("/ws/{status}", answer_with_status)
    server = await aiohttp_server(app)
    sidecar = await make_sidecar(config(str(server.make_url("")).rstrip("/"), emulator.url))
    answer = await fetch(sidecar, f"/ws/{shop_status}", headers=WS_HANDSHAKE)
    assert (answer.status, answer.body) == (status, body)
