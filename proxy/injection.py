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
_WS = rb"[ \t\n\f\r]"
# IGNORECASE on bytes is ASCII-only, which is exactly HTML's case-insensitivity for tag names.
# "</head" is searched for alone and the whitespace allowed before its ">" ("</head >") checked
# after it, so a long run of whitespace arriving in pieces is read once, not once per chunk.
_HEAD_NAME = re.compile(rb"</head", re.IGNORECASE)
_WS_RUN = re.compile(_WS + rb"*+")
# A whole "</head>" (whitespace allowed before the ">"), for a body that is all in memory.
_HEAD_END = re.compile(rb"</head" + _WS + rb"*+>", re.IGNORECASE)
# The start of an opening body tag: "<body" followed by whitespace, "/" or ">" so that
# "<bodyx" is not one ("<tbody" never contains "<body").
_BODY_START = re.compile(rb"<body(?=[ \t\n\f\r/>])", re.IGNORECASE)
# Inside a tag, the characters that need a decision: ">" may end it, "=" may open a value.
_TAG_PLAIN = re.compile(rb"[^>=]*+")
# What the end of the buffer may hold of a name still arriving: a prefix of "</head" or of
# "<body". Both start with the buffer's last "<", as neither name has a second one.
_HEAD_PREFIX = re.compile(rb"<(?:/(?:h(?:e(?:a(?:d)?)?)?)?)?", re.IGNORECASE)
_BODY_PREFIX = re.compile(rb"<(?:b(?:o(?:d(?:y)?)?)?)?", re.IGNORECASE)


class BodyDecodeError(ValueError):
    """A compressed body is corrupt or ends before its compressed stream does."""


class HtmlInjector:
    """Streaming: feed chunks of a decoded (identity) HTML body, get output chunks.

    Exactly one element is inserted: right before the first ``</head>`` (any case, whitespace
    allowed before the ``>``); if the body has none, right after the opening ``<body ...>`` tag;
    if it has neither, at the very start. The body tag is the first ``<body`` followed by
    whitespace, ``/`` or ``>`` (so not ``<bodyx`` or ``<tbody>``) and ends at the first ``>``
    outside a quoted attribute value; one still open when the body ends is none. Tags are found
    by scanning bytes, not by parsing HTML, so a ``</head>`` inside a comment or script counts.

    The matches are found across any chunk split, each byte is scanned about once however the
    body is split, and output goes out as early as the rule allows:

    - before either tag has been seen nothing can go out, since the element may belong at the
      start;
    - once a body tag has been seen (with no ``</head>`` before it) everything up to its end can
      go out, and the rest is held until a ``</head>`` turns up or the body ends;
    - once the element is in, chunks pass straight through unscanned.

    The concatenated output for any chunk split equals :func:`inject_html` of the whole body,
    with one deviation for pathological pages: held bytes never exceed ``max_hold``. When they
    would, the injector decides at once (after the body tag if one was seen, else at the start)
    and flushes, so a page with a ``</head>`` only after more than ``max_hold`` bytes gets the
    element earlier than the rule says.
    """

    __slots__ = (
        "_body_at",
        "_body_seen",
        "_buf",
        "_element",
        "_finished",
        "_head_at",
        "_head_ws_at",
        "_injected",
        "_max_hold",
        "_tag_after_eq",
        "_tag_at",
        "_tag_quote",
    )

    def __init__(self, element: bytes, *, max_hold: int = DEFAULT_MAX_HOLD) -> None:
        self._element = element
        self._max_hold = max_hold
        # Bytes received but not yet sent; it only ever loses a prefix, so offsets into it are
        # shifted, never rescanned from the start.
        self._buf = bytearray()
        # No "</head>" match starts before _head_at, and no body tag match before _body_at.
        self._head_at = 0
        self._body_at = 0
        # When "</head" sits at _head_at waiting for its ">", whitespace up to here has been read.
        self._head_ws_at = 0
        # The first "<body" has been read up to _tag_at (-1: none seen yet), inside the quoted
        # value _tag_quote opened (0: none), or just after an "=" (a value may start).
        self._tag_at = -1
        self._tag_quote = 0
        self._tag_after_eq = False
        # True once the body tag has gone out: the held bytes then start right after it.
        self._body_seen = False
        self._injected = False
        self._finished = False

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
        buf = self._buf
        buf += chunk

        head = self._find_head_end(buf)
        if head >= 0:
            return self._inject_at(head)

        out = b""
        if not self._body_seen:
            if self._tag_at < 0:
                start = _BODY_START.search(buf, self._body_at)
                if start is None:
                    self._body_at = _prefix_start(buf, self._body_at, _BODY_PREFIX)
                else:
                    self._tag_at = start.end()
            if self._tag_at >= 0:
                end = self._find_body_tag_end(buf)
                if end >= 0:
                    out = bytes(buf[:end])
                    del buf[:end]
                    # A partial "</head" cannot start inside the tag: its ">" would complete it.
                    self._head_at -= end
                    if self._head_ws_at:
                        self._head_ws_at -= end
                    self._body_seen = True

        if len(buf) > self._max_hold:
            # Nothing went out yet unless the body tag did, so either point is still reachable.
            return out + self._inject_at(0)
        return out

    def finish(self) -> bytes:
        """Return the rest of the output, inserting the element now if it is not in yet."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        if self._injected:
            return b""
        # feed() found every "</head>" and every complete body tag; a body tag still open at
        # the end is no tag (browsers drop it too, with all it swallowed), so: the start.
        return self._inject_at(0)

    def _find_head_end(self, buf: bytearray) -> int:
        """Where the first ``</head>`` in the buffer starts, or -1 (remembering how far it read)."""
        at = self._head_at
        while (name := _HEAD_NAME.search(buf, at)) is not None:
            start = name.start()
            resume = self._head_ws_at if start == self._head_at else 0
            gap = _skip_ws(buf, max(name.end(), resume))
            if gap == len(buf):
                self._head_at = start
                self._head_ws_at = gap
                return -1
            if buf[gap] == 0x3E:  # ">"
                return start
            # Neither "head" nor whitespace holds a "<", so the next candidate is past them.
            at = gap
        self._head_at = _prefix_start(buf, at, _HEAD_PREFIX)
        self._head_ws_at = 0
        return -1

    def _find_body_tag_end(self, buf: bytearray) -> int:
        """Where the first body tag ends, or -1 (remembering where it stopped reading).

        The tag ends at the first ">" outside a quoted attribute value. A quote opens a value only
        right after "=" and whitespace, as in HTML, so a stray quote elsewhere cannot swallow the
        page. Each byte of the tag is read once however the tag is split.
        """
        pos, quote, after_eq = self._tag_at, self._tag_quote, self._tag_after_eq
        size = len(buf)
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
                    return pos + 1
                pos += 1  # "="
                after_eq = True
        self._tag_at, self._tag_quote, self._tag_after_eq = pos, quote, after_eq
        return -1

    def _inject_at(self, at: int) -> bytes:
        buf = self._buf
        out = b"".join((buf[:at], self._element, buf[at:]))
        self._buf = bytearray()
        self._injected = True
        return out


def _skip_ws(buf: bytearray, pos: int) -> int:
    """The first position at or after ``pos`` that is not HTML whitespace (or the end)."""
    run = _WS_RUN.match(buf, pos)
    return pos if run is None else run.end()


def _prefix_start(buf: bytearray, scanned: int, prefix: re.Pattern[bytes]) -> int:
    """Where a match that the buffer holds only the start of could begin (else its end)."""
    lt = buf.rfind(b"<", scanned)
    if lt >= 0 and prefix.fullmatch(buf, lt) is not None:
        return lt
    return len(buf)


def inject_html(body: bytes, element: bytes) -> bytes:
    """Insert ``element`` into a whole HTML body by the rule of :class:`HtmlInjector`."""
    # The common page: one search for "</head>", one copy of the page around the element.
    head = _HEAD_END.search(body)
    if head is not None:
        page = memoryview(body)
        return b"".join((page[: head.start()], element, page[head.start() :]))
    # The whole body is in memory already, so holding it is free: no max_hold deviation.
    injector = HtmlInjector(element, max_hold=len(body))
    return injector.feed(body) + injector.finish()


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
