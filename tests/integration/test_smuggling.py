"""Request smuggling and desync: exact bytes from an untrusted client, through the sidecar, to a recording shop.

Every test sends raw bytes from 127.0.0.1 (outside trusted_networks unless it says otherwise) and
asserts what the shop received: the bytes, and the requests a server would execute from them.
nginx ``proxy_pass`` on the same input is the baseline each docstring names (docs/security.md,
"Request smuggling").
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

import brotli
import pytest
from aiohttp.test_utils import BaseTestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.upstream_http import ConnectionBroken, HttpPool
from tests.fixtures.recording import RecordingUpstream
from tests.fixtures.shop import SidecarFactory, sidecar_config
from tests.unit.test_upstream_http import body_of

DEAD_API = "http://127.0.0.1:9"
VICTIM = b"victim-42"
# What an attacker wants the shop to execute as a second request on the sidecar's connection.
SMUGGLED = (
    b"POST /account/delete HTTP/1.1\r\nHost: g.test\r\nX-Shop-User: victim-42\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\nContent-Length: 0\r\n\r\n"
)
ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
}


def config(upstream: RecordingUpstream, **storefront: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "hosts": ["g.test"],
        "user": {"header": "X-Shop-User"},
        "trusted_networks": ["10.0.0.0/8"],
        "editor_paths": ["/editor/*"],
    }
    options.update(storefront)
    return sidecar_config(upstream.url, DEAD_API, **options)


@pytest.fixture
async def sidecar(recording_upstream: RecordingUpstream, make_sidecar: SidecarFactory) -> BaseTestServer:
    return await make_sidecar(config(recording_upstream))


async def exchange(server: BaseTestServer, data: bytes, *, timeout_s: float = 5.0) -> bytes:
    """Send ``data`` on one connection and read until the sidecar closes it (send Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=timeout_s)
    finally:
        writer.close()


def status_line(answer: bytes) -> bytes:
    return answer.partition(b"\r\n")[0]


# -- request bodies are relayed byte for byte ------------------------------------------------


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
async def test_compressed_body_reaches_the_shop_as_sent_and_smuggles_nothing(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream, encoding: str
) -> None:
    """A compressed upload goes upstream compressed, under its own length: the request inside it is never executed.

    The probe's finding: decoded bytes went out under the compressed Content-Length, and the
    shop executed what lay past it, ``X-Shop-User: victim-42`` included. nginx forwards the
    compressed bytes unchanged: one request.
    """
    body = ENCODERS[encoding](b"A" * 132 + SMUGGLED)
    head = (
        f"POST /upload HTTP/1.1\r\nHost: g.test\r\nContent-Encoding: {encoding}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = await exchange(sidecar, head + body)
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [received] = recording_upstream.requests
    assert received.body == body
    assert received.header("Content-Encoding") == [encoding.encode()]
    assert received.header("Content-Length") == [str(len(body)).encode()]
    assert received.header("X-Shop-User") == []


async def test_chunked_compressed_body_reaches_the_shop_as_sent(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream
) -> None:
    """A chunked gzip upload is re-chunked, never decoded: the shop reads the client's compressed bytes."""
    body = gzip.compress(b"A" * 132 + SMUGGLED)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])) + b"0\r\n\r\n"
    head = (
        b"POST /upload HTTP/1.1\r\nHost: g.test\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    answer = await exchange(sidecar, head + chunked)
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [received] = recording_upstream.requests
    assert received.body == body
    assert VICTIM not in recording_upstream.raw


async def test_the_pool_never_writes_past_the_announced_length(recording_upstream: RecordingUpstream) -> None:
    """A body source longer than its Content-Length: the surplus is never written, the request fails."""
    pool = HttpPool("127.0.0.1", recording_upstream.port, connect_timeout=1, read_timeout=1)
    head = b"POST /upload HTTP/1.1\r\nHost: g.test\r\nContent-Length: 5\r\n\r\n"
    try:
        with pytest.raises(ConnectionBroken):
            await pool.request("POST", head, body_of(b"hello" + SMUGGLED), 5)
    finally:
        await pool.close()
    assert recording_upstream.raw == head
    assert recording_upstream.requests == []


# Framing from the client: bodies, their encodings, Content-Length or chunked in any split.
framings = st.fixed_dictionaries(
    {
        "body": st.binary(max_size=300),
        "encoding": st.sampled_from([None, "gzip", "deflate", "br", "identity", "gzip, deflate"]),
        "encode": st.booleans(),
        "chunked": st.booleans(),
        "splits": st.lists(st.integers(min_value=1, max_value=64), max_size=6),
    }
)


def client_request(index: int, framing: dict[str, Any], last: bool) -> tuple[bytes, bytes]:
    """One request's bytes as a client frames it, and the body a shop must receive."""
    body: bytes = framing["body"]
    encoding = framing["encoding"]
    if encoding in ENCODERS and framing["encode"]:
        body = ENCODERS[encoding](body + SMUGGLED)
    head = f"POST /upload/{index} HTTP/1.1\r\nHost: g.test\r\n"
    if encoding is not None:
        head += f"Content-Encoding: {encoding}\r\n"
    if last:
        head += "Connection: close\r\n"
    if not framing["chunked"]:
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body, body
    parts, at = [], 0
    for size in framing["splits"]:
        if at < len(body):
            parts.append(body[at : at + size])
            at += size
    if at < len(body):
        parts.append(body[at:])
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts if part)
    return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n", body


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(requests=st.lists(framings, min_size=1, max_size=3))
async def test_the_shop_executes_exactly_the_clients_requests_with_their_bodies(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream, requests: list[dict[str, Any]]
) -> None:
    """Pipelined requests in any framing: the shop executes each one once, with the identical body, nothing else."""
    before = len(recording_upstream.requests)
    data, bodies = b"", []
    for index, framing in enumerate(requests):
        raw, body = client_request(index, framing, last=index == len(requests) - 1)
        data += raw
        bodies.append(body)
    answer = await exchange(sidecar, data)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == len(requests)
    received = recording_upstream.requests[before:]
    assert [request.target for request in received] == [f"/upload/{i}".encode() for i in range(len(requests))]
    assert [request.body for request in received] == bodies
    assert all(connection.parse_error is None for connection in recording_upstream.connections)
    # (The bytes themselves may hold "victim-42": brotli keeps short inputs literally.)
    assert [request.header("X-Shop-User") for request in received] == [[] for _ in requests]


# -- Host and the request target -------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        b"g.test:@evil.example",
        b"g.test:80 evil.example",
        b"g.test:/evil.example",
        b"g.test:1,evil.example",
        b"g.test:x",
        b"",
    ],
)
async def test_a_host_that_is_not_host_and_port_is_refused(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream, host: bytes
) -> None:
    """Junk after the host name is 400 and nothing reaches the shop (the probe saw each reach it as Host; nginx: 400)."""
    answer = await exchange(sidecar, b"GET /a HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert status_line(answer) == b"HTTP/1.1 400 Bad Request"
    assert recording_upstream.raw == b""


async def test_the_shop_receives_the_host_that_was_matched(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream
) -> None:
    """The client's spelling is normalised: lower case, no trailing dot, the port kept."""
    answer = await exchange(sidecar, b"GET /a HTTP/1.1\r\nHost: G.Test.:8080\r\nConnection: close\r\n\r\n")
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [received] = recording_upstream.requests
    assert received.header("Host") == [b"g.test:8080"]
    assert received.header("X-Forwarded-Host") == [b"g.test:8080"]


async def test_absolute_form_goes_upstream_in_origin_form_with_its_own_host(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream
) -> None:
    """``GET http://g.test/a`` with ``Host: evil.example``: the shop gets ``GET /a`` and ``Host: g.test`` (RFC 9112 3.2.2; nginx alike)."""
    answer = await exchange(
        sidecar, b"GET http://g.test/a?b=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [received] = recording_upstream.requests
    assert received.target == b"/a?b=1"
    assert received.header("Host") == [b"g.test"]
    assert b"evil.example" not in recording_upstream.raw


async def test_an_absolute_form_host_must_match_a_storefront(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream
) -> None:
    """An absolute-form target naming another host is 421 however right the Host header is."""
    answer = await exchange(
        sidecar, b"GET http://evil.example/a HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n"
    )
    assert status_line(answer) == b"HTTP/1.1 421 Misdirected Request"
    assert recording_upstream.raw == b""


async def test_connect_is_refused_and_nothing_after_it_is_executed(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream
) -> None:
    """CONNECT is 405 and the connection closes: neither it nor a request behind it reaches the shop (nginx: 400)."""
    answer = await exchange(
        sidecar,
        b"CONNECT g.test:443 HTTP/1.1\r\nHost: g.test\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: g.test\r\nX-Shop-User: victim-42\r\n\r\n",
    )
    assert status_line(answer) == b"HTTP/1.1 405 Method Not Allowed"
    assert answer.count(b"HTTP/1.1 ") == 1
    assert recording_upstream.raw == b""


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
async def test_a_version_other_than_1x_gets_505_in_http_1_1(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream, version: bytes
) -> None:
    """The answer's status line is one an HTTP/1.x client reads; nothing reaches the shop."""
    answer = await exchange(sidecar, b"GET /a " + version + b"\r\nHost: g.test\r\n\r\n")
    assert status_line(answer) == b"HTTP/1.1 505 HTTP Version Not Supported"
    assert recording_upstream.raw == b""


async def test_a_websocket_handshake_with_a_body_is_refused(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream
) -> None:
    """A handshake announcing 64 body bytes is 400: the shop never gets framing the sidecar does not relay."""
    answer = await exchange(
        sidecar,
        b"GET /ws HTTP/1.1\r\nHost: g.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Content-Length: 64\r\n\r\n" + b"x" * 64,
    )
    assert status_line(answer) == b"HTTP/1.1 400 Bad Request"
    assert recording_upstream.raw == b""


# -- headers from untrusted peers ------------------------------------------------------------

SPOOFED = (
    b"X_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Host: evil.example\r\nX_Forwarded_Proto: https\r\n"
    b"X_Shop_User: victim-42\r\nX-Real-IP: 6.6.6.7\r\nX-Forwarded-Port: 6666\r\n"
    b"X-Forwarded-Prefix: /evil\r\nForwarded: for=6.6.6.8\r\nX_Custom: kept-only-when-allowed\r\n"
)


def header_names(raw: bytes) -> list[bytes]:
    head = raw.partition(b"\r\n\r\n")[0]
    return [line.partition(b":")[0].lower() for line in head.split(b"\r\n")[1:]]


async def test_underscored_and_client_address_headers_from_outside_never_reach_the_shop(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream
) -> None:
    """Every header name with ``_`` goes (nginx's default), and X-Real-IP, X-Forwarded-* and Forwarded go in every spelling."""
    answer = await exchange(
        sidecar, b"GET /a HTTP/1.1\r\nHost: g.test\r\n" + SPOOFED + b"Connection: close\r\n\r\n"
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    names = header_names(recording_upstream.raw)
    assert [name for name in names if b"_" in name] == []
    assert b"x-real-ip" not in names
    assert b"forwarded" not in names
    assert sorted(name for name in names if name.startswith(b"x-forwarded-")) == [
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    ]
    for spoofed in (b"6.6.6.", b"evil", b"https", VICTIM, b"6666"):
        assert spoofed not in recording_upstream.raw


async def test_underscores_in_headers_lets_other_names_through_but_never_the_forwarded_ones(
    recording_upstream: RecordingUpstream, make_sidecar: SidecarFactory
) -> None:
    """With ``underscores_in_headers: true`` a plain ``X_Custom`` passes; the identity and forwarding headers still go."""
    sidecar = await make_sidecar(config(recording_upstream, underscores_in_headers=True))
    answer = await exchange(
        sidecar, b"GET /a HTTP/1.1\r\nHost: g.test\r\n" + SPOOFED + b"Connection: close\r\n\r\n"
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    names = header_names(recording_upstream.raw)
    assert [name for name in names if b"_" in name] == [b"x_custom"]
    for spoofed in (b"6.6.6.", b"evil", VICTIM, b"6666"):
        assert spoofed not in recording_upstream.raw


# The identity and forwarding headers spelt with the separators lighttpd's FastCGI (every byte but
# a letter or digit), PHP's own server (".") and others read as "-" or "_": HTTP_X_SHOP_USER there.
SEPARATED = (
    b"X.Shop.User: victim-42\r\nX~Forwarded~For: 6.6.6.6\r\nX+Real+IP: 6.6.6.7\r\n"
    b"X!Forwarded!Host: evil.example\r\nX|Forwarded|Proto: https\r\nX.Custom: also-dropped\r\n"
)


@pytest.mark.parametrize("underscores", [False, True])
async def test_header_names_with_other_separators_from_outside_never_reach_the_shop(
    recording_upstream: RecordingUpstream, make_sidecar: SidecarFactory, underscores: bool
) -> None:
    """A name with ".", "~", "+", "!" or "|" goes, as nginx's ignore_invalid_headers drops it; underscores_in_headers admits "_" alone."""
    sidecar = await make_sidecar(config(recording_upstream, underscores_in_headers=underscores))
    answer = await exchange(
        sidecar,
        b"GET /a HTTP/1.1\r\nHost: g.test\r\n" + SEPARATED + b"X_Plain: kept-only-when-allowed\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [received] = recording_upstream.requests
    assert [name.lower() for name, _ in received.headers] == [
        b"host",
        *([b"x_plain"] if underscores else []),
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    ]
    for spoofed in (b"6.6.6.", b"evil", b"https", VICTIM, b"also-dropped"):
        assert spoofed not in recording_upstream.raw


async def test_a_trusted_peer_sends_the_identity_header_in_its_plain_spelling_only(
    recording_upstream: RecordingUpstream, make_sidecar: SidecarFactory
) -> None:
    """From trusted_networks X-Shop-User reaches the shop; X.Shop.User and X_Shop_User, which a CGI-style shop would read instead, never do."""
    sidecar = await make_sidecar(config(recording_upstream, trusted_networks=["127.0.0.0/8"]))
    answer = await exchange(
        sidecar,
        b"GET /a HTTP/1.1\r\nHost: g.test\r\nx-SHOP-user: alice\r\nX.Shop.User: victim-42\r\n"
        b"X_Shop_User: victim-42\r\nX.Forwarded.Proto: https\r\nConnection: close\r\n\r\n",
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [received] = recording_upstream.requests
    assert received.header("X-Shop-User") == [b"alice"]
    assert received.header("X-Forwarded-Proto") == [b"https"]
    assert VICTIM not in recording_upstream.raw
    assert [name for name, _ in received.headers if not name.replace(b"-", b"").isalnum()] == []


@pytest.mark.parametrize("underscores", [False, True])
async def test_an_identity_header_configured_with_dots_goes_in_every_spelling_from_outside(
    recording_upstream: RecordingUpstream, make_sidecar: SidecarFactory, underscores: bool
) -> None:
    """user.header X.Shop.User: a client's X-Shop-User, X_Shop_User or X~Shop~User (one header to
    lighttpd's FastCGI) never reaches the shop, underscores_in_headers or not."""
    document = config(recording_upstream, user={"header": "X.Shop.User"}, underscores_in_headers=underscores)
    sidecar = await make_sidecar(document)
    answer = await exchange(
        sidecar,
        b"GET /a HTTP/1.1\r\nHost: g.test\r\nX-Shop-User: victim-42\r\nX_Shop_User: victim-42\r\n"
        b"X~Shop~User: victim-42\r\nX.Shop.User: victim-42\r\nConnection: close\r\n\r\n",
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    assert VICTIM not in recording_upstream.raw


async def test_a_trusted_peer_sends_an_identity_header_configured_with_dots_in_that_spelling_only(
    recording_upstream: RecordingUpstream, make_sidecar: SidecarFactory
) -> None:
    """user.header X.Shop.User from trusted_networks: that spelling (the one read as the customer)
    reaches the shop, and an X-Shop-User beside it, which a CGI-style shop would read too, does not."""
    document = config(recording_upstream, user={"header": "X.Shop.User"}, trusted_networks=["127.0.0.0/8"])
    sidecar = await make_sidecar(document)
    answer = await exchange(
        sidecar,
        b"GET /a HTTP/1.1\r\nHost: g.test\r\nx.SHOP.user: alice\r\nX-Shop-User: victim-42\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [received] = recording_upstream.requests
    assert received.header("X.Shop.User") == [b"alice"]
    assert VICTIM not in recording_upstream.raw


async def test_a_trusted_peer_keeps_its_client_address_headers(
    recording_upstream: RecordingUpstream, make_sidecar: SidecarFactory
) -> None:
    """From trusted_networks, X-Real-IP, X-Forwarded-Port and Forwarded pass as sent (the ingress set them)."""
    sidecar = await make_sidecar(config(recording_upstream, trusted_networks=["127.0.0.0/8"]))
    answer = await exchange(
        sidecar,
        b"GET /a HTTP/1.1\r\nHost: g.test\r\nX-Real-IP: 203.0.113.7\r\nX-Forwarded-Port: 443\r\n"
        b"Forwarded: for=203.0.113.7\r\nConnection: close\r\n\r\n",
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [received] = recording_upstream.requests
    assert received.header("X-Real-IP") == [b"203.0.113.7"]
    assert received.header("X-Forwarded-Port") == [b"443"]
    assert received.header("Forwarded") == [b"for=203.0.113.7"]


# -- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        b"/.cc-sidecar;x/token",
        b"/.cc-sidecar./token",
        b"/.cc-sidecar%20/token",
        b"/x\\..\\.cc-sidecar/token",
        b"/x%5c..%5c.cc-sidecar/token",
        b"/%252ecc-sidecar/token",
        b"/.cc-sidecar%09/token",
        b"/%c0%ae%63c-sidecar/token",
        b"/%u002ecc-sidecar/token",
        b"/%25252ecc-sidecar/token",
        b"/.cc-sidecar::$DATA/token",
    ],
)
async def test_no_spelling_of_the_sidecars_paths_is_forwarded(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream, path: bytes
) -> None:
    """Paths a lenient server (Tomcat, IIS, NTFS, an overlong-UTF-8 or repeated decoder) reads as /.cc-sidecar/ are answered here, never forwarded."""
    answer = await exchange(
        sidecar, b"GET " + path + b" HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n"
    )
    assert status_line(answer) == b"HTTP/1.1 404 Not Found"
    assert recording_upstream.raw == b""


async def test_a_nul_in_the_path_is_refused(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream
) -> None:
    """``%00`` ends a path early on some servers and not on others: 400, never forwarded."""
    answer = await exchange(sidecar, b"GET /.cc-sidecar%00/token HTTP/1.1\r\nHost: g.test\r\n\r\n")
    assert status_line(answer) == b"HTTP/1.1 400 Bad Request"
    assert recording_upstream.raw == b""


@pytest.mark.parametrize(
    ("path", "editor"),
    [
        (b"/editor/mug", True),
        (b"/editor/caf%C3%A9", True),
        (b"/editor/mug;jsessionid=1", False),
        (b"/editor/..%5cprofile", False),
        (b"/editor/a%2fb", False),
        (b"/editor/..;/account", False),
        (b"/blog/%252e%252e/editor/a", False),
        (b"/blog/..;/editor/a", False),
        (b"/editor/a.", False),
        (b"/editor/a%20", False),
        (b"/editor/a/..", False),
        (b"/a/../editor/mug", False),
    ],
)
async def test_editor_pages_are_judged_on_the_path_the_shop_routes(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream, path: bytes, editor: bool
) -> None:
    """An editor GET loses its If-None-Match (the shop must send a page to inject into); a path servers read differently is never one.

    gunicorn routes ``/blog/%252e%252e/editor/a`` and ``/blog/..;/editor/a`` as /blog pages, nginx
    collapses ``/a/../editor/mug``, Tomcat drops ``;jsessionid``: no token goes where they disagree.
    """
    answer = await exchange(
        sidecar,
        b"GET " + path + b' HTTP/1.1\r\nHost: g.test\r\nIf-None-Match: "v1"\r\nConnection: close\r\n\r\n',
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    [received] = recording_upstream.requests
    assert received.target == path
    assert received.header("If-None-Match") == ([] if editor else [b'"v1"'])


async def test_a_fragment_in_the_target_is_refused(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream
) -> None:
    """``/a#/../../.cc-sidecar/token``: a request target has no fragment (RFC 9112 3.2); 400, never forwarded."""
    answer = await exchange(sidecar, b"GET /a#/../../.cc-sidecar/token HTTP/1.1\r\nHost: g.test\r\n\r\n")
    assert status_line(answer) == b"HTTP/1.1 400 Bad Request"
    assert recording_upstream.raw == b""


async def test_trace_is_refused(sidecar: BaseTestServer, recording_upstream: RecordingUpstream) -> None:
    """TRACE would have the shop echo the request's cookies into a page: 405, never forwarded (nginx: 405)."""
    answer = await exchange(sidecar, b"TRACE /a HTTP/1.1\r\nHost: g.test\r\nContent-Length: 0\r\n\r\n")
    assert status_line(answer) == b"HTTP/1.1 405 Method Not Allowed"
    assert recording_upstream.raw == b""


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate, chunked", b"identity, chunked"])
async def test_a_transfer_coding_besides_chunked_is_refused(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream, coding: bytes
) -> None:
    """aiohttp would remove only the chunking and the shop get a gzip body labelled as nothing: 501 (nginx: 501)."""
    body = gzip.compress(b"hello")
    answer = await exchange(
        sidecar,
        b"POST /u HTTP/1.1\r\nHost: g.test\r\nTransfer-Encoding: "
        + coding
        + b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
    )
    assert status_line(answer) == b"HTTP/1.1 501 Not Implemented"
    assert recording_upstream.raw == b""


@pytest.mark.parametrize("method", [b"DELETE", b"POST", b"HEAD"])
async def test_a_websocket_handshake_is_a_get(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream, method: bytes
) -> None:
    """``DELETE /account`` with Upgrade: websocket is 400: it would reach the shop as a GET handshake (RFC 6455 4.1)."""
    answer = await exchange(
        sidecar,
        method + b" /account HTTP/1.1\r\nHost: g.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert status_line(answer) == b"HTTP/1.1 400 Bad Request"
    assert recording_upstream.raw == b""


async def test_client_address_and_rewritten_url_headers_from_outside_never_reach_the_shop(
    sidecar: BaseTestServer, recording_upstream: RecordingUpstream
) -> None:
    """CDN client-address headers and IIS's X-Original-URL / X-Rewrite-URL (Symfony routes by them) go from untrusted peers."""
    claims = [
        b"X-Client-IP",
        b"Client-IP",
        b"True-Client-IP",
        b"CF-Connecting-IP",
        b"Fastly-Client-IP",
        b"X-Cluster-Client-IP",
        b"X-Original-Forwarded-For",
        b"X-Original-URL",
        b"X-Rewrite-URL",
    ]
    head = b"".join(name + b": 6.6.6.6\r\n" for name in claims)
    answer = await exchange(
        sidecar, b"GET /a HTTP/1.1\r\nHost: g.test\r\n" + head + b"Connection: close\r\n\r\n"
    )
    assert status_line(answer) == b"HTTP/1.1 200 OK"
    assert b"6.6.6.6" not in recording_upstream.raw
