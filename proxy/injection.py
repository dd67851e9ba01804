"""Putting the customer's token into an editor page: the element, the HTML insertion, body decoding.

Pure functions and small classes over bytes and str; nothing here knows about aiohttp, so the
request path wires them up and the tests run them in microseconds (contract, "Where the token
goes"):

- :class:`HtmlInjector` inserts the token element (made by :mod:`proxy.payload`) exactly once
  into an HTML body streamed in chunks (where: see its docstring). :func:`inject_html` is the
  same for a body held whole.
- :class:`ContentDecoder` undoes ``Content-Encoding`` (gzip, deflate, br, stacked) chunk by
  chunk, so a compressed page can be injected into without holding it whole;
  :func:`response_coding` picks the coding the rewritten page goes back out in, and
  :class:`ContentEncoder` applies it, again chunk by chunk.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Callable
from typing import Protocol

import brotli

# Held-back HTML above this makes the injector decide at once (see HtmlInjector).
DEFAULT_MAX_HOLD = 1 << 20
# Compression of rewritten editor pages, done once per page on the request path. zlib level 1, as
# nginx's gzip_comp_level defaults to: in make bench the benchmark's 20 KB page cost the sidecar
# ~75 µs more gzipped than sent plain, 6.1 KB on the wire against 21.5 KB; level 4 cost ~145 µs for
# 5.5 KB, and level 6 (gzip's default) takes three times level 4 in-process. Brotli quality 2 takes
# about what level 4 does for 4.8 KB; its default, 11, takes ~16 ms.
GZIP_LEVEL = 1
BROTLI_QUALITY = 2

# The whitespace HTML allows inside tags; "\s" would also take \v, which HTML does not.
_WS_RUN = re.compile(rb"[ \t\n\f\r]*+")
# A tag name as far as it matters here: the names looked for are at most 8 letters, so a longer
# one is read no further (a name arriving byte by byte is re-read at most this much).
_NAME_LIMIT = 10
_TAG_NAME = re.compile(rb"[A-Za-z][^\t\n\f\r />]{0,%d}" % (_NAME_LIMIT - 1))
# The rest of a name longer than that: read on to its end, as HTML does ("=" and quotes included),
# before the tag's attributes are read.
_NAME_REST = re.compile(rb"[^\t\n\f\r />]*+")
# Inside a tag, the characters that need a decision: ">" may end it, "=" may open a value.
_TAG_PLAIN = re.compile(rb"[^>=]*+")
# A whole tag from after its name to its ">", by the same rule as HtmlInjector._tag_end: a quoted
# value only right after "=" (and whitespace), and then closed. One match per tag for the common
# case; a tag that does not match (open, or still arriving) is read by _tag_end's loop.
_TAG_REST = re.compile(rb"(?:[^>=]++|=[ \t\n\f\r]*+(?:\"[^\"]*+\"|'[^']*+'|(?![ \t\n\f\r\"'])))*+>")
# Everything that cannot hold the element's place, complete, in one match: text, comments,
# declarations, tags other than <script, <body and </head>, and the text elements with their
# content. The scanner skips it at once and reads tag by tag only from where it stops (something
# that matters, or a construct still arriving); it consumes exactly what the scanner's own rules
# would (the tests hold the two to one oracle).
_WS_SET = rb"[ \t\n\f\r/>]"
# Elements whose content is text to the page, not markup: a "<script" in them is no script of
# the page (in <template> it is inert; <noscript> is raw text where scripts run; xmp, iframe,
# noembed and noframes are raw text to the HTML parser as well).
_RAW_TEXT_NAMES = (
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
_RAW_ALTERNATION = b"|".join(_RAW_TEXT_NAMES)
_SKIP = re.compile(
    rb"(?:[^<]++"
    rb"|<!(?=--)(?:[^-]++|-(?!->))*+-->"
    rb"|<!(?!--)[^>]*+>"
    rb"|<\?[^>]*+>"
    rb"|</(?![A-Za-z])[^>]*+>"
    rb"|<(?=[^A-Za-z!?/])"
    rb"|</(?!head"
    + _WS_SET
    + rb")[A-Za-z][^ \t\n\f\r/>]*+"
    + _TAG_REST.pattern
    + rb"|<(?!(?:script|body|"
    + _RAW_ALTERNATION
    + rb")"
    + _WS_SET
    + rb")"
    rb"[A-Za-z][^ \t\n\f\r/>]*+"
    + _TAG_REST.pattern
    + rb"|<("
    + _RAW_ALTERNATION
    + rb")(?="
    + _WS_SET
    + rb")"
    + _TAG_REST.pattern
    + rb"(?:[^<]++|<(?!/\1"
    + _WS_SET
    + rb"))*+(?=</\1"
    + _WS_SET
    + rb")"
    rb")*+",
    re.IGNORECASE,
)
_RAW_TEXT = frozenset(_RAW_TEXT_NAMES)
# IGNORECASE on bytes is ASCII-only, which is exactly HTML's case-insensitivity for tag names.
_RAW_END = {name: re.compile(rb"</" + name + rb"(?=[ \t\n\f\r/>])", re.IGNORECASE) for name in _RAW_TEXT}


class BodyDecodeError(ValueError):
    """A compressed body is corrupt or ends before its compressed stream does."""


# What the scanner is inside of (HtmlInjector._mode).
_DATA = 0  # text between tags
_COMMENT = 1  # <!-- ... -->
_BOGUS = 2  # <!DOCTYPE ...>, <?...>, </ ...>: up to the next ">"
_TAG = 3  # a tag's attributes, up to its ">" outside quoted values
_RAW = 4  # the text of a _RAW_TEXT element, up to its end tag
# What happens once a tag ends (HtmlInjector._then).
_THEN_DATA = 0
_THEN_INJECT = 1  # the body tag: the element goes right after it
_THEN_RAW = 2


class HtmlInjector:
    """Streaming: feed chunks of a decoded (identity) HTML body, get output chunks.

    Exactly one element is inserted where every script of the page can read it (contract,
    "Where the token goes"): right before the first ``<script`` tag or the ``</head>`` tag,
    whichever comes first (any case); if the body tag comes first (a page without a head), right
    after the opening ``<body ...>`` tag; if there is none of them, at the very start. Markup
    inside comments (``<!-- -->``), ``<!...>`` and ``<?...>`` declarations, attribute values, and
    the text of ``<template>``, ``<noscript>``, ``<title>``, ``<style>`` and ``<textarea>`` (and of
    the parser's other raw-text elements, ``<xmp>``, ``<iframe>``, ``<noembed>``, ``<noframes>``)
    does not count, so a ``<!-- <script> -->`` or a ``<template><script>`` in the head is passed over.
    Tags are found by a small scanner after the HTML tokenizer's rules (a tag name starts with a
    letter and ends at whitespace, ``/`` or ``>``; a tag ends at the first ``>`` outside a quoted
    attribute value, and a quote opens a value only right after ``=``), not by a full parser.
    A tag or comment still open when the body ends is none (browsers drop it too).

    Nothing goes out before the place is found, since the element may belong at the start; then
    everything up to it goes out with it, and later chunks pass straight through unscanned. The
    scanner keeps its place across chunks, so each byte is read about once however the body is
    split, and the output for any split equals :func:`inject_html` of the whole body, with one
    deviation for pathological pages: held bytes never exceed ``max_hold``. When they would, the
    element goes in at the start at once and everything is flushed.

    :attr:`element_at` says where the element sits in the output of the call that inserted it,
    so an encoder can keep it apart from the page (see :class:`ContentEncoder`).
    """

    __slots__ = (
        "_after_eq",
        "_buf",
        "_element",
        "_finished",
        "_in_name",
        "_injected",
        "_max_hold",
        "_mode",
        "_pos",
        "_quote",
        "_raw_back",
        "_raw_end",
        "_then",
        "element_at",
    )

    def __init__(self, element: bytes, *, max_hold: int = DEFAULT_MAX_HOLD) -> None:
        self._element = element
        self._max_hold = max_hold
        # Bytes received but not yet sent; they only ever grow until the element goes in, so
        # the scanner's position into them stays valid.
        self._buf = bytearray()
        self._pos = 0
        self._mode = _DATA
        # Inside a tag: the quote of the value being read (0: none), or just after an "=".
        self._quote = 0
        self._after_eq = False
        # Inside a tag: still in a name longer than _NAME_LIMIT (its rest is read first).
        self._in_name = False
        self._then = _THEN_DATA
        self._raw_end: re.Pattern[bytes] | None = None
        self._raw_back = 0  # the length of "</" and its name
        self._injected = False
        self._finished = False
        self.element_at: slice | None = None

    @property
    def injected(self) -> bool:
        """Whether the element has been inserted (and so went, or goes, out with this output)."""
        return self._injected

    def feed(self, chunk: bytes) -> bytes:
        """Take the next chunk; return the bytes that are safe to send now (may be ``b""``)."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if self._injected:
            # The fast path for the rest of every page: nothing left to look for.
            return chunk
        self._buf += chunk
        at = self._scan(self._buf)
        if at >= 0:
            return self._inject_at(at)
        if len(self._buf) > self._max_hold:
            return self._inject_at(0)
        return b""

    def finish(self) -> bytes:
        """Return the rest of the output, inserting the element now if it is not in yet."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        if self._injected:
            return b""
        # feed() found every complete tag; one still open at the end is none: the start.
        return self._inject_at(0)

    def _scan(self, buf: bytes | bytearray) -> int:
        """Read on from where the last call stopped; the element's place, or -1 (not yet).

        ``buf`` is everything held: the bytes since the start of the body.
        """
        size = len(buf)
        pos = self._pos
        mode = self._mode
        while pos < size:
            if mode == _DATA:
                pos = _SKIP.match(buf, pos).end()  # type: ignore[union-attr]  # matches empty at least
                lt = buf.find(b"<", pos)
                if lt < 0 or lt + 1 == size:
                    pos = size if lt < 0 else lt
                    break
                nxt = buf[lt + 1]
                if nxt == 0x21:  # "<!"
                    if size - lt < 4 and b"<!--".startswith(buf[lt:]):
                        pos = lt  # may still become "<!--"
                        break
                    mode = _COMMENT if buf[lt : lt + 4] == b"<!--" else _BOGUS
                    pos = lt + 2
                elif nxt == 0x3F:  # "<?"
                    mode, pos = _BOGUS, lt + 2
                elif nxt == 0x2F:  # "</"
                    if lt + 2 == size:
                        pos = lt
                        break
                    name = _TAG_NAME.match(buf, lt + 2)
                    if name is None:
                        mode, pos = _BOGUS, lt + 2
                        continue
                    if name.end() == size and name.end() - name.start() < _NAME_LIMIT:
                        pos = lt  # the name may go on
                        break
                    if name.group().lower() == b"head":
                        return lt
                    mode, pos, self._then = _TAG, name.end(), _THEN_DATA
                    self._in_name = name.end() - name.start() == _NAME_LIMIT
                else:
                    name = _TAG_NAME.match(buf, lt + 1)
                    if name is None:
                        pos = lt + 1  # a "<" in text
                        continue
                    if name.end() == size and name.end() - name.start() < _NAME_LIMIT:
                        pos = lt
                        break
                    tag = name.group().lower()
                    if tag == b"script":
                        return lt
                    mode, pos = _TAG, name.end()
                    self._in_name = name.end() - name.start() == _NAME_LIMIT
                    if tag == b"body":
                        self._then = _THEN_INJECT
                    elif tag in _RAW_TEXT:
                        self._then, self._raw_end = _THEN_RAW, _RAW_END[tag]
                        self._raw_back = len(tag) + 2
                    else:
                        self._then = _THEN_DATA
            elif mode == _COMMENT:
                # From "<!" on, so "<!-->" and "<!--->" end where they begin, as in HTML.
                end = buf.find(b"-->", pos)
                if end < 0:
                    pos = max(pos, size - 2)
                    break
                mode, pos = _DATA, end + 3
            elif mode == _BOGUS:
                end = buf.find(b">", pos)
                if end < 0:
                    pos = size
                    break
                mode, pos = _DATA, end + 1
            elif mode == _TAG:
                end = self._tag_end(buf, pos)
                if end < 0:
                    pos = size
                    break
                pos = end
                if self._then == _THEN_INJECT:
                    return end
                mode = _RAW if self._then == _THEN_RAW else _DATA
            else:  # _RAW
                assert self._raw_end is not None
                close = self._raw_end.search(buf, pos)
                if close is None:
                    # Its end tag may be arriving: read its start again with the next chunk.
                    pos = max(pos, size - self._raw_back)
                    break
                # The end tag itself is read as a tag in text.
                mode, pos = _DATA, close.start()
        self._pos, self._mode = pos, mode
        return -1

    def _tag_end(self, buf: bytes | bytearray, pos: int) -> int:
        """Where the tag being read ends (just past its ">"), or -1 (remembering how far it read).

        A quote opens a value only right after "=" and whitespace, as in HTML, so a stray quote
        elsewhere cannot swallow the page. Each byte of the tag is read once however it is split.
        """
        size = len(buf)
        if self._in_name:
            pos = _NAME_REST.match(buf, pos).end()  # type: ignore[union-attr]  # matches empty at least
            if pos == size:
                return -1  # the name may go on
            self._in_name = False
        quote, after_eq = self._quote, self._after_eq
        if not quote and not after_eq:
            whole = _TAG_REST.match(buf, pos)
            if whole is not None:
                return whole.end()
        while pos < size:
            if quote:
                close = buf.find(quote, pos)
                if close < 0:
                    pos = size
                    break
                pos, quote = close + 1, 0
            elif after_eq:
                pos = _skip_ws(buf, pos)
                if pos == size:
                    break
                after_eq = False
                if buf[pos] in b"\"'":
                    quote = buf[pos]
                    pos += 1
            else:
                run = _TAG_PLAIN.match(buf, pos)
                pos = pos if run is None else run.end()
                if pos == size:
                    break
                if buf[pos] == 0x3E:  # ">"
                    self._quote, self._after_eq = 0, False
                    return pos + 1
                pos += 1  # "="
                after_eq = True
        self._quote, self._after_eq = quote, after_eq
        return -1

    def _inject_at(self, at: int) -> bytes:
        buf = self._buf
        out = b"".join((buf[:at], self._element, buf[at:]))
        self.element_at = slice(at, at + len(self._element))
        self._buf = bytearray()
        self._injected = True
        return out


def _skip_ws(buf: bytes | bytearray, pos: int) -> int:
    """The first position at or after ``pos`` that is not HTML whitespace (or the end)."""
    run = _WS_RUN.match(buf, pos)
    return pos if run is None else run.end()


def inject_html(body: bytes, element: bytes) -> bytes:
    """Insert ``element`` into a whole HTML body by the rule of :class:`HtmlInjector`."""
    return inject_html_at(body, element)[0]


def inject_html_at(body: bytes, element: bytes, placements: Placements | None = None) -> tuple[bytes, slice]:
    """:func:`inject_html`, and where the element sits in the result (found by ``placements``)."""
    at = placements.place(body) if placements is not None else _place(body)
    page = memoryview(body)
    return b"".join((page[:at], element, page[at:])), slice(at, at + len(element))


def _place(body: bytes) -> int:
    """Where the element goes in a whole body (the scanner's rule; nothing found: the start)."""
    # The whole body is in memory already: scanned where it is (no copy, no max_hold deviation).
    at = HtmlInjector(b"")._scan(body)
    return at if at >= 0 else 0  # nothing decided: the start, as finish() does


# How far past the place it returns the scanner reads: a tag name at most _NAME_LIMIT bytes on
# from its "<" or "</" (and the regular expression's look-aheads less), so past that the bytes
# cannot have decided anything.
_DECIDED_PAST = _NAME_LIMIT + 6
# Pages a storefront's Placements remembers, and the longest head it keeps.
_PLACEMENTS = 8
_LONGEST_REMEMBERED = 16 * 1024


class Placements:
    """Where the element goes in whole pages, remembered by the bytes that decided it.

    A shop sends the same editor page, or pages with the same head, to every customer, and
    scanning that head is a few microseconds a page. The scanner's answer is a function of the
    bytes up to a few past the place it returns (:data:`_DECIDED_PAST`): it reads on only where a
    construct is not closed, and then finds no place at all. So a page that starts with those
    same bytes, and goes on past them, gets the same place without a scan. A page whose head
    differs (a CSRF token in a meta tag) is scanned as before; the last few heads are kept,
    each at most :data:`_LONGEST_REMEMBERED` bytes. The tests hold it to the scanner with pages
    that share a head and differ after it.
    """

    __slots__ = ("_heads", "_next")

    def __init__(self) -> None:
        self._heads: list[tuple[bytes, int]] = []
        self._next = 0

    def place(self, body: bytes) -> int:
        """The element's place in ``body``, as :func:`inject_html_at` without ``placements``."""
        size = len(body)
        for head, at in self._heads:
            if size > len(head) and body.startswith(head):
                return at
        at = HtmlInjector(b"")._scan(body)
        if at < 0:
            return 0  # decided by the whole body: nothing to remember
        decided = at + _DECIDED_PAST
        if decided < size and decided <= _LONGEST_REMEMBERED:
            remembered = (body[:decided], at)
            if len(self._heads) < _PLACEMENTS:
                self._heads.append(remembered)
            else:
                self._heads[self._next] = remembered
                self._next = (self._next + 1) % _PLACEMENTS
        return at


@functools.lru_cache(maxsize=256)
def is_html(content_type: str | None) -> bool:
    """Whether a Content-Type names an HTML page (``text/html`` or XHTML), parameters ignored."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in ("text/html", "application/xhtml+xml")


class _Stage(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _ZlibStage:
    """gzip (RFC 1952, several members allowed) or zlib/raw deflate via one zlib stream."""

    __slots__ = ("_gzip", "_obj", "_seen", "_tail")

    def __init__(self, wbits: int, *, gzip: bool) -> None:
        self._obj = zlib.decompressobj(wbits)
        self._gzip = gzip
        self._seen = False
        # Bytes after a finished gzip member, kept until they show whether another one follows.
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        self._seen = True
        if self._obj.eof:
            return self._after_end(chunk)
        try:
            out = self._obj.decompress(chunk)
        except zlib.error as exc:
            raise BodyDecodeError(f"corrupt compressed body: {exc}") from exc
        if self._obj.eof and self._obj.unused_data:
            out += self._after_end(self._obj.unused_data)
        return out

    def _after_end(self, data: bytes) -> bytes:
        if not self._gzip:
            # Browsers ignore what follows the end of the compressed data; so does the sidecar.
            return b""
        self._tail += data
        if len(self._tail) < 2:
            return b""
        if self._tail[:2] != b"\x1f\x8b":
            # Padding after the last member, which browsers also ignore.
            self._tail = b""
            self._gzip = False
            return b""
        data, self._tail = self._tail, b""
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return self.feed(data)

    def finish(self) -> bytes:
        if not self._seen:
            # An empty body labelled as compressed (some servers do this for empty pages) is
            # empty, as browsers take it.
            return b""
        try:
            out = self._obj.flush()
        except zlib.error as exc:
            raise BodyDecodeError(f"corrupt compressed body: {exc}") from exc
        if not self._obj.eof:
            raise BodyDecodeError("compressed body ends before its compressed stream")
        return out


class _DeflateStage:
    """``deflate``: meant as zlib-wrapped, but some servers send raw deflate; both work."""

    __slots__ = ("_head", "_stage")

    def __init__(self) -> None:
        self._stage: _ZlibStage | None = None
        self._head = b""

    def feed(self, chunk: bytes) -> bytes:
        if self._stage is not None:
            return self._stage.feed(chunk)
        # The two header bytes tell the wrappings apart (RFC 1950: deflate method, window at
        # most 32 KiB, a multiple of 31); wait until both are in.
        self._head += chunk
        if len(self._head) < 2:
            return b""
        cmf, flg = self._head[0], self._head[1]
        wrapped = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0
        self._stage = _ZlibStage(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS, gzip=False)
        head, self._head = self._head, b""
        return self._stage.feed(head)

    def finish(self) -> bytes:
        if self._stage is None:
            if self._head:
                raise BodyDecodeError("compressed body ends before its compressed stream")
            return b""
        return self._stage.finish()


class _BrotliStage:
    """``br`` via the ``brotli`` package."""

    __slots__ = ("_obj", "_seen")

    def __init__(self) -> None:
        self._obj = brotli.Decompressor()
        self._seen = False

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        self._seen = True
        try:
            out: bytes = self._obj.process(chunk)
        except brotli.error as exc:
            raise BodyDecodeError(f"corrupt br body: {exc}") from exc
        return out

    def finish(self) -> bytes:
        if self._seen and not self._obj.is_finished():
            raise BodyDecodeError("br body ends before its compressed stream")
        return b""


def _gzip_stage() -> _Stage:
    return _ZlibStage(16 + zlib.MAX_WBITS, gzip=True)


_STAGES: dict[str, Callable[[], _Stage]] = {
    "gzip": _gzip_stage,
    "x-gzip": _gzip_stage,
    "deflate": _DeflateStage,
    "br": _BrotliStage,
}


def _codings(content_encoding: str) -> list[str]:
    """The codings of a Content-Encoding value in the order they were applied, identity dropped."""
    names = [name.strip().lower() for name in content_encoding.split(",")]
    return [name for name in names if name and name != "identity"]


def decodable_accept_encoding(accept_encoding: str) -> str:
    """An Accept-Encoding that lets the shop use only codings :class:`ContentDecoder` undoes.

    Sent upstream on editor pages, so a browser's ``zstd`` (or ``*``) never gets the page
    encoded in a way the token cannot be injected into; q-values are kept as given.
    """
    kept = [
        item.strip()
        for item in accept_encoding.split(",")
        if (coding := item.split(";", 1)[0].strip().lower()) in _STAGES or coding == "identity"
    ]
    return ", ".join(kept) or "identity"


class ContentDecoder:
    """Streaming decoder for a Content-Encoding value.

    Knows ``gzip`` / ``x-gzip`` (several members allowed), ``deflate`` (zlib-wrapped, falling back
    to raw deflate as some servers send), ``br`` and ``identity``; a comma list of several is
    undone in reverse order. :meth:`feed` raises :class:`BodyDecodeError` on data that cannot be
    decoded, :meth:`finish` on a body that ends mid-stream. An empty body is empty whatever its
    label. Bytes after the end of a compressed stream are ignored, as browsers do.
    """

    __slots__ = ("_stages",)

    @staticmethod
    def supports(content_encoding: str) -> bool:
        """Whether every coding in the value is one this decoder can undo."""
        return all(name in _STAGES for name in _codings(content_encoding))

    def __init__(self, content_encoding: str) -> None:
        codings = _codings(content_encoding)
        unknown = [name for name in codings if name not in _STAGES]
        if unknown:
            raise ValueError(f"unsupported Content-Encoding: {', '.join(unknown)}")
        self._stages = [_STAGES[name]() for name in reversed(codings)]

    def feed(self, chunk: bytes) -> bytes:
        """Decode the next chunk; return what it yields so far (may be ``b""``)."""
        for stage in self._stages:
            chunk = stage.feed(chunk)
        return chunk

    def finish(self) -> bytes:
        """Return the rest; raise BodyDecodeError if the body ended mid-stream."""
        data = b""
        for stage in self._stages:
            data = stage.feed(data) + stage.finish()
        return data


# The codings a rewritten page can go out in, most preferred first. gzip and deflate can keep the
# token element out of the compression context (see ContentEncoder); brotli cannot.
_OUTPUT_CODINGS = ("gzip", "deflate", "br")
_ISOLATING_CODINGS = frozenset(("gzip", "deflate"))


def _accepted_codings(accept_encoding: str) -> tuple[dict[str, bool], bool]:
    """Each coding an Accept-Encoding names, with whether it is acceptable (q > 0), and ``*``'s.

    A q-value that is not a number makes its coding unacceptable: a client that garbles it gets
    the page uncompressed rather than in a coding it may not read.
    """
    named: dict[str, bool] = {}
    star = False
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        acceptable = True
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    acceptable = float(value.strip()) > 0
                except ValueError:
                    acceptable = False
        if coding == "*":
            star = acceptable
        else:
            named["gzip" if coding == "x-gzip" else coding] = acceptable
    return named, star


def response_coding(shop_encoding: str, accept_encoding: str | None) -> str | None:
    """The coding a rewritten editor page goes out in; None to send it uncompressed.

    Only a page the shop compressed is compressed again (``shop_encoding`` names a coding):
    in the shop's own coding when it is gzip or deflate and the client accepts it, else in gzip,
    deflate or br, the first the client accepts. A br page thus goes to a browser as gzip: only
    there can the token be kept apart from what the page echoes (see :class:`ContentEncoder`),
    for about a tenth more bytes at the levels used on the fly (5.2 KB against brotli's 4.8 KB
    for the benchmark's 20 KB page). A client that accepts br alone still gets br. A client that sends
    no Accept-Encoding gets the page uncompressed (RFC 9110 would allow any coding, but such
    clients, curl and crawlers among them, rarely decode one).
    """
    shop_codings = _codings(shop_encoding)
    if not shop_codings or not accept_encoding:
        return None
    named, star = _accepted_codings(accept_encoding)

    def accepts(coding: str) -> bool:
        return named.get(coding, star)

    # A stack of codings ("gzip, br") is rare enough to go out in one coding of the list below.
    if len(shop_codings) == 1:
        shop = "gzip" if shop_codings[0] == "x-gzip" else shop_codings[0]
        if shop in _ISOLATING_CODINGS and accepts(shop):
            return shop
    return next((coding for coding in _OUTPUT_CODINGS if accepts(coding)), None)


class ContentEncoder:
    """Streaming encoder for one coding: ``gzip``, ``deflate`` (zlib-wrapped) or ``br``.

    :meth:`feed` flushes what it was given (a sync flush), so a page the shop streams reaches the
    browser as promptly compressed as it arrived; :meth:`finish` ends the stream. :meth:`whole`
    encodes a body held whole in one call, for an encoder that was fed nothing.

    ``secret`` (a slice of the data given) marks the token element. With gzip and deflate it is
    compressed on its own: a full flush before and after it resets the compression history, so
    no other part of the page, such as a search term the shop echoes from the URL, can be
    matched against it. Otherwise the page's compressed length would tell an attacker who sees
    the traffic and can make the browser ask for pages whether a guessed piece of the token is
    right (the BREACH attack). Brotli has no such reset within a stream: there it is ignored.
    """

    __slots__ = ("_brotli", "_coding", "_zlib")

    def __init__(self, coding: str) -> None:
        if coding not in _OUTPUT_CODINGS:
            raise ValueError(f"unsupported output coding: {coding}")
        self._coding = coding
        self._zlib: zlib._Compress | None = None
        self._brotli: brotli.Compressor | None = None
        if coding == "br":
            self._brotli = brotli.Compressor(quality=BROTLI_QUALITY)
        else:
            wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
            self._zlib = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, wbits)

    @property
    def coding(self) -> str:
        """The Content-Encoding value of what this encoder produces."""
        return self._coding

    def whole(self, body: bytes, secret: slice | None = None) -> bytes:
        """The whole body encoded (in place of feed and finish)."""
        if self._brotli is not None:
            return bytes(self._brotli.process(body) + self._brotli.finish())
        return self._zlib_encode(body, secret, zlib.Z_FINISH)

    def feed(self, chunk: bytes, secret: slice | None = None) -> bytes:
        """Encode the next chunk and flush it; ``b""`` for an empty chunk."""
        if not chunk:
            return b""
        if self._brotli is not None:
            return bytes(self._brotli.process(chunk) + self._brotli.flush())
        return self._zlib_encode(chunk, secret, zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        """End the compressed stream."""
        if self._brotli is not None:
            return bytes(self._brotli.finish())
        assert self._zlib is not None
        return self._zlib.flush(zlib.Z_FINISH)

    def _zlib_encode(self, data: bytes, secret: slice | None, flush: int) -> bytes:
        compressor = self._zlib
        assert compressor is not None
        if secret is None:
            return compressor.compress(data) + compressor.flush(flush)
        view = memoryview(data)
        return b"".join(
            (
                compressor.compress(view[: secret.start]),
                compressor.flush(zlib.Z_FULL_FLUSH),
                compressor.compress(view[secret]),
                compressor.flush(zlib.Z_FULL_FLUSH),
                compressor.compress(view[secret.stop :]),
                compressor.flush(flush),
            )
        )
