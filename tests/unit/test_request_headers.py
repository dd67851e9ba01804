"""The request head's fast path for ordinary headers gives exactly what the full rules give.

``Upstream.request_headers`` passes a header on after one look when nothing in its rules is about
that name (``_JUDGED_RAW``, the ``_``, the X-Forwarded- prefix, Connection, the strip keys). A rule
added below without its name in ``_JUDGED_RAW`` would be skipped for that header: here every
request is built both ways, the second with every name judged, and the two must be identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

import proxy.upstream
from proxy.upstream import OutgoingHeaders, Upstream

# Every name some rule is about, and some no rule is about.
NAMES = [
    "Host", "Content-Length", "Cookie", "Accept-Encoding", "If-None-Match", "If-Modified-Since",
    "Connection", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Expect", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
    "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port",
    "X-Forwarded-Prefix", "Forwarded", "X-Real-IP", "X-Client-IP", "True-Client-IP",
    "CF-Connecting-IP", "X-Original-URL", "X-Rewrite-URL", "X-Shop-User", "User-Agent", "Accept",
    "Referer", "If-Match", "Range",
]  # fmt: skip


@st.composite
def spellings(draw: st.DrawFn) -> bytes:
    """A header name as a client may spell it: any case, each ``-`` maybe another separator."""
    name = draw(st.sampled_from(NAMES))
    spelt = "".join(
        draw(st.sampled_from("-_.~+!")) if c == "-" else c.swapcase() if draw(st.booleans()) else c
        for c in name
    )
    return spelt.encode()


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    headers = draw(
        st.lists(st.tuples(spellings(), st.sampled_from([b"", b"1", b"a=1; cc_user_token=t"])), max_size=8)
    )
    # Connection lists names the request carries (in other spellings) as well as any others.
    carried = st.sampled_from([name.swapcase() for name, _ in headers]) if headers else spellings()
    for _ in range(draw(st.integers(0, 2))):
        listed = b", ".join(draw(st.lists(st.one_of(carried, spellings()), max_size=3)))
        headers.insert(draw(st.integers(0, len(headers))), (b"Connection", listed))
    return headers


@dataclass
class HeadView:
    """What request_headers reads of a parsed request head: its raw header lines, their multidict
    and its method."""

    raw_headers: tuple[tuple[bytes, bytes], ...]
    headers: CIMultiDictProxy[str]
    method: str = "GET"


# Every name this test spells with "-" alone (with another separator a header is judged anyway):
# patched in as _JUDGED_RAW, request_headers judges each header by its full rules. A real
# frozenset, as the compiled module checks the type.
EVERY_NAME = frozenset(name.lower().encode() for name in NAMES)


def head(raw: list[tuple[bytes, bytes]], options: dict[str, Any]) -> tuple[Any, ...]:
    message = HeadView(tuple(raw), CIMultiDictProxy(CIMultiDict((n.decode(), v.decode()) for n, v in raw)))
    outgoing: OutgoingHeaders = Upstream.request_headers(message, "203.0.113.9", target="/p", **options)
    return (outgoing.parts, outgoing.has_host, outgoing.content_length, outgoing.target)


@settings(max_examples=1000)
@given(
    raw=header_lists(),
    trusted=st.booleans(),
    underscores=st.booleans(),
    drop=st.sampled_from([(), frozenset({b"x-shop-user"})]),
    plain=st.sampled_from([(), frozenset({b"x-shop-user"}), frozenset({b"x_shop_user"})]),
    drop_conditional=st.booleans(),
    drop_cookie=st.sampled_from([None, "cc_user_token"]),
    host=st.sampled_from([None, "shop.test"]),
)
def test_an_ordinary_header_goes_as_the_full_rules_send_it(
    raw: list[tuple[bytes, bytes]], **options: Any
) -> None:
    fast = head(raw, options)
    with mock.patch.object(proxy.upstream, "_JUDGED_RAW", EVERY_NAME):
        judged = head(raw, options)
    assert fast == judged
