"""The page script in headless Chromium, as a shop's editor page runs it behind the real sidecar.

The shop serves pages whose own code is the one line of the README; a stand-in custom element takes
the place of the vendor's editor and checks what it is given field by field, as
@aurigma/workflow-elements-types 3.2.0 types ``IWorkflowElementIntegration``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import jwt
import pytest

from proxy.emulator import EmulatorOptions
from tests.fixtures.browser import DevTools, needs_chromium
from tests.fixtures.emulator import start_emulator
from tests.fixtures.shop import Shop, SidecarFactory, sidecar_config

pytestmark = [*needs_chromium, pytest.mark.timeout(120)]

NONCE = "cGFnZS1ub25jZQ=="
# The vendor's editor, stood in for: init() checks the integration as the vendor's types say.
STAND_IN_EDITOR = """
customElements.define("au-stand-in-editor", class extends HTMLElement {
  init(configuration) {
    const i = configuration.integration;
    const problems = [];
    const check = (ok, what) => { if (!ok) { problems.push(what); } };
    check(i !== null && typeof i === "object", "integration: object");
    check(Number.isInteger(i.tenantId), "tenantId: number");
    check(Number.isInteger(i.storefrontId), "storefrontId: number");
    check(i.user !== null && typeof i.user === "object", "user: object");
    check(typeof i.user.id === "string" && i.user.id !== "", "user.id: string");
    check(typeof i.user.token === "string" && i.user.token !== "", "user.token: string");
    check(i.cchubUrl === undefined || typeof i.cchubUrl === "string", "cchubUrl?: string");
    check(i.cchubApiGatewayUrl === undefined || typeof i.cchubApiGatewayUrl === "string",
          "cchubApiGatewayUrl?: string");
    check(i.currency === undefined || typeof i.currency === "string", "currency?: string");
    check(i.quantity === undefined || typeof i.quantity === "number", "quantity?: number");
    window.standIn = {problems: problems, integration: i};
    this.dataset.state = problems.length ? "refused" : "started";
  }
});
"""
WORKFLOW_ELEMENTS_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>Personalize</title></head>
<body><script>{STAND_IN_EDITOR}</script><au-stand-in-editor></au-stand-in-editor>
<script type="module">
const el = document.querySelector("au-stand-in-editor");
el.init({{integration: await ccSidecar.workflowElements()}});
</script></body></html>"""
# CSP violations, collected from before the first byte of the page (CDP's scripts run outside CSP).
COLLECT_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(event.effectiveDirective + " " + event.blockedURI);
});
"""


def browser_config(shop: Shop, emulator: Any, **overrides: Any) -> dict[str, Any]:
    overrides.setdefault("inject", ["html", "script"])
    return sidecar_config(shop.url, emulator.url, **overrides)


async def test_a_workflow_elements_page_gets_a_token_on_the_first_visit(
    browser: tuple[DevTools, str], shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """An empty profile, a page whose only code is el.init({integration: await
    ccSidecar.workflowElements()}): the stand-in editor gets every field as the vendor types it,
    with the token the emulator issued for the guest the sidecar made."""
    devtools, session = browser
    shop.state.editor_html = WORKFLOW_ELEMENTS_PAGE
    sidecar = await make_sidecar(browser_config(shop, emulator))
    await devtools.call("Page.navigate", session, url=str(sidecar.make_url("/editor/mug")))
    await devtools.wait_for(session, "document.querySelector('au-stand-in-editor').dataset.state", "started")
    stand_in = await devtools.evaluate(session, "window.standIn")
    assert stand_in["problems"] == []
    integration = stand_in["integration"]
    on_page = json.loads(
        await devtools.evaluate(session, "document.getElementById('cc-storefront-user').text")
    )
    assert on_page["token"] is None
    assert integration == {
        "tenantId": 1,
        "storefrontId": 1,
        "user": {"id": on_page["userId"], "token": integration["user"]["token"]},
        "cchubApiGatewayUrl": emulator.url,
    }
    assert integration["user"]["id"].startswith("anon-")
    claims = jwt.decode(integration["user"]["token"], options={"verify_signature": False})
    assert claims["sub"] == integration["user"]["id"]
    assert emulator.state.count("StorefrontUsers_Create") == 1
    assert emulator.state.count("StorefrontUsers_GetToken") == 1


async def test_the_editor_helpers_give_each_editor_its_shape(
    browser: tuple[DevTools, str], shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """storefrontJs() and uiFramework() map the same customer onto StorefrontJS' and the UI
    Framework's option names; user() resolves to the object tokenUrl gave, with its token."""
    devtools, session = browser
    shop.state.editor_html = WORKFLOW_ELEMENTS_PAGE
    sidecar = await make_sidecar(browser_config(shop, emulator))
    await devtools.call("Page.navigate", session, url=str(sidecar.make_url("/editor/mug")))
    await devtools.wait_for(session, "document.querySelector('au-stand-in-editor').dataset.state", "started")
    user = await devtools.evaluate(session, "ccSidecar.user()")
    storefront_js = await devtools.evaluate(session, "ccSidecar.storefrontJs()")
    ui_framework = await devtools.evaluate(session, "ccSidecar.uiFramework()")
    hub = emulator.url  # the emulator's URL has no "api." label to drop
    assert isinstance(user["token"], str)
    assert storefront_js == {
        "tenantId": 1,
        "storefrontId": 1,
        "cchubUrl": hub,
        "user": {"id": user["userId"], "userToken": user["token"]},
    }
    assert ui_framework == {
        "user": {"id": user["userId"], "tokenId": user["token"]},
        "backOfficeSettings": {
            "tenantId": 1,
            "storefrontId": 1,
            "token": user["token"],
            "apiGatewayUrl": emulator.url,
        },
    }


async def test_a_synchronous_inline_head_script_reads_the_element(
    browser: tuple[DevTools, str], shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """The shop's first head script, inline and synchronous, finds the element and its token."""
    devtools, session = browser
    shop.state.editor_html = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Personalize</title>'
        "<script>const found = document.getElementById('cc-storefront-user');"
        " window.seenInHead = found && JSON.parse(found.text);</script>"
        "</head><body>editor</body></html>"
    )
    sidecar = await make_sidecar(browser_config(shop, emulator, inject=["html"]))
    # A returning guest: the second page view carries the cookie the first set, so it has a token.
    for _ in range(2):
        await devtools.call("Page.navigate", session, url=str(sidecar.make_url("/editor/mug")))
        await devtools.wait_for(session, "document.readyState", "complete")
    seen = await devtools.evaluate(session, "window.seenInHead")
    assert seen is not None
    assert seen["userId"].startswith("anon-")
    assert isinstance(seen["token"], str)


async def test_under_a_nonce_and_strict_dynamic_csp_the_script_runs_without_a_violation(
    browser: tuple[DevTools, str], shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """script-src 'nonce-…' 'strict-dynamic': the injected tag takes the page's nonce, the script
    runs and gives the page its integration, and the browser reports no CSP violation."""
    devtools, session = browser
    await devtools.call("Page.addScriptToEvaluateOnNewDocument", session, source=COLLECT_VIOLATIONS)
    shop.state.extra_response_headers["Content-Security-Policy"] = (
        f"script-src 'nonce-{NONCE}' 'strict-dynamic'; object-src 'none'; base-uri 'none'"
    )
    shop.state.editor_html = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Personalize</title>'
        f'<script nonce="{NONCE}">window.shopHeadScript = true;</script></head><body>'
        f'<script type="module" nonce="{NONCE}">'
        "window.integration = await ccSidecar.workflowElements();</script></body></html>"
    )
    sidecar = await make_sidecar(browser_config(shop, emulator))
    await devtools.call("Page.navigate", session, url=str(sidecar.make_url("/editor/mug")))
    await devtools.wait_for(session, "typeof (window.integration && window.integration.user.token)", "string")
    assert await devtools.evaluate(session, "window.shopHeadScript") is True
    tag_nonce = await devtools.evaluate(
        session, "document.querySelector('script[src=\"/.cc-sidecar/v1/cc-user.js\"]').nonce"
    )
    assert tag_nonce == NONCE
    assert await devtools.evaluate(session, "window.cspViolations") == []


async def test_user_waits_out_an_outage_honouring_retry_after(
    browser: tuple[DevTools, str], shop: Shop, emulator: Any, make_sidecar: SidecarFactory
) -> None:
    """Customer's Canvas down, then back: user() resolves once it is back; tokenUrl's 503s are
    retried no sooner than their Retry-After (3 s), a handful of requests in all, not a loop."""
    devtools, session = browser
    shop.state.editor_html = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Personalize</title></head><body>'
        '<script type="module">window.user = await ccSidecar.user();</script></body></html>'
    )
    document = browser_config(shop, emulator)
    document["customers_canvas"]["breaker"] = {"failures": 1, "open_s": 3}
    sidecar = await make_sidecar(document)
    emulator.state.fail_all(status=503)
    await devtools.call("Page.navigate", session, url=str(sidecar.make_url("/editor/mug")))
    token_fetches = (
        "performance.getEntriesByType('resource')"
        ".filter((e) => new URL(e.name).pathname === '/.cc-sidecar/token').map((e) => e.startTime)"
    )
    await devtools.wait_for(session, f"{token_fetches}.length >= 2", True, timeout_s=15)
    await asyncio.sleep(4)
    assert await devtools.evaluate(session, "window.user === undefined") is True
    emulator.state.clear_faults()
    await devtools.wait_for(session, "typeof (window.user && window.user.token)", "string", timeout_s=30)
    starts = await devtools.evaluate(session, token_fetches)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert 3 <= len(starts) <= 5, starts
    # Each retry waited out the 503's Retry-After: 3 (a few ms of timer slack allowed).
    assert all(gap >= 2990 for gap in gaps), gaps


async def test_on_token_brings_a_newer_token_before_the_old_one_expires(
    browser: tuple[DevTools, str], shop: Shop, aiohttp_server: Any, make_sidecar: SidecarFactory
) -> None:
    """40-second tokens: at renewIn the script asks tokenUrl, and onToken and the cc-sidecar:user
    event get a different token for the same guest while the first still has time left, the newer
    one with at least half its lifetime; two GetToken calls in all."""
    devtools, session = browser
    lifetime_s = 40
    emulator = await start_emulator(
        aiohttp_server, EmulatorOptions(enable_control=True, token_lifetime_s=lifetime_s)
    )
    shop.state.editor_html = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Personalize</title></head><body>'
        '<script type="module">'
        "window.events = [];"
        "document.addEventListener('cc-sidecar:user', (event) => window.events.push(event.detail.token));"
        "window.onTokens = [];"
        "ccSidecar.onToken((user) => window.onTokens.push({user: user, at: Date.now() / 1000}));"
        "window.first = await ccSidecar.user();"
        "</script></body></html>"
    )
    # token_skew_s below half the lifetime, so the freshness floor is lifetime / 2 (20 s).
    document = browser_config(shop, emulator, inject=["html", "script"])
    document["token_skew_s"] = 5
    sidecar = await make_sidecar(document)
    await devtools.call("Page.navigate", session, url=str(sidecar.make_url("/editor/mug")))
    await devtools.wait_for(session, "typeof (window.first && window.first.token)", "string")
    first = await devtools.evaluate(session, "window.first")
    assert first["renewIn"] < lifetime_s / 2
    # The first visit's token came from tokenUrl after onToken was registered: it is the first call.
    await devtools.wait_for(session, "window.onTokens.length", 2, timeout_s=lifetime_s)
    given, renewed = await devtools.evaluate(session, "window.onTokens")
    assert given["user"]["token"] == first["token"]
    user = renewed["user"]
    assert user["userId"] == first["userId"]
    assert user["token"] != first["token"]
    assert renewed["at"] < first["expiresAt"]
    assert user["expiresIn"] >= lifetime_s / 2
    # The element's null-token object was announced before this module script listened.
    assert await devtools.evaluate(session, "window.events") == [first["token"], user["token"]]
    assert emulator.state.count("StorefrontUsers_GetToken") == 2


# A machine that slept through the renewal: timers of 10 s or more never fire (the script's renewal
# timer among them), as a suspended laptop's timers do not fire while it sleeps.
SLEEP_THROUGH_LONG_TIMERS = """
const realSetTimeout = window.setTimeout;
window.setTimeout = function (callback, delay, ...rest) {
  return delay >= 10000 ? 0 : realSetTimeout(callback, delay, ...rest);
};
"""


@pytest.mark.parametrize(
    "wake_event",
    [
        "document.dispatchEvent(new Event('visibilitychange'))",
        "window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted: true}))",
    ],
    ids=["visibilitychange", "pageshow-from-bfcache"],
)
async def test_a_page_back_from_sleep_past_its_renewal_point_gets_a_newer_token(
    browser: tuple[DevTools, str],
    shop: Shop,
    aiohttp_server: Any,
    make_sidecar: SidecarFactory,
    wake_event: str,
) -> None:
    """40-second tokens, the renewal timer slept through: nothing happens at renewIn, and the page
    coming back (visibilitychange, or pageshow from the back/forward cache) asks tokenUrl at once
    and onToken gets a newer token."""
    devtools, session = browser
    lifetime_s = 40
    emulator = await start_emulator(
        aiohttp_server, EmulatorOptions(enable_control=True, token_lifetime_s=lifetime_s)
    )
    await devtools.call("Page.addScriptToEvaluateOnNewDocument", session, source=SLEEP_THROUGH_LONG_TIMERS)
    shop.state.editor_html = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Personalize</title></head><body>'
        '<script type="module">'
        "window.first = await ccSidecar.user();"
        "window.newer = null;"
        "ccSidecar.onToken((user) => { window.newer = user; });"
        "</script></body></html>"
    )
    document = browser_config(shop, emulator)
    document["token_skew_s"] = 5
    sidecar = await make_sidecar(document)
    await devtools.call("Page.navigate", session, url=str(sidecar.make_url("/editor/mug")))
    await devtools.wait_for(session, "typeof (window.first && window.first.token)", "string")
    first = await devtools.evaluate(session, "window.first")
    await asyncio.sleep(first["renewIn"] + 1)
    assert await devtools.evaluate(session, "window.newer") is None
    assert emulator.state.count("StorefrontUsers_GetToken") == 1
    await devtools.evaluate(session, wake_event)
    await devtools.wait_for(session, "window.newer !== null", True, timeout_s=10)
    newer = await devtools.evaluate(session, "window.newer")
    assert newer["userId"] == first["userId"]
    assert newer["token"] != first["token"]
    assert emulator.state.count("StorefrontUsers_GetToken") == 2
