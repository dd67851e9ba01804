"""A whole response written in one piece: a real aiohttp shop listener, a raw socket as the client.

Each test has the listener's handler call :func:`write_whole` with the status, headers and body a
relay would give it, and asserts the exact bytes the client read, and whether the connection
stayed open for another request.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.test_utils import RawTestServer
from multidict import CIMultiDict

from proxy.app import SHOP_SERVER_OPTIONS
from proxy.client_response import CLIENT_GONE, decoded_path, parsed_head, write_whole
from proxy.errors import ClientGone

# A shop's Date, so that the bytes are the same on every run.
SHOP_DATE = ("Date", "Mon, 30 Nov 2026 06:00:00 GMT")
DATE_LINE = re.compile(rb"\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n")

Answer = tuple[int, str, list[tuple[str, str]], bytes]
ServerFactory = Callable[[Callable[[web.BaseRequest], Answer]], Awaitable[RawTestServer]]


@pytest.fixture
def listener(aiohttp_raw_server: Any) -> ServerFactory:
    """A shop listener whose every request is answered by ``write_whole`` with ``answer(request)``."""

    async def start(answer: Callable[[web.BaseRequest], Answer]) -> RawTestServer:
        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            status, reason, headers, body = answer(request)
            return await write_whole(request, status, reason, CIMultiDict(headers), body)

        server: RawTestServer = await aiohttp_raw_server(handler, **SHOP_SERVER_OPTIONS)
        return server

    return start


async def exchange(server: RawTestServer, *requests: bytes) -> tuple[bytes, bool]:
    """Send each request in turn on one socket, reading its answer; then whether the listener closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    answers = b""
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
            no_body = request.startswith(b"HEAD ") or length is None
            answers += head + (b"" if no_body else await reader.readexactly(int(length.group(1))))
        closed = await asyncio.wait_for(reader.read(1), 1) == b""
    except TimeoutError:
        closed = False
    finally:
        writer.close()
    return answers, closed


def get(method: str = "GET", version: str = "1.1", *lines: str) -> bytes:
    return "\r\n".join((f"{method} /page HTTP/{version}", "Host: shop.test", *lines, "", "")).encode()


async def test_a_page_goes_out_with_the_shops_headers_in_order_and_the_bodys_own_length(
    listener: ServerFactory,
) -> None:
    server = await listener(
        lambda _: (
            200,
            "OK",
            [
                ("Content-Type", "text/html"),
                SHOP_DATE,
                ("Server", "shop"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
            ],
            b"<p>hi</p>",
        )
    )

    answer, closed = await exchange(server, get())

    assert answer == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nDate: Mon, 30 Nov 2026 06:00:00 GMT\r\n"
        b"Server: shop\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 9\r\n\r\n<p>hi</p>"
    )
    assert not closed


async def test_a_stale_content_length_is_replaced_by_the_bodys(listener: ServerFactory) -> None:
    server = await listener(
        lambda _: (200, "OK", [("content-length", "999"), ("Content-Type", "text/plain"), SHOP_DATE], b"four")
    )

    answer, _ = await exchange(server, get())

    assert answer == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Mon, 30 Nov 2026 06:00:00 GMT\r\n"
        b"Content-Length: 4\r\nServer: " + SERVER_SOFTWARE.encode() + b"\r\n\r\nfour"
    )


async def test_date_and_server_are_added_when_the_shop_sent_none(listener: ServerFactory) -> None:
    server = await listener(lambda _: (200, "OK", [("Content-Type", "text/plain")], b"x"))

    answer, _ = await exchange(server, get())

    assert DATE_LINE.search(answer)
    assert f"\r\nServer: {SERVER_SOFTWARE}\r\n".encode() in answer


async def test_a_body_without_content_type_is_labelled_as_aiohttp_labels_a_streamed_one(
    listener: ServerFactory,
) -> None:
    server = await listener(lambda _: (200, "OK", [SHOP_DATE, ("Server", "s")], b"data"))

    answer, _ = await exchange(server, get())

    assert answer == (
        b"HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 06:00:00 GMT\r\nServer: s\r\n"
        b"Content-Length: 4\r\nContent-Type: application/octet-stream\r\n\r\ndata"
    )


async def test_an_empty_body_has_a_zero_length_and_no_content_type(listener: ServerFactory) -> None:
    server = await listener(lambda _: (200, "OK", [SHOP_DATE, ("Server", "s")], b""))

    answer, closed = await exchange(server, get(), get())

    one = b"HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 06:00:00 GMT\r\nServer: s\r\nContent-Length: 0\r\n\r\n"
    assert answer == one + one
    assert not closed


async def test_a_head_answer_keeps_the_shops_length_and_has_no_body(listener: ServerFactory) -> None:
    server = await listener(
        lambda _: (200, "OK", [("Content-Length", "1234"), SHOP_DATE, ("Server", "s")], b"")
    )

    answer, closed = await exchange(server, get("HEAD"), get("HEAD"))

    one = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nDate: Mon, 30 Nov 2026 06:00:00 GMT\r\nServer: s\r\n\r\n"
    )
    assert answer == one + one
    assert not closed


@pytest.mark.parametrize(("status", "reason"), [(204, "No Content"), (304, "Not Modified")])
async def test_a_204_or_304_has_no_length_and_no_body(
    listener: ServerFactory, status: int, reason: str
) -> None:
    server = await listener(
        lambda _: (
            status,
            reason,
            [("Content-Length", "5"), ("ETag", '"v1"'), SHOP_DATE, ("Server", "s")],
            b"",
        )
    )

    answer, closed = await exchange(server, get(), get())

    one = (
        f'HTTP/1.1 {status} {reason}\r\nETag: "v1"\r\nDate: Mon, 30 Nov 2026 06:00:00 GMT\r\nServer: s\r\n\r\n'
    ).encode()
    assert answer == one + one
    assert not closed


async def test_an_http_1_0_client_asking_for_keep_alive_is_told_and_kept(listener: ServerFactory) -> None:
    server = await listener(
        lambda _: (200, "OK", [SHOP_DATE, ("Server", "s"), ("Content-Type", "text/plain")], b"ok")
    )
    request = get("GET", "1.0", "Connection: keep-alive")

    answer, closed = await exchange(server, request, request)

    one = (
        b"HTTP/1.0 200 OK\r\nDate: Mon, 30 Nov 2026 06:00:00 GMT\r\nServer: s\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    )
    assert answer == one + one
    assert not closed


async def test_an_http_1_0_client_without_keep_alive_gets_its_page_and_the_close(
    listener: ServerFactory,
) -> None:
    server = await listener(
        lambda _: (200, "OK", [SHOP_DATE, ("Server", "s"), ("Content-Type", "text/plain")], b"ok")
    )

    answer, closed = await exchange(server, get("GET", "1.0"))

    assert answer == (
        b"HTTP/1.0 200 OK\r\nDate: Mon, 30 Nov 2026 06:00:00 GMT\r\nServer: s\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    assert closed


async def test_a_client_asking_to_close_is_told_and_closed(listener: ServerFactory) -> None:
    server = await listener(
        lambda _: (200, "OK", [SHOP_DATE, ("Server", "s"), ("Content-Type", "text/plain")], b"ok")
    )

    answer, closed = await exchange(server, get("GET", "1.1", "Connection: close"))

    assert answer.endswith(b"Content-Length: 2\r\nConnection: close\r\n\r\nok")
    assert closed


async def test_header_bytes_that_are_not_utf_8_go_out_as_the_shop_sent_them(listener: ServerFactory) -> None:
    # The shop client reads header bytes as UTF-8 with surrogateescape.
    value = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    server = await listener(lambda _: (200, "OK", [("X-Label", value), SHOP_DATE, ("Server", "s")], b""))

    answer, _ = await exchange(server, get())

    assert b"\r\nX-Label: caf\xe9 \xff\r\n" in answer


@pytest.mark.parametrize(
    ("reason", "headers"),
    [
        ("OK", [("X-Note", "a\r\nX-Injected: 1")]),
        ("OK", [("X-Note", "a\nX-Injected: 1")]),
        ("OK", [("X-Note", "a\rX-Injected: 1")]),
        ("OK\r\nX-Injected: 1", []),
        # llhttp passes these in a shop's reason phrase; aiohttp's serialiser refused them.
        ("O\x00K", []),
        ("O\x0bK\x7f", []),
        ("OK", [("X-Note", "a\x1bb")]),
    ],
)
async def test_a_line_break_in_a_header_or_the_reason_writes_nothing_of_that_response(
    listener: ServerFactory, reason: str, headers: list[tuple[str, str]]
) -> None:
    server = await listener(lambda _: (200, reason, headers, b"body"))

    answer, closed = await exchange(server, get())

    # aiohttp answers the ValueError itself: nothing of the broken head went out before it.
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"X-Injected" not in head
    assert not body.startswith(b"body")
    assert closed


async def test_an_error_after_the_write_never_adds_a_second_response(aiohttp_raw_server: Any) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        await write_whole(request, 200, "OK", CIMultiDict([SHOP_DATE, ("Server", "s")]), b"ok")
        raise RuntimeError("after the page went out")

    server = await aiohttp_raw_server(handler, **SHOP_SERVER_OPTIONS)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get())
    everything = await asyncio.wait_for(reader.read(), 5)
    writer.close()

    assert everything == (
        b"HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 06:00:00 GMT\r\nServer: s\r\nContent-Length: 2\r\n"
        b"Content-Type: application/octet-stream\r\n\r\nok"
    )


async def test_a_client_gone_before_the_write_is_client_gone_and_nothing_is_written(
    aiohttp_raw_server: Any,
) -> None:
    """A client that left while the shop answered: ClientGone (counted 499 by the handler), no write."""
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.01)
        try:
            await write_whole(request, 200, "OK", CIMultiDict(), b"late")
        except ClientGone as exc:
            outcome.set_result(exc)
            return CLIENT_GONE
        outcome.set_result(None)
        return web.Response()

    server = await aiohttp_raw_server(handler, **SHOP_SERVER_OPTIONS)
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get())
    await writer.drain()
    writer.close()

    assert isinstance(await asyncio.wait_for(outcome, 5), ClientGone)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /a%2Fb/c%20d?q=1&r=%41 HTTP/1.1\r\nHost: shop.test\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
        b"HEAD http://shop.test/p?q HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        b"GET http://shop.test HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        b"GET http://shop.test?q=1 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        b"GET //x/../y HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        b"GET /p HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"POST /form HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 2\r\n\r\nab",
        b"OPTIONS * HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        b"GET /v HTTP/2.0\r\nHost: shop.test\r\n\r\n",
    ],
)
async def test_the_parsed_head_says_what_the_requests_own_properties_say(
    aiohttp_raw_server: Any, head: bytes
) -> None:
    """parsed_head reads aiohttp's private parsed message: each field the handler reads of it
    (and decoded_path) is the request's public property, for any target form and version the
    listener takes."""
    seen: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        message = parsed_head(request)
        seen.set_result(
            (
                (
                    message.method,
                    message.path,
                    decoded_path(request, message),
                    message.headers,
                    message.raw_headers,
                ),
                (message.version, not message.should_close),
                (request.method, request.raw_path, request.path, request.headers, request.raw_headers),
                (request.version, request.keep_alive),
            )
        )
        return web.Response()

    server = await aiohttp_raw_server(handler, **SHOP_SERVER_OPTIONS)
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head)
    await writer.drain()
    fields, framing, properties, request_framing = await asyncio.wait_for(seen, 5)
    writer.close()
    assert fields == properties
    assert framing == request_framing
    assert fields[3] is properties[3]
