"""The page script's tag on editor pages (``inject: [script]``), with the nonce of the shop's CSP.

``<script src="/.cc-sidecar/v1/cc-user.js"></script>`` goes right after the token element. A shop
whose Content-Security-Policy allows scripts by nonce (``script-src 'nonce-…' 'strict-dynamic'``)
would block a tag without one, so the tag carries the nonce the policy names. Pure: header values in,
bytes out, no aiohttp.

CSP3 (https://www.w3.org/TR/CSP3/): a header may hold several policies separated by ``,`` and a
response may have several headers; each policy is enforced on its own. Within a policy, directives
are separated by ``;``, names are case-insensitive and the first of a name wins. A ``<script src>``
element is governed by ``script-src-elem``, else ``script-src``, else ``default-src``. A nonce
source is ``'nonce-`` base64 (or base64url) ``'``; anything else in its place is not a nonce, so
nothing from the header can leave the attribute.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SCRIPT_PATH = "/.cc-sidecar/v1/cc-user.js"
DECLARATIONS_PATH = "/.cc-sidecar/v1/cc-user.d.ts"
CSP_HEADER = "Content-Security-Policy"
CSP_REPORT_ONLY_HEADER = "Content-Security-Policy-Report-Only"

# Which directive governs a <script src> element, most specific first (CSP3 "effective directive").
_SCRIPT_DIRECTIVES = ("script-src-elem", "script-src", "default-src")
# CSP3's nonce-source: base64-value = 1*( ALPHA / DIGIT / "+" / "/" / "-" / "_" )*2( "=" ).
_NONCE_SOURCE = re.compile(r"'nonce-([A-Za-z0-9+/_-]+={0,2})'", re.IGNORECASE)
# CSP's ASCII whitespace between a directive's name and its sources.
_WHITESPACE = re.compile(r"[\t\n\f\r ]+")
_TAG_OPEN = f'<script src="{SCRIPT_PATH}"'.encode("ascii")
_TAG_CLOSE = b"></script>"
TAG_WITHOUT_NONCE = _TAG_OPEN + _TAG_CLOSE


def script_nonce(policies: Iterable[str]) -> str | None:
    """The nonce for the page script's tag from Content-Security-Policy header values, or None.

    The first policy whose governing directive lists a nonce gives it. A policy without one (hashes
    only, ``'self'``, no script directive at all) has nothing to give: the tag goes without a nonce.
    """
    for header in policies:
        for policy in header.split(","):
            nonce = _policy_nonce(policy)
            if nonce is not None:
                return nonce
    return None


def _policy_nonce(policy: str) -> str | None:
    directives: dict[str, list[str]] = {}
    for directive in policy.split(";"):
        tokens = _WHITESPACE.split(directive.strip())
        name = tokens[0].lower()
        if name and name not in directives:
            directives[name] = tokens[1:]
    for name in _SCRIPT_DIRECTIVES:
        sources = directives.get(name)
        if sources is not None:
            # The governing directive decides, nonce or not: a less specific one does not apply.
            for source in sources:
                match = _NONCE_SOURCE.fullmatch(source)
                if match is not None:
                    return match.group(1)
            return None
    return None


def script_tag(nonce: str | None) -> bytes:
    """``<script src="/.cc-sidecar/v1/cc-user.js" nonce="…"></script>`` (no nonce attribute for None).

    ``nonce`` comes from :func:`script_nonce`, whose characters cannot end the attribute; anything
    else is refused rather than escaped.
    """
    if nonce is None:
        return TAG_WITHOUT_NONCE
    if _NONCE_SOURCE.fullmatch(f"'nonce-{nonce}'") is None:
        raise ValueError("not a CSP nonce")
    return _TAG_OPEN + b' nonce="' + nonce.encode("ascii") + b'"' + _TAG_CLOSE
