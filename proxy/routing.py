r"""Which storefront a request belongs to (Host or ``select_header``), and path classification.

Everything here is compiled from the configuration once at start-up; matching a request is a
dictionary look-up and at most one precompiled regex.

What a request names is judged strictly and as the shop's server will read it (docs/security.md,
"Request smuggling"):
- Host is ``uri-host [":" port]`` (RFC 9110 7.2) of a host name or IP literal, nothing else;
  the shop receives the normalised host that was matched, never the client's spelling.
- An absolute-form target (``GET http://shop/a``) names its own host, which wins over the Host
  header (RFC 9112 3.2.2); it goes upstream in origin form (``/a``) with that host.
- No spelling of ``/.cc-sidecar/`` reaches the shop: a path is checked after undoing what the most
  lenient servers undo (``\`` as ``/``, ``;`` parameters, trailing dots, further decodings, dot
  segments). An editor page, which gets a token, is a path every server reads alike: one that needs
  none of that undoing and hides no encoded ``/`` or ``\``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Final, Generic, NamedTuple, TypeVar
from urllib.parse import unquote_to_bytes

from proxy.config import StorefrontSettings

# Paths under this prefix belong to the sidecar and never go upstream.
SIDECAR_PATH_PREFIX: Final = "/.cc-sidecar/"

T = TypeVar("T")


def glob_to_regex(glob: str) -> str:
    """Translate an editor path glob: ``*`` stays within one segment, ``**`` crosses segments."""
    parts = re.split(r"(\*\*|\*)", glob)
    out = []
    for part in parts:
        if part == "**":
            out.append(".*")
        elif part == "*":
            out.append("[^/]*")
        else:
            out.append(re.escape(part))
    return "".join(out)


class PathMatcher:
    """Matches a request path (query ignored) against a set of globs, all in one regex."""

    __slots__ = ("_regex",)

    def __init__(self, globs: Iterable[str]) -> None:
        patterns = [glob_to_regex(glob) for glob in globs]
        self._regex = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None

    def matches(self, path: str) -> bool:
        """Tell whether the whole path matches one of the globs."""
        return self._regex is not None and self._regex.fullmatch(path) is not None


# A decoded path that some server would read differently from its letters: a backslash, a ";"
# parameter, a ":" (NTFS streams), a percent sign left after decoding, a dot or whitespace ending
# a segment, a dot segment or an empty one. Most paths have none of these: their own normal form.
# ("/[./]" is "/." and "//" in one branch: the search runs a third faster than with two.)
_NEEDS_NORMALISING: Final = re.compile(r"[\\;:%]|/[./]|[.\s](?:/|$)")
# An encoded "/" or "\" in the target's path: servers disagree on whether it splits a segment.
_ENCODED_SEPARATOR: Final = re.compile(r"%(?:2f|5c)", re.IGNORECASE)
# IIS's %uXXXX escapes, and overlong UTF-8 spellings of ".", "/" and "\" that old decoders took.
_PERCENT_U: Final = re.compile(r"%u([0-9A-Fa-f]{4})")
_OVERLONG: Final = (
    (b"\xc0\xae", b"."),
    (b"\xe0\x80\xae", b"."),
    (b"\xc0\xaf", b"/"),
    (b"\xe0\x80\xaf", b"/"),
    (b"\xc1\x9c", b"\\"),
    (b"\xe0\x81\x9c", b"\\"),
)
# Decodings a server (or a chain of them) may apply on top of the one every server does.
_MAX_EXTRA_DECODINGS: Final = 3


def needs_normalising(path: str) -> bool:
    """Whether ``_NEEDS_NORMALISING`` finds anything in ``path``, most paths tested without it.

    The only whitespace a printable path can hold is the space (every other is a control or a
    separator, which Python does not call printable), so a few substring tests (each one C-speed
    pass) say what the regex says; it tests each character for ``\\s``, ten times their cost.
    """
    if not path.isprintable():
        return _NEEDS_NORMALISING.search(path) is not None
    return (
        "\\" in path
        or ";" in path
        or ":" in path
        or "%" in path
        or "/." in path
        or "//" in path
        or "./" in path
        or " /" in path
        or path.endswith(".")
        or path.endswith(" ")
    )


def normalise_path(path: str) -> str | None:
    r"""The (decoded) path as the most lenient shop server could route it, so no spelling dodges a check.

    Meant for recognising ``/.cc-sidecar/`` in any spelling, not for routing: ``\`` is a separator
    (IIS), ``;`` parameters and ``:`` streams are dropped (Tomcat, NTFS), trailing dots and
    whitespace of a segment are dropped (Windows), percent-escapes left after decoding are decoded
    again (``%uXXXX`` and overlong UTF-8 too), and ``//``, ``.`` and ``..`` collapse. A path that
    needs none of this is returned as it is (the same object). None: a decoding gives a lone
    surrogate (``%uD800``), which is no character at all; servers cannot read such a path alike.
    """
    if not needs_normalising(path):
        return path
    for _ in range(_MAX_EXTRA_DECODINGS):
        if "%" not in path:
            break
        unescaped = _PERCENT_U.sub(lambda match: chr(int(match.group(1), 16)), path)
        try:
            # Bytes an earlier round could not decode come back as they were (surrogateescape).
            raw = unquote_to_bytes(unescaped.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            return None
        for overlong, plain in _OVERLONG:
            raw = raw.replace(overlong, plain)
        decoded = raw.decode("utf-8", "surrogateescape")
        if decoded == path:
            break
        path = decoded
    segments: list[str] = []
    segment = ""
    for segment in path.replace("\\", "/").split("/"):
        segment = segment.partition(";")[0].partition(":")[0]
        if segment not in (".", ".."):
            segment = segment.rstrip(". \t\n\v\f\r")
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    # "/a/", "/a/." and "/a/b/.." name a directory: the slash stays.
    trailing = "/" if segments and segment in ("", ".", "..") else ""
    return "/" + "/".join(segments) + trailing


def has_encoded_separator(target: str) -> bool:
    r"""Whether the target's path (query aside) hides an encoded ``/`` or ``\`` inside a segment."""
    return "%" in target and _ENCODED_SEPARATOR.search(target.partition("?")[0]) is not None


def is_sidecar_path(path: str) -> bool:
    """Tell whether a path normalised by :func:`normalise_path` is the sidecar's own."""
    if "/." not in path:  # most paths: no segment starts with a dot
        return False
    lowered = path.lower()
    return lowered.startswith(SIDECAR_PATH_PREFIX) or lowered == SIDECAR_PATH_PREFIX[:-1]


class HostName(NamedTuple):
    """A valid Host: ``name`` to match storefronts by, ``authority`` to send the shop."""

    name: str
    authority: str


# uri-host [":" port]: a host name (letters, digits, "-", "_", "." ; the common DNS spelling) or
# an IPv6 literal in brackets. Anything else (userinfo, a second host, a path, a list) is not one.
_HOST: Final = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*))(?::([0-9]{0,5}))?")


@lru_cache(maxsize=1024)
def parse_host(value: str) -> HostName | None:
    """The Host header (or absolute-form authority) ``value`` parsed strictly; None if it is not one.

    The name is lower-cased and loses one trailing dot (``Shop.Example.`` is ``shop.example``); an
    empty port is dropped (RFC 3986 3.2.3). Cached: the same few spellings arrive all day.
    """
    match = _HOST.fullmatch(value)
    if match is None:
        return None
    name, port = match.group(1).lower(), match.group(2)
    if name.startswith("["):
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            return None
    else:
        if name.endswith("."):
            name = name[:-1]
        if not name or ".." in name or name.startswith(".") or name.endswith("-"):
            return None
    if port:
        if int(port) > 65535:
            return None
        return HostName(name, f"{name}:{int(port)}")
    return HostName(name, name)


class OriginForm(NamedTuple):
    """A request target in origin form, and the authority an absolute-form target named."""

    authority: str | None
    target: str


_ABSOLUTE_FORM: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([/?][^#]*)?")


def origin_form(target: str) -> OriginForm | None:
    """The target as it goes to the shop; None for one the sidecar refuses (400).

    Origin form (``/a?b``) and ``*`` stay as they are; absolute form (``http://host/a?b``) becomes
    ``/a?b`` and names its host. Other schemes and authority form (CONNECT's) are refused.
    """
    if target.startswith("/") or target == "*":
        return OriginForm(None, target)
    match = _ABSOLUTE_FORM.fullmatch(target)
    if match is None or match.group(1).lower() not in ("http", "https"):
        return None
    rest = match.group(3) or "/"
    return OriginForm(match.group(2), rest if rest.startswith("/") else "/" + rest)


class TrustedNetworks:
    """The peers whose identity header and X-Forwarded-* are believed."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._networks = tuple(networks)
        self.contains = lru_cache(maxsize=4096)(self._contains)

    def _contains(self, peer: str | None) -> bool:
        if not peer or not self._networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


class Router(Generic[T]):
    """Finds the storefront of a request: by ``select_header`` first, then by Host.

    The select header is believed only from the chosen storefront's trusted_networks (the
    ingress sets it); from anyone else it is ignored and the Host decides.
    """

    def __init__(self, storefronts: Sequence[tuple[StorefrontSettings, T]]) -> None:
        self._by_host: dict[str, T] = {}
        self._by_header: list[tuple[str, str, TrustedNetworks, T]] = []
        for settings, target in storefronts:
            for host in settings.hosts:
                # Matched against parse_host()'s names, which have lost a trailing dot.
                self._by_host[host.rstrip(".")] = target
            if settings.select_header is not None:
                selector = settings.select_header
                trusted = TrustedNetworks(settings.trusted_networks)
                self._by_header.append((selector.name, selector.value, trusted, target))
        only = storefronts[0] if len(storefronts) == 1 else None
        # The contract: a single storefront that lists no hosts takes every request.
        self._fallback = only[1] if only and not only[0].hosts and not only[0].select_header else None

    def resolve(self, host: str | None, headers: Mapping[str, str], peer: str | None = None) -> T | None:
        """Return the storefront for this host name, headers and peer, or None (the caller answers 421).

        ``host`` is a name from :func:`parse_host` (lower case, no port), or None without one.
        """
        for name, value, trusted, target in self._by_header:
            if headers.get(name) == value and trusted.contains(peer):
                return target
        if host is not None and self._by_host:
            found = self._by_host.get(host)
            if found is not None:
                return found
        return self._fallback
