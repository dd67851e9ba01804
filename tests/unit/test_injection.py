"""proxy.injection: inserting the token element into HTML in chunks, decoding and encoding bodies."""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Callable

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.injection import (
    BodyDecodeError,
    ContentDecoder,
    ContentEncoder,
    HtmlInjector,
    Placements,
    decodable_accept_encoding,
    inject_html,
    inject_html_at,
    is_html,
    response_coding,
)

E = b"<!--E-->"
WS = b" \t\n\f\r"


def stream(body: bytes, sizes: list[int], element: bytes = E, **kwargs: int) -> list[bytes]:
    """Feed ``body`` in chunks of the given sizes (the rest as a last chunk); all outputs."""
    injector = HtmlInjector(element, **kwargs)
    outputs = []
    at = 0
    for size in sizes:
        outputs.append(injector.feed(body[at : at + size]))
        at += size
    outputs.append(injector.feed(body[at:]))
    outputs.append(injector.finish())
    assert injector.injected
    return outputs


# An implementation of the insertion rule written independently of proxy.injection (plain
# loops over the whole document, no regular expressions), to check the streaming one against.
RAW_TEXT = (
    b"template",
    b"noscript",
    b"title",
    b"style",
    b"textarea",
    b"xmp",
    b"iframe",
    b"noembed",
    b"noframes",
)


def oracle_tag_end(doc: bytes, pos: int) -> int | None:
    """Just past the ">" ending the tag whose attributes start at ``pos``; None if left open."""
    while pos < len(doc):
        char = doc[pos]
        if char == ord(">"):
            return pos + 1
        pos += 1
        if char == ord("="):
            while pos < len(doc) and doc[pos] in WS:
                pos += 1
            if pos < len(doc) and doc[pos] in b"\"'":
                close = doc.find(doc[pos : pos + 1], pos + 1)
                pos = len(doc) if close < 0 else close + 1
    return None


def oracle_place(doc: bytes) -> int:
    low = doc.lower()
    pos = 0
    while True:
        lt = doc.find(b"<", pos)
        if lt < 0 or lt + 1 >= len(doc):
            return 0
        after = doc[lt + 1 : lt + 2]
        if doc.startswith(b"<!--", lt):
            end = doc.find(b"-->", lt + 2)
            if end < 0:
                return 0
            pos = end + 3
            continue
        if after in (b"!", b"?") or (after == b"/" and not doc[lt + 2 : lt + 3].isalpha()):
            end = doc.find(b">", lt + 2)
            if end < 0:
                return 0
            pos = end + 1
            continue
        closing = after == b"/"
        start = lt + 2 if closing else lt + 1
        if not doc[start : start + 1].isalpha():
            pos = lt + 1
            continue
        end_of_name = start
        while end_of_name < len(doc) and doc[end_of_name] not in WS + b"/>":
            end_of_name += 1
        name = low[start:end_of_name]
        if end_of_name == len(doc):
            return 0
        if closing and name == b"head":
            return lt
        if not closing and name == b"script":
            return lt
        tag_end = oracle_tag_end(doc, end_of_name)
        if tag_end is None:
            return 0
        if not closing and name == b"body":
            return tag_end
        pos = tag_end
        if not closing and name in RAW_TEXT:
            close = pos
            while True:
                close = low.find(b"</" + name, close)
                if close < 0:
                    return 0
                follower = doc[close + len(name) + 2 : close + len(name) + 3]
                if follower and follower in WS + b"/>":
                    break
                close += 1
            pos = close


def oracle(doc: bytes, element: bytes) -> bytes:
    at = oracle_place(doc)
    return doc[:at] + element + doc[at:]


FRAGMENTS = [
    b"<html>",
    b"<head>",
    b"</head>",
    b"</HEAD>",
    b"</head >",
    b"</hEaD\n\t>",
    b"</head",
    b"</headx>",
    b"</he",
    b"ad>",
    b"<script>",
    b"<SCRIPT src='a.js'>",
    b"<scriptx>",
    b"<scr",
    b"ipt>",
    b"</script>",
    b"<body>",
    b"<body class='a'>",
    b'<BODY onload="x>y">',
    b"<body",
    b"<bo",
    b"dy",
    b"<body/>",
    b'<body a="',
    b"<body b='",
    b"<tbody>",
    b"<bodyx>",
    b"<!--",
    b"-->",
    b"<!-->",
    b"<!DOCTYPE html>",
    b"<?xml?>",
    b"</ x>",
    b"<template>",
    b"</template>",
    b"<noscript>",
    b"</noscript>",
    b"<title>",
    b"</title>",
    b"<style>",
    b"</style >",
    b"<textarea>",
    b"</TEXTAREA>",
    b"<xmp>",
    b"</xmp>",
    b"<noframes>",
    b"</noframes>",
    b'<meta charset="utf-8">',
    b'<meta content="<script>">',
    b'<abcdefghij="',
    b"<abcdefghijk'>",
    b" ",
    b"=",
    b'"',
    b"'",
    b"<",
    b">",
    b"a < b > c",
    b"</html>",
]
documents = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=6)), max_size=20).map(b"".join)


@st.composite
def split_document(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    doc = draw(documents)
    sizes = draw(
        st.one_of(
            st.just([1] * len(doc)),
            st.lists(st.integers(min_value=0, max_value=max(len(doc), 1)), max_size=12),
        )
    )
    return doc, sizes


class TestInsertionRule:
    def test_before_head_end(self) -> None:
        """The element goes right before </head>."""
        doc = b"<html><head><title>t</title></head><body>x</body></html>"
        assert inject_html(doc, E) == (b"<html><head><title>t</title>" + E + b"</head><body>x</body></html>")

    @pytest.mark.parametrize("end_tag", [b"</HEAD>", b"</Head>", b"</head >", b"</head\n\t >"])
    def test_head_end_any_case_and_whitespace(self, end_tag: bytes) -> None:
        """</head> is found in any case and with whitespace before its >."""
        assert inject_html(b"<head>" + end_tag + b"<body>", E) == b"<head>" + E + end_tag + b"<body>"

    def test_only_first_head_end(self) -> None:
        """With two </head>, the element goes before the first only."""
        assert inject_html(b"a</head>b</head>", E) == b"a" + E + b"</head>b</head>"

    def test_body_tag_before_head_end_wins(self) -> None:
        """A body tag ahead of any </head> or <script> is where the head ended: right after it."""
        assert inject_html(b"<body>x</head>y", E) == b"<body>" + E + b"x</head>y"

    @pytest.mark.parametrize("script", [b"<script>", b"<SCRIPT src=a.js>", b"<script\ntype=module>"])
    def test_before_the_first_head_script(self, script: bytes) -> None:
        """The element goes right before the head's first <script tag (any case), so it can read it."""
        doc = b'<html><head><meta charset="utf-8"><title>t</title>' + script + b"</script></head>"
        at = doc.index(script)
        assert inject_html(doc, E) == doc[:at] + E + doc[at:]

    def test_meta_charset_ahead_stays_ahead(self) -> None:
        """A <meta charset> before the first script stays ahead of the element."""
        out = inject_html(b'<head><meta charset="utf-8"><script src="x.js"></script></head>', E)
        assert out.index(b"<meta charset") < out.index(E) < out.index(b"<script")

    @pytest.mark.parametrize(
        "hidden",
        [
            b"<!-- <script>x</script> </head> <body> -->",
            b"<!--><script>",  # "<!-->" is a whole comment: the <script> after it counts
            b"<template><script>a()</script></template>",
            b"<noscript><script>a()</script></noscript>",
            b"<title>a <script> b </head></title>",
            b"<style>p::before{content:'<script>'}</style>",
            b"<textarea></head><script></textarea>",
            b"<xmp><script>a()</script></xmp>",
            b"<noframes><script>a()</script></noframes>",
            b"<noembed><script>a()</script></noembed>",
            b"<iframe><script>a()</script></iframe>",
            b'<meta content="<script>" name="</head>">',
            b"<!DOCTYPE html>",
            b"<?xml version='1.0'?>",
        ],
    )
    def test_markup_in_comments_and_text_elements_does_not_count(self, hidden: bytes) -> None:
        """A <script, </head> or <body inside a comment, a text element or an attribute is passed over."""
        doc = b"<html><head>" + hidden + b"<link rel=x></head><body></body>"
        out = inject_html(doc, E)
        # The <script> after a "<!-->", else the page's own </head> (the last one).
        at = doc.index(b"<script>") if hidden.startswith(b"<!--><script>") else doc.rindex(b"</head>")
        assert out == doc[:at] + E + doc[at:]

    def test_the_page_naming_the_element_id_still_gets_one(self) -> None:
        """A page with its own id="cc-storefront-user" gets exactly one element, in the head."""
        doc = b'<head><script id="cc-storefront-user">x</script></head><div id="cc-storefront-user">'
        out = b"".join(stream(doc, [1] * len(doc)))
        assert out == b"<head>" + E + doc[len(b"<head>") :]
        assert out.count(E) == 1

    @pytest.mark.parametrize(
        "tag", [b"<body>", b"<BODY>", b"<body class='a' id=\"b\">", b"<body\n>", b"<body/>"]
    )
    def test_after_body_tag_without_head_end(self, tag: bytes) -> None:
        """Without </head>, the element goes right after the opening body tag, any case."""
        assert inject_html(b"<html>" + tag + b"hi</body>", E) == b"<html>" + tag + E + b"hi</body>"

    def test_body_tag_ends_outside_quoted_values(self) -> None:
        """A > inside a quoted attribute value does not end the body tag."""
        tag = b"<body onload=\"if (a>b) go()\" data-x='>'>"
        assert inject_html(tag + b"hi", E) == tag + E + b"hi"

    @pytest.mark.parametrize("doc", [b"<tbody><td>x</td></tbody>", b"<bodyx>y", b"</body>", b""])
    def test_at_start_without_either(self, doc: bytes) -> None:
        """Without </head> or a body tag (<tbody>, <bodyx> are none), the element goes first."""
        assert inject_html(doc, E) == E + doc

    def test_not_a_head_end(self) -> None:
        """</headx> is not </head>; </head/> is (an end tag's name ends at "/")."""
        assert inject_html(b"</headx></head/>", E) == b"</headx>" + E + b"</head/>"
        assert inject_html(b"</headx>", E) == E + b"</headx>"

    def test_unclosed_body_tag_is_no_tag(self) -> None:
        """A body tag left open at the end (open quote) is none, nor is a "<body" inside it."""
        doc = b'<body a="x<body c=1>tail'
        assert inject_html(doc, E) == E + doc

    def test_stray_quote_does_not_open_a_value(self) -> None:
        """A quote not right after "=" is an ordinary character in the body tag."""
        assert inject_html(b"<body it's>x'", E) == b"<body it's>" + E + b"x'"

    @given(documents)
    @settings(max_examples=500)
    def test_matches_independent_oracle(self, doc: bytes) -> None:
        """inject_html agrees with a plain-loop implementation of the rule on any document."""
        assert inject_html(doc, E) == oracle(doc, E)


class TestPlacements:
    """A storefront's remembered heads: a page that starts like a scanned one gets its place unscanned."""

    @given(documents, documents, documents)
    @settings(max_examples=1000)
    def test_pages_sharing_a_head_get_the_scanners_place(
        self, head: bytes, tail: bytes, other: bytes
    ) -> None:
        """Two pages that differ only after a shared start: each gets the oracle's place, in either order."""
        placements = Placements()
        for page in (head + tail, head + other, head + tail, head, head + other + tail):
            out, at = inject_html_at(page, E, placements)
            assert out == oracle(page, E)
            assert out[at] == E

    @given(st.lists(documents, min_size=1, max_size=30))
    def test_more_heads_than_it_keeps_are_still_placed_right(self, pages: list[bytes]) -> None:
        """Past the heads it keeps, the oldest go: every page is still placed as the oracle says."""
        placements = Placements()
        for page in pages + pages[::-1]:
            assert inject_html_at(page, E, placements)[0] == oracle(page, E)

    def test_a_long_tag_name_is_read_to_its_end_quotes_and_all(self) -> None:
        """A name past ten letters with '="' in it is still the name (as HTML reads it): the same
        place from the scanner, from any split, and from a remembered head (a review's counterexample)."""
        first = b'<abcdefghij=" x=\'"><script>' + b"." * 16
        second = b"<abcdefghij=\" x='\"><script>........'></head>"
        assert inject_html_at(second, E)[1].start == oracle_place(second) == 37
        assert b"".join(stream(second, [30])) == oracle(second, E)
        placements = Placements()
        inject_html_at(first, E, placements)
        assert inject_html_at(second, E, placements)[0] == oracle(second, E)

    def test_the_same_editor_page_is_placed_where_the_scanner_puts_it(self) -> None:
        """A shop's page served again and again: before its first script, each time."""
        page = (
            b'<!doctype html><html><head><meta charset="utf-8"><title>Mug</title>'
            b'<!-- <script> --><script nonce="%d">x()</script></head><body>' + b"p" * 2000
        )
        placements = Placements()
        for nonce in range(20):
            served = page.replace(b"%d", str(nonce).encode())
            out, at = inject_html_at(served, E, placements)
            assert out == served.replace(b"<script nonce", E + b"<script nonce", 1)
            assert at.start == served.index(b"<script nonce")


class TestStreaming:
    @given(split_document())
    @settings(max_examples=1000)
    def test_any_split_gives_the_one_shot_result(self, case: tuple[bytes, list[int]]) -> None:
        """Chunks split anywhere (1-byte chunks included) give the one-shot output exactly."""
        doc, sizes = case
        assert b"".join(stream(doc, sizes)) == inject_html(doc, E) == oracle(doc, E)

    def test_head_end_split_across_chunks(self) -> None:
        """A </head> split as "</he" + "ad>" is found, and nothing goes out before it is."""
        assert stream(b"<head>x</head>y", [7, 4, 3]) == [
            b"",
            b"",
            b"<head>x" + E + b"</head>",
            b"y",
            b"",
        ]

    def test_body_tag_split_across_chunks(self) -> None:
        """A body tag split as "<bo" + "dy class=\"x\">" is found and goes out once complete."""
        outputs = stream(b"<bo" + b'dy class="x">hello', [3, 14])
        assert outputs == [b"", b'<body class="x">' + E + b"h", b"ello", b""]

    def test_script_tag_split_across_chunks(self) -> None:
        """A "<script" split as "<scr" + "ipt>" is found once its name is complete."""
        assert stream(b"<head><scr" + b"ipt>x", [10, 1, 3]) == [
            b"",
            b"",
            b"<head>" + E + b"<script>",
            b"x",
            b"",
        ]

    def test_comment_end_split_across_chunks(self) -> None:
        """A "-->" split over chunks ends the comment; the script after it counts."""
        doc = b"<!-- <script> --><script>"
        assert stream(doc, [15, 1]) == [b"", b"", b"<!-- <script> -->" + E + b"<script>", b""]

    def test_open_body_tag_waits_for_its_end(self) -> None:
        """A "<body" inside a body tag still open is not taken for the tag while it may close."""
        injector = HtmlInjector(E)
        assert injector.feed(b'<body a="x<body>') == b""
        assert injector.feed(b'">rest') == b'<body a="x<body>">' + E + b"rest"
        assert injector.finish() == b""

    def test_nothing_before_either_tag(self) -> None:
        """Until </head> or a body tag appears, feed returns nothing."""
        injector = HtmlInjector(E)
        assert injector.feed(b"<html><head><title>") == b""
        assert injector.feed(b"a long title") == b""
        assert not injector.injected

    def test_passes_through_after_injection(self) -> None:
        """After the element is in, feed returns the very chunk it was given."""
        injector = HtmlInjector(E)
        assert injector.feed(b"<head></head>") == b"<head>" + E + b"</head>"
        chunk = b"<body>" * 100
        assert injector.feed(chunk) is chunk
        assert injector.finish() == b""

    def test_body_tag_decides_at_once(self) -> None:
        """Once the body tag is complete the element goes in after it; nothing more is held."""
        injector = HtmlInjector(E)
        assert injector.feed(b"<body>a") == b"<body>" + E + b"a"
        assert injector.feed(b"</head>") == b"</head>"
        assert injector.finish() == b""

    def test_element_at_says_where_the_element_went(self) -> None:
        """element_at is the element's slice in the output of the call that inserted it."""
        injector = HtmlInjector(E)
        assert injector.feed(b"<head>") == b""
        out = injector.feed(b"<script>")
        assert injector.element_at is not None
        assert out[injector.element_at] == E

    def test_exactly_one_element(self) -> None:
        """Many candidate places still get one element."""
        doc = b"<body></head><body></head>" * 3
        out = b"".join(stream(doc, [1] * len(doc)))
        assert out.count(E) == 1

    def test_feed_after_finish_is_an_error(self) -> None:
        """feed() after finish() raises RuntimeError."""
        injector = HtmlInjector(E)
        injector.finish()
        with pytest.raises(RuntimeError):
            injector.feed(b"x")


class TestMaxHold:
    def test_without_tags_inserts_at_start(self) -> None:
        """Past max_hold with no tag seen, the element goes first and the bytes go out."""
        injector = HtmlInjector(E, max_hold=8)
        assert injector.feed(b"12345678") == b""
        assert injector.feed(b"9") == E + b"123456789"
        assert injector.injected
        assert injector.feed(b"</head>") == b"</head>"
        assert injector.finish() == b""

    def test_in_a_long_comment_inserts_at_start(self) -> None:
        """Past max_hold inside a comment, the element goes first and the bytes go out."""
        injector = HtmlInjector(E, max_hold=8)
        assert injector.feed(b"<!-- 123") == b""
        assert injector.feed(b"4") == E + b"<!-- 1234"

    def test_body_tag_and_overflow_in_one_chunk(self) -> None:
        """A chunk with a body tag and too much after it gives tag, element and rest at once."""
        injector = HtmlInjector(E, max_hold=2)
        assert injector.feed(b"x<body>abc") == b"x<body>" + E + b"abc"

    def test_exactly_at_max_hold_still_holds(self) -> None:
        """Holding exactly max_hold bytes is allowed."""
        injector = HtmlInjector(E, max_hold=3)
        assert injector.feed(b"abc") == b""
        assert injector.finish() == E + b"abc"

    def test_one_shot_ignores_max_hold(self) -> None:
        """inject_html follows the rule even for a </head> more than 1 MiB in."""
        doc = b"x" * (2 << 20) + b"</head>"
        assert inject_html(doc, E) == b"x" * (2 << 20) + E + b"</head>"

    def test_one_byte_chunks_read_each_byte_about_once(self) -> None:
        """A long comment fed byte by byte is scanned incrementally (a second at most for 200 KB)."""
        doc = b"<head><!--" + b"x" * 200_000 + b"--><script>"
        started = time.perf_counter()
        out = b"".join(stream(doc, [1] * len(doc)))
        assert out == doc[: -len(b"<script>")] + E + b"<script>"
        assert time.perf_counter() - started < 5

    @given(split_document(), st.integers(min_value=0, max_value=16))
    @settings(max_examples=300)
    def test_still_exactly_one_element(self, case: tuple[bytes, list[int]], hold: int) -> None:
        """With any max_hold the output is the input with one element inserted."""
        doc, sizes = case
        out = b"".join(stream(doc, sizes, max_hold=hold))
        at = out.find(E)
        assert at >= 0
        assert out[:at] + out[at + len(E) :] == doc


def zlib_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "identity": bytes,
}


def decode(encoding: str, data: bytes, sizes: list[int]) -> bytes:
    decoder = ContentDecoder(encoding)
    out = []
    at = 0
    for size in sizes:
        out.append(decoder.feed(data[at : at + size]))
        at += size
    out.append(decoder.feed(data[at:]))
    out.append(decoder.finish())
    return b"".join(out)


chunk_sizes = st.lists(st.integers(min_value=0, max_value=64), max_size=30)
PAGE = b"<html><head><title>shop</title></head><body>" + b"product " * 2000 + b"</body></html>"


class TestContentDecoder:
    @pytest.mark.parametrize("encoding", list(ENCODERS))
    @given(data=st.binary(max_size=2000), sizes=chunk_sizes)
    def test_round_trip_any_split(self, encoding: str, data: bytes, sizes: list[int]) -> None:
        """Each coding decodes back to the original for any chunk split."""
        assert decode(encoding, ENCODERS[encoding](data), sizes) == data

    @given(data=st.binary(max_size=2000), sizes=chunk_sizes)
    def test_raw_deflate_any_split(self, data: bytes, sizes: list[int]) -> None:
        """deflate also accepts raw deflate without the zlib wrapper, in any split."""
        assert decode("deflate", zlib_raw(data), sizes) == data

    @pytest.mark.parametrize("encoder", [zlib.compress, zlib_raw])
    def test_deflate_one_byte_chunks(self, encoder: Callable[[bytes], bytes]) -> None:
        """deflate tells zlib from raw even when the header arrives one byte at a time."""
        encoded = encoder(PAGE)
        assert decode("deflate", encoded, [1] * len(encoded)) == PAGE

    @given(sizes=chunk_sizes)
    def test_stacked_codings_undone_in_reverse(self, sizes: list[int]) -> None:
        """ "gzip, br" (gzip applied first) decodes br, then gzip."""
        encoded = brotli.compress(gzip.compress(PAGE))
        assert decode("gzip, br", encoded, sizes) == PAGE

    def test_identity_inside_a_list(self) -> None:
        """identity in a list is a no-op, and names are case-insensitive."""
        assert decode(" GZIP , identity", gzip.compress(PAGE), [100]) == PAGE

    def test_empty_value_is_identity(self) -> None:
        """An empty Content-Encoding passes bytes through."""
        assert decode("", b"abc", [1]) == b"abc"

    def test_gzip_members_concatenated(self) -> None:
        """Several gzip members in a row decode to their concatenation."""
        encoded = gzip.compress(b"first ") + gzip.compress(b"second")
        assert decode("gzip", encoded, [1] * len(encoded)) == b"first second"

    def test_bytes_after_gzip_end_ignored(self) -> None:
        """Padding after the gzip stream is ignored, as browsers do."""
        assert decode("gzip", gzip.compress(b"page") + b"\x00\x00\x00", [3]) == b"page"

    @pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
    def test_empty_body(self, encoding: str) -> None:
        """An empty body labelled as compressed decodes to nothing."""
        assert decode(encoding, b"", []) == b""

    @pytest.mark.parametrize(
        ("encoding", "encoded"),
        [
            ("gzip", gzip.compress(PAGE)[:-10]),
            ("gzip", gzip.compress(PAGE)[:5]),
            ("deflate", zlib.compress(PAGE)[:-3]),
            ("deflate", zlib.compress(PAGE)[:1]),
            ("deflate", zlib_raw(PAGE)[:-3]),
            ("br", brotli.compress(PAGE)[:-3]),
            ("gzip", gzip.compress(PAGE) + gzip.compress(PAGE)[:20]),
        ],
        # Named, not by their bytes: a gzip header holds the time, and every test process (and
        # pytest-xdist worker) must collect the same ids.
        ids=[
            "gzip-tail-cut",
            "gzip-header-only",
            "deflate-tail-cut",
            "deflate-first-byte",
            "raw-deflate-tail-cut",
            "br-tail-cut",
            "gzip-second-member-cut",
        ],
    )
    def test_truncated_raises_on_finish(self, encoding: str, encoded: bytes) -> None:
        """A body cut short decodes what it can, then finish() raises BodyDecodeError."""
        decoder = ContentDecoder(encoding)
        decoder.feed(encoded)
        with pytest.raises(BodyDecodeError):
            decoder.finish()

    @pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
    def test_corrupt_raises(self, encoding: str) -> None:
        """Garbage labelled as compressed raises BodyDecodeError (from feed or finish)."""
        with pytest.raises(BodyDecodeError):
            decode(encoding, b"\x1f\x8b\x08\x00garbage garbage garbage" * 4, [])

    def test_decode_error_is_a_value_error(self) -> None:
        """BodyDecodeError is a ValueError."""
        assert issubclass(BodyDecodeError, ValueError)

    @pytest.mark.parametrize(
        "value", ["gzip", "x-gzip", "GZIP", "deflate", "br", "identity", "", "gzip, br", " br "]
    )
    def test_supports_known(self, value: str) -> None:
        """supports() is True when every listed coding is known."""
        assert ContentDecoder.supports(value) is True

    @pytest.mark.parametrize("value", ["compress", "zstd", "gzip, zstd", "x-compress", "gzip2"])
    def test_supports_unknown(self, value: str) -> None:
        """supports() is False when any listed coding is unknown."""
        assert ContentDecoder.supports(value) is False

    def test_unknown_coding_rejected(self) -> None:
        """Constructing a decoder for an unknown coding raises ValueError naming it."""
        with pytest.raises(ValueError, match="zstd"):
            ContentDecoder("gzip, zstd")

    @given(sizes=chunk_sizes)
    def test_decode_then_inject(self, sizes: list[int]) -> None:
        """A gzip page decoded and injected in chunks equals injecting into the plain page."""
        decoder = ContentDecoder("gzip")
        injector = HtmlInjector(E)
        encoded = gzip.compress(PAGE)
        out = []
        at = 0
        for size in [*sizes, len(encoded)]:
            out.append(injector.feed(decoder.feed(encoded[at : at + size])))
            at += size
        out.append(injector.feed(decoder.finish()))
        out.append(injector.finish())
        assert b"".join(out) == inject_html(PAGE, E)


DECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
    "br": brotli.decompress,
}


def encode(coding: str, data: bytes, sizes: list[int]) -> bytes:
    """``data`` fed to a ContentEncoder in chunks of ``sizes`` (the rest last), then finished."""
    encoder = ContentEncoder(coding)
    out = []
    at = 0
    for size in sizes:
        out.append(encoder.feed(data[at : at + size]))
        at += size
    out.append(encoder.feed(data[at:]))
    out.append(encoder.finish())
    return b"".join(out)


class TestContentEncoder:
    @pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
    @given(data=st.binary(max_size=2000), sizes=chunk_sizes)
    def test_round_trip_any_split(self, coding: str, data: bytes, sizes: list[int]) -> None:
        """Fed in any chunk split, each coding's output decodes to the input (stdlib and ours)."""
        encoded = encode(coding, data, sizes)
        assert DECOMPRESS[coding](encoded) == data
        assert decode(coding, encoded, sizes) == data

    @pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
    def test_whole_round_trips_and_compresses(self, coding: str) -> None:
        """whole() gives one complete stream of the body, smaller than the page."""
        encoded = ContentEncoder(coding).whole(PAGE)
        assert DECOMPRESS[coding](encoded) == PAGE
        assert len(encoded) < len(PAGE) // 10

    @pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
    def test_each_fed_chunk_is_decodable_at_once(self, coding: str) -> None:
        """What feed() returns decodes to everything fed so far: nothing waits in the encoder."""
        encoder = ContentEncoder(coding)
        decoder = ContentDecoder(coding)
        for piece in (b"<html><head>", b"<title>streamed</title>", b"</head><body>"):
            assert decoder.feed(encoder.feed(piece)) == piece

    def test_empty_chunk_yields_nothing(self) -> None:
        """Feeding b"" produces no bytes (no empty flush blocks)."""
        assert ContentEncoder("gzip").feed(b"") == b""

    def test_unknown_coding_rejected(self) -> None:
        """An encoder for a coding it does not make raises ValueError naming it."""
        with pytest.raises(ValueError, match="zstd"):
            ContentEncoder("zstd")

    @pytest.mark.parametrize(("shop", "out"), [("gzip", "gzip"), ("deflate", "br"), ("br", "deflate")])
    @given(sizes=chunk_sizes)
    def test_decode_inject_encode_any_split(self, shop: str, out: str, sizes: list[int]) -> None:
        """A compressed page decoded, injected and re-encoded in chunks decodes to the page plus E."""
        decoder = ContentDecoder(shop)
        injector = HtmlInjector(E)
        encoder = ContentEncoder(out)
        encoded = ENCODERS[shop](PAGE)
        pieces = []
        at = 0
        for size in [*sizes, len(encoded)]:
            pieces.append(encoder.feed(injector.feed(decoder.feed(encoded[at : at + size]))))
            at += size
        pieces.append(encoder.feed(injector.feed(decoder.finish()) + injector.finish()))
        pieces.append(encoder.finish())
        assert DECOMPRESS[out](b"".join(pieces)) == inject_html(PAGE, E)

    @pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
    def test_compressed_page_in_one_byte_chunks_gets_the_element_before_its_first_script(
        self, coding: str
    ) -> None:
        """A compressed page with decoy scripts in a comment and a template, fed 1 byte at a time."""
        page = (
            b'<!DOCTYPE html><html><head><meta charset="utf-8"><!-- <script>x</script> -->'
            b"<template><script>y()</script></template><script src=/app.js></script></head>"
            b"<body>" + b"product " * 500 + b"</body></html>"
        )
        encoded = ENCODERS[coding](page)
        decoder = ContentDecoder(coding)
        injector = HtmlInjector(E)
        out = b"".join(injector.feed(decoder.feed(encoded[at : at + 1])) for at in range(len(encoded)))
        out += injector.feed(decoder.finish()) + injector.finish()
        at = page.index(b"<script src=/app.js>")
        assert out == page[:at] + E + page[at:]


SECRET = b'<script id="cc-storefront-user">{"token":"eyJhbGciOiJSUzI1NiJ9.q8Zk3vT0pWm"}</script>'


def page_reflecting(guess: bytes) -> tuple[bytes, slice]:
    """An editor page with the element, echoing ``guess`` the way a search box would; the element's slice."""
    head = b"<html><head><title>Personalize</title>"
    body = b"</head><body><p>You searched for: " + guess + b"</p></body></html>"
    return head + SECRET + body, slice(len(head), len(head) + len(SECRET))


class TestSecretIsolation:
    @pytest.mark.parametrize("coding", ["gzip", "deflate"])
    def test_a_right_guess_of_the_token_compresses_no_better_than_a_wrong_one(self, coding: str) -> None:
        """With the element marked secret, a reflected right guess costs as many bytes as a wrong one
        (unmarked, the right guess is shorter: the BREACH oracle)."""
        right, where = page_reflecting(b'"token":"eyJhbGciOiJSUzI1NiJ9.q8Zk3vT0pWm')
        wrong, _ = page_reflecting(b'"token":"eyJhbGciOiJSUzI1NiJ9.Xq9mTvR2kLp')
        assert len(ContentEncoder(coding).whole(right, where)) == len(
            ContentEncoder(coding).whole(wrong, where)
        )
        assert len(ContentEncoder(coding).whole(right)) < len(ContentEncoder(coding).whole(wrong))

    @pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
    @given(sizes=chunk_sizes)
    def test_a_marked_secret_still_decodes_in_any_split(self, coding: str, sizes: list[int]) -> None:
        """The page decodes to itself whichever chunk carries the marked element."""
        page, where = page_reflecting(b"mugs")
        encoder = ContentEncoder(coding)
        out, at = [], 0
        for size in [*sizes, len(page)]:
            chunk = page[at : at + size]
            inside = where.start >= at and where.stop <= at + len(chunk)
            out.append(encoder.feed(chunk, slice(where.start - at, where.stop - at) if inside else None))
            at += len(chunk)
        out.append(encoder.finish())
        assert DECOMPRESS[coding](b"".join(out)) == page


@pytest.mark.parametrize(
    ("shop", "accept", "out"),
    [
        ("gzip", "gzip, deflate, br", "gzip"),
        ("br", "gzip, deflate, br", "gzip"),
        ("br", "br", "br"),
        ("deflate", "gzip, deflate, br", "deflate"),
        ("x-gzip", "gzip", "gzip"),
        ("gzip", "x-gzip", "gzip"),
        ("BR", "Br;q=0.5", "br"),
        ("deflate", "br, deflate", "deflate"),
        ("br", "gzip", "gzip"),
        ("gzip", "br", "br"),
        ("gzip", "br, deflate", "deflate"),
        ("br", "deflate", "deflate"),
        ("br", "gzip;q=0, deflate", "deflate"),
        ("gzip", "*", "gzip"),
        ("br", "gzip;q=0, *", "deflate"),
        ("gzip", "*;q=0", None),
        ("gzip", "identity", None),
        ("gzip", "zstd", None),
        ("gzip", "gzip;q=nonsense", None),
        ("gzip", None, None),
        ("gzip", "", None),
        ("", "gzip", None),
        ("identity", "gzip", None),
        ("gzip, br", "gzip, br", "gzip"),
    ],
)
def test_response_coding_prefers_the_shops_then_gzip(shop: str, accept: str | None, out: str | None) -> None:
    """The shop's gzip or deflate if the client accepts it, else gzip, deflate, br; none without a shop
    coding or an Accept-Encoding."""
    assert response_coding(shop, accept) == out


class TestIsHtml:
    @pytest.mark.parametrize(
        "value",
        [
            "text/html",
            "TEXT/HTML",
            "text/html; charset=utf-8",
            " text/html ;charset=ISO-8859-1",
            "application/xhtml+xml",
            "Application/XHTML+XML; charset=utf-8",
        ],
    )
    def test_html(self, value: str) -> None:
        """HTML media types count, whatever their case and parameters."""
        assert is_html(value) is True

    @pytest.mark.parametrize(
        "value",
        [None, "", "text/plain", "application/json", "text/htmlx", "text/html-fragment", "html"],
    )
    def test_not_html(self, value: str | None) -> None:
        """Other media types, and none, do not."""
        assert is_html(value) is False


@pytest.mark.parametrize(
    ("accept", "sent"),
    [
        ("gzip, deflate, br, zstd", "gzip, deflate, br"),
        ("zstd;q=1.0, br;q=0.9, *;q=0.1", "br;q=0.9"),
        ("zstd", "identity"),
        ("GZIP;q=0.5, identity", "GZIP;q=0.5, identity"),
        ("", "identity"),
    ],
)
def test_accept_encoding_for_editor_pages_names_only_decodable_codings(accept: str, sent: str) -> None:
    """Codings the decoder can't undo (zstd, *) are left out; nothing left means identity."""
    assert decodable_accept_encoding(accept) == sent
