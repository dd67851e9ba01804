"""Which storefront a request belongs to (Host or ``select_header``), and path classification.

Everything here is compiled from the configuration once at start-up; matching a request is a
dictionary look-up and at most one precompiled regex.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Generic, TypeVar

from proxy.config import StorefrontSettings

# Paths under this prefix belong to the sidecar and never go upstream.
SIDECAR_PATH_PREFIX = "/.cc-sidecar/"

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


def normalise_path(path: str) -> str:
    """Collapse ``//``, ``.`` and ``..`` the way a shop's router would, so path checks can't be dodged."""
    if "//" not in path and "/." not in path:
        return path
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    trailing = "/" if path.endswith(("/", "/.", "/..")) and segments else ""
    return "/" + "/".join(segments) + trailing


def is_sidecar_path(path: str) -> bool:
    """Tell whether a (decoded) path is the sidecar's own, in any spelling that reaches it."""
    normalised = normalise_path(path)
    if "/." not in normalised:  # most paths: no segment starts with a dot
        return False
    normalised = normalised.lower()
    return normalised.startswith(SIDECAR_PATH_PREFIX) or normalised == SIDECAR_PATH_PREFIX[:-1]


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
                self._by_host[host] = target
            if settings.select_header is not None:
                selector = settings.select_header
                trusted = TrustedNetworks(settings.trusted_networks)
                self._by_header.append((selector.name, selector.value, trusted, target))
        # Host header values seen and the storefront each names: most requests skip parsing it.
        self._by_raw_host: dict[str, T] = {}
        only = storefronts[0] if len(storefronts) == 1 else None
        # The contract: a single storefront that lists no hosts takes every request.
        self._fallback = only[1] if only and not only[0].hosts and not only[0].select_header else None

    def resolve(self, host: str | None, headers: Mapping[str, str], peer: str | None = None) -> T | None:
        """Return the storefront for this Host, headers and peer, or None (the caller answers 421)."""
        for name, value, trusted, target in self._by_header:
            if headers.get(name) == value and trusted.contains(peer):
                return target
        if host and self._by_host:
            found = self._by_raw_host.get(host)
            if found is not None:
                return found
            found = self._by_host.get(_host_name(host))
            if found is not None:
                # Only hosts that name a storefront are kept, so junk Hosts can't fill this up.
                if len(self._by_raw_host) >= _MAX_RAW_HOSTS:
                    self._by_raw_host.clear()
                self._by_raw_host[host] = found
                return found
        return self._fallback


# Spellings of configured hosts remembered (case and port vary); cleared when full.
_MAX_RAW_HOSTS = 1024


def _host_name(host: str) -> str:
    """Strip the port (and IPv6 brackets' port) and lower-case a Host header value."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    name, _, _ = host.partition(":")
    return name
