"""The page script and its declarations, served under ``/.cc-sidecar/v1/`` as static bytes.

Package data (``proxy/static/``) read once at start-up: the same bytes for everyone, no customer
data, so a shared cache may keep them (``Cache-Control: public``). A strong ETag from the bytes lets
a browser revalidate after ``max-age`` with a 304; a new release's bytes get a new ETag.
:mod:`proxy.sidecar_paths` routes the paths here (GET and HEAD).
"""

from __future__ import annotations

import hashlib
from collections.abc import ItemsView
from dataclasses import dataclass
from importlib import resources

from aiohttp import hdrs, web

from proxy.page_script import DECLARATIONS_PATH, SCRIPT_PATH

# A day, then revalidated by ETag: a sidecar upgrade reaches browsers within a day.
STATIC_CACHE_CONTROL = "public, max-age=86400"


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file's bytes, its type, and its ETag's opaque tag (the part between the quotes)."""

    body: bytes
    content_type: str
    tag: str

    @classmethod
    def from_package(cls, name: str, content_type: str) -> StaticFile:
        body = (resources.files("proxy") / "static" / name).read_bytes()
        # Strong: it names these exact bytes (a weak one would let a cache mix versions).
        return cls(body, content_type, hashlib.sha256(body).hexdigest()[:32])

    def respond(self, request: web.BaseRequest) -> web.Response:
        """200 with the bytes, or 304 when If-None-Match names them."""
        headers = {
            hdrs.CACHE_CONTROL: STATIC_CACHE_CONTROL,
            hdrs.ETAG: f'"{self.tag}"',
            "X-Content-Type-Options": "nosniff",
        }
        if self._not_modified(request):
            return web.Response(status=304, headers=headers)
        headers[hdrs.CONTENT_TYPE] = self.content_type
        return web.Response(body=self.body, headers=headers)

    def _not_modified(self, request: web.BaseRequest) -> bool:
        # If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" matches "x"; "*" matches any.
        candidates = request.if_none_match
        return candidates is not None and any(candidate.value in (self.tag, "*") for candidate in candidates)


class StaticFiles:
    """The files under ``/.cc-sidecar/v1/``, by path."""

    def __init__(self) -> None:
        self._files = {
            SCRIPT_PATH: StaticFile.from_package("cc-user.js", "text/javascript; charset=utf-8"),
            # Text to read or save beside the script; not a script the browser could run.
            DECLARATIONS_PATH: StaticFile.from_package("cc-user.d.ts", "text/plain; charset=utf-8"),
        }

    def items(self) -> ItemsView[str, StaticFile]:
        """Each path and its file."""
        return self._files.items()
