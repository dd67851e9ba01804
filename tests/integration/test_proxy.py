"""The sidecar as a transparent reverse proxy, between a real client and the fake shop."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.fixtures.process import free_port
from tests.fixtures.shop import Shop, SidecarFactory, pattern_bytes, sidecar_config

# Nothing listens here: editor pages would fail to get a token, plain pages never ask.
DEAD_API = "http://127.0.0.1:9"
MB = 1024 * 1024


@pytest.fixture
async def proxy(shop: Shop, make_sidecar: SidecarFactory) -> Any:
    return await make_sidecar(sidecar_config(shop.url, DEAD_API, trusted_networks=["10.0.0.0/8"]))


async def test_get_passes_through_with_status_body_and_headers(proxy: Any, shop: Shop) -> None:
    """A plain GET reaches the shop and its answer comes back unchanged."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.make_url("/plain?x=1")) as response,
    ):
        assert response.status == 200
        assert await response.text() == "hello from the shop"
        assert response.headers["ETag"] == '"plain-1"'
    assert shop.state.last().path_qs == "/plain?x=1"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_is_forwarded(proxy: Any, shop: Shop, method: str) -> None:
    """Each method reaches the shop as sent."""
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, proxy.make_url("/anything"), data=b"abc") as response,
    ):
        assert response.status == 200
    assert shop.state.last().method == method
    assert shop.state.last().body_length == 3


async def test_percent_encoded_path_reaches_shop_unchanged(proxy: Any, shop: Shop) -> None:
    """The raw path (percent-encoding included) is what the shop sees."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.make_url("/a%2Fb/c%20d?q=%26")) as response,
    ):
        assert response.status == 200
    assert shop.state.last().path_qs == "/a%2Fb/c%20d?q=%26"


@pytest.mark.slow
async def test_50mb_upload_is_streamed_byte_identical(proxy: Any, shop: Shop) -> None:
    """A 50 MB upload arrives intact, and the proxy never holds it (Python allocations stay small)."""
    body = pattern_bytes(50 * MB)
    expected = hashlib.sha256(body).hexdigest()

    async def chunks() -> Any:
        view = memoryview(body)
        for start in range(0, len(body), 256 * 1024):
            yield bytes(view[start : start + 256 * 1024])

    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.post(proxy.make_url("/upload-sha"), data=chunks()) as response,
        ):
            answer = await response.json()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer == {"sha256": expected, "length": 50 * MB}
    assert peak < 8 * MB, f"peak Python allocations {peak / MB:.1f} MB: the body was buffered"


@pytest.mark.slow
async def test_50mb_download_is_streamed_byte_identical(proxy: Any) -> None:
    """A 50 MB download arrives intact without the proxy holding it."""
    expected = hashlib.sha256(pattern_bytes(50 * MB)).hexdigest()
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(proxy.make_url(f"/download/{50 * MB}")) as response,
        ):
            assert response.headers["Content-Length"] == str(50 * MB)
            async for chunk in response.content.iter_chunked(256 * 1024):
                digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == expected
    assert peak < 8 * MB, f"peak Python allocations {peak / MB:.1f} MB: the body was buffered"


async def test_websocket_echo_and_close_code_pass_through(proxy: Any) -> None:
    """Text and binary frames go both ways and the shop's close code reaches the client."""
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(proxy.make_url("/ws"), protocols=("chat",)) as ws,
    ):
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert (await ws.receive()).data == "echo:hi"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive()).data == b"\x03\x02\x01"
        await ws.send_str("close")
        message = await ws.receive()
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 4001
        assert message.extra == "shop says bye"


async def test_sse_headers_and_each_event_arrive_before_the_next_is_produced(proxy: Any, shop: Shop) -> None:
    """The stream's headers, then each server-sent event, reach the client while the shop waits."""
    received = []
    async with aiohttp.ClientSession() as client:
        # The shop writes its first event only once the test, holding the headers, says so.
        response = await asyncio.wait_for(client.get(proxy.make_url("/sse")), timeout=3)
        async with response:
            assert response.headers["Content-Type"] == "text/event-stream"
            shop.state.sse_ack.put_nowait(None)
            buffer = b""
            while len(received) < 3:
                buffer += await asyncio.wait_for(response.content.readany(), timeout=3)
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    received.append(event.decode())
                    shop.state.sse_ack.put_nowait(None)
    assert received == [f"id: {n}\ndata: event {n}" for n in range(3)]


async def test_hop_by_hop_request_headers_are_dropped(proxy: Any, shop: Shop) -> None:
    """Connection, the headers it names, Keep-Alive, TE, Trailer, Upgrade and Proxy-* never reach the shop."""
    headers = {
        "Connection": "keep-alive, X-Client-Hop",
        "X-Client-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Trailer": "X-T",
        "Upgrade": "h2c",
        "Proxy-Authorization": "Basic abc",
        "Proxy-Connection": "keep-alive",
        "X-End-To-End": "kept",
    }
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.make_url("/plain"), headers=headers) as response,
    ):
        assert response.status == 200
    seen = {name.lower() for name in shop.state.last().headers}
    for name in (
        "x-client-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ):
        assert name not in seen
    assert shop.state.header("X-End-To-End") == ["kept"]


async def test_hop_by_hop_response_headers_are_dropped(proxy: Any) -> None:
    """The shop's Connection-named header and Keep-Alive never reach the client; others do."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.make_url("/headers")) as response,
    ):
        assert "X-Shop-Hop" not in response.headers
        assert "Keep-Alive" not in response.headers
        assert response.headers["X-Kept"] == "yes"


async def test_forwarded_headers_are_set(proxy: Any, shop: Shop) -> None:
    """X-Forwarded-For is the peer, -Proto http, -Host the client's Host."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.make_url("/plain"), headers={"Host": "shop.test:8443"}) as response,
    ):
        assert response.status == 200
    assert shop.state.header("X-Forwarded-For") == ["127.0.0.1"]
    assert shop.state.header("X-Forwarded-Proto") == ["http"]
    assert shop.state.header("X-Forwarded-Host") == ["shop.test:8443"]
    assert shop.state.header("Host") == ["shop.test:8443"]


async def test_spoofed_forwarded_headers_from_untrusted_peer_are_replaced(proxy: Any, shop: Shop) -> None:
    """An untrusted client's X-Forwarded-* are replaced by what the sidecar saw."""
    spoofed = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil",
        "Forwarded": "for=6.6.6.6",
    }
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.make_url("/plain"), headers=spoofed) as response,
    ):
        assert response.status == 200
    assert shop.state.header("X-Forwarded-For") == ["127.0.0.1"]
    assert shop.state.header("X-Forwarded-Proto") == ["http"]
    assert shop.state.header("X-Forwarded-Host") != ["evil"]
    assert shop.state.header("Forwarded") == []


async def test_trusted_peer_keeps_its_forwarded_for_chain(shop: Shop, make_sidecar: SidecarFactory) -> None:
    """From trusted_networks the client's X-Forwarded-For is kept and the peer appended."""
    proxy = await make_sidecar(sidecar_config(shop.url, DEAD_API, trusted_networks=["127.0.0.0/8"]))
    async with (
        aiohttp.ClientSession() as client,
        client.get(
            proxy.make_url("/plain"),
            headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"},
        ) as response,
    ):
        assert response.status == 200
    assert shop.state.header("X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert shop.state.header("X-Forwarded-Proto") == ["https"]


async def test_redirects_and_set_cookies_are_untouched(proxy: Any) -> None:
    """A 302 is passed to the client (not followed) with every Set-Cookie."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.make_url("/redirect"), allow_redirects=False) as response,
    ):
        assert response.status == 302
        assert response.headers["Location"] == "/plain"
        assert response.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


async def test_unreachable_shop_gives_502(make_sidecar: SidecarFactory) -> None:
    """With nothing listening upstream the client gets 502 with a short body."""
    proxy = await make_sidecar(sidecar_config(f"http://127.0.0.1:{free_port()}", DEAD_API))
    async with aiohttp.ClientSession() as client, client.get(proxy.make_url("/plain")) as response:
        assert response.status == 502
        assert "shop did not answer" in await response.text()


async def test_slow_shop_gives_504(proxy: Any) -> None:
    """No response headers within upstream_timeout_s: 504."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.make_url("/slow?s=3")) as response,
    ):
        assert response.status == 504
        assert "too slow" in await response.text()


async def test_unknown_host_gets_421(shop: Shop, make_sidecar: SidecarFactory) -> None:
    """A Host that no storefront lists is refused with 421 and never forwarded."""
    proxy = await make_sidecar(sidecar_config(shop.url, DEAD_API, hosts=["shop.example.com"]))
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/plain"), headers={"Host": "other.example.com"}) as response:
            assert response.status == 421
        async with client.get(
            proxy.make_url("/plain"), headers={"Host": "SHOP.example.com:8080"}
        ) as response:
            assert response.status == 200
    assert len(shop.state.requests) == 1


async def test_sidecar_paths_are_never_forwarded(proxy: Any, shop: Shop) -> None:
    """Paths under /.cc-sidecar/ in any spelling are answered by the sidecar, not the shop."""
    async with aiohttp.ClientSession() as client:
        for path in (
            "/.cc-sidecar/other",
            "/.CC-SIDECAR/token",
            "//.cc-sidecar/x",
            "/a/../.cc-sidecar/x",
            "/%2Ecc-sidecar/x",
        ):
            raw = URL(str(proxy.make_url("")).rstrip("/") + path, encoded=True)
            async with client.get(raw) as response:
                assert response.status == 404, path
    assert shop.state.requests == []


async def raw_exchange(url: URL, head: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a plain connection to the sidecar and send ``head`` (request line and headers)."""
    assert url.host is not None
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(head)
    await writer.drain()
    return reader, writer


async def status_line_of(url: URL, head: bytes) -> bytes:
    """Send ``head`` on a plain connection to the sidecar; return the first line of its answer."""
    reader, writer = await raw_exchange(url, head)
    try:
        return await asyncio.wait_for(reader.readline(), timeout=3)
    finally:
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent(proxy: Any, shop: Shop) -> None:
    """A client that waits for 100 Continue gets it, then sends its body, which reaches the shop."""
    head = (
        b"POST /upload-sha HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    reader, writer = await raw_exchange(proxy.make_url("/"), head)
    try:
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=3)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        status_line = await asyncio.wait_for(reader.readline(), timeout=3)
        assert status_line == b"HTTP/1.1 200 OK\r\n"
    finally:
        writer.close()
    assert shop.state.last().body_length == 5
    assert "Expect" not in shop.state.last().headers


async def test_an_unknown_expectation_is_refused_with_417(proxy: Any, shop: Shop) -> None:
    """Any Expect other than 100-continue is 417, and nothing reaches the shop."""
    head = b"POST /upload-sha HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nExpect: teapot\r\n\r\n"
    status_line = await status_line_of(proxy.make_url("/"), head)
    assert status_line == b"HTTP/1.1 417 Expectation Failed\r\n"
    assert shop.state.requests == []


async def test_options_asterisk_reaches_a_prefixed_shop_as_an_asterisk(
    shop: Shop, make_sidecar: SidecarFactory
) -> None:
    """``OPTIONS *`` asks about the server: the shop gets ``*``, not the upstream's path prefix and a star."""
    sidecar = await make_sidecar(sidecar_config(shop.url + "/base", DEAD_API))
    head = b"OPTIONS * HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0\r\n\r\n"
    await status_line_of(sidecar.make_url("/"), head)
    assert shop.state.last().path_qs == "*"


async def test_a_non_utf8_header_beside_the_token_cookie_is_forwarded_without_the_cookie(
    proxy: Any, shop: Shop
) -> None:
    """A Latin-1 byte in a header never makes a 500: the request goes on, less the token cookie."""
    head = (
        b"GET /plain HTTP/1.1\r\nHost: shop.test\r\nX-Odd: caf\xe9\r\n"
        b"Cookie: a=1; cc_user_token=secret; b=2\r\nConnection: close\r\n\r\n"
    )
    status_line = await status_line_of(proxy.make_url("/"), head)
    assert status_line == b"HTTP/1.1 200 OK\r\n"
    assert shop.state.header("Cookie") == ["a=1; b=2"]
    assert shop.state.header("X-Odd") == ["caf\udce9"]
