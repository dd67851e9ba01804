"""``cc-sidecar demo``: the emulator, a small demo shop and the sidecar in front, on loopback.

The demo shop knows nothing of Customer's Canvas: it has products, an editor page whose script
reads the element the sidecar injects, and a login that rotates its session id; it gzips its
pages, as most shops do. The sidecar recognises logged-in customers by asking the shop
(``session_check``), gives guests an anonymous StorefrontUser (on a first visit once the page's
script calls the token endpoint, which brings the guest cookie back), and merges a guest's storage
into the customer's at login.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import logging
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import NamedTuple

from aiohttp import web

from proxy.admin import Readiness, create_admin_app
from proxy.app import SHOP_SERVER_OPTIONS, shop_services
from proxy.config import parse_settings
from proxy.emulator import EMULATOR_STATE, EmulatorOptions, EmulatorState, RecordedCall, create_emulator_app
from proxy.log import setup_logging
from proxy.metrics import Metrics

log = logging.getLogger("proxy.demo")

SESSION_COOKIE = "PHPSESSID"
PRODUCTS = {"mug": "Personalised mug", "tshirt": "Custom T-shirt", "card": "Greeting card"}


class DemoShop:
    """Sessions of the demo shop: session id -> logged-in email (None for a guest).

    ``merged_into`` answers which guests were merged into a customer: a real shop would not know,
    the demo asks its emulator so the editor page can show what happened at login.
    """

    def __init__(self, merged_into: Callable[[str], list[str]] | None = None) -> None:
        self.sessions: dict[str, str | None] = {}
        self.merged_into = merged_into or (lambda user: [])


DEMO_SHOP = web.AppKey("demo_shop", DemoShop)


def _page(title: str, body: str, request: web.Request) -> web.Response:
    """A page in the shop's layout, with the session cookie set when the browser had none."""
    shop = request.app[DEMO_SHOP]
    session = request.cookies.get(SESSION_COOKIE)
    user = shop.sessions.get(session) if session else None
    who = (
        f"Logged in as <b>{html.escape(user)}</b> · "
        '<form method="post" action="/logout" style="display:inline">'
        "<button>Log out</button></form>"
        if user
        else 'Guest · <a href="/login">Log in</a>'
    )
    document = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}"
        "dt{font-weight:600}code{background:#eee;padding:0 .3em}</style></head>"
        f"<body><header><a href='/'>Demo shop</a> · {who}</header><main>{body}</main></body></html>"
    )
    response = web.Response(text=document, content_type="text/html")
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        # As Django's GZipMiddleware does: the sidecar decodes the page to add the token element
        # and sends it on gzipped again.
        response.enable_compression(web.ContentCoding.gzip)
    if session is None or session not in shop.sessions:
        new_session = secrets.token_urlsafe(16)
        shop.sessions[new_session] = None
        response.set_cookie(SESSION_COOKIE, new_session, httponly=True, samesite="Lax", path="/")
    return response


async def products(request: web.Request) -> web.Response:
    items = "".join(
        f"<li><a href='/editor/{key}'>{html.escape(name)}</a></li>" for key, name in PRODUCTS.items()
    )
    return _page("Demo shop", f"<h1>Products</h1><ul>{items}</ul>", request)


async def editor(request: web.Request) -> web.Response:
    key = request.match_info["product"]
    name = PRODUCTS.get(key)
    if name is None:
        raise web.HTTPNotFound(text="no such product")
    # A Workflow Elements page: the editor element, the vendor's script (here the demo's stand-in,
    # editor.js), and the one line that starts it with what cc-sidecar's page script gives.
    body = (
        f"<h1>Personalise: {html.escape(name)}</h1>"
        "<p id='status' data-state='loading'>loading…</p>"
        "<au-demo-editor id='editor'></au-demo-editor>"
        "<dl><dt>Customer</dt><dd id='user-id'></dd><dt>Kind</dt><dd id='user-kind'></dd>"
        "<dt>Tenant</dt><dd id='tenant-id'></dd><dt>Storefront</dt><dd id='storefront-id'></dd>"
        "<dt>API gateway</dt><dd id='gateway'></dd><dt>Token expires</dt><dd id='expires'></dd>"
        "<dt>Token</dt><dd><code id='token'></code></dd>"
        "<dt>Guest storage</dt><dd id='merged'>n/a (a guest)</dd></dl>"
        "<h2>Token renewals</h2><ol id='renewals'></ol>"
        "<script src='/static/editor.js'></script>"
        "<script type='module'>const editor = document.getElementById('editor');\n"
        "editor.init({integration: await ccSidecar.workflowElements(),"
        f" input: {{productReferenceId: '{key}'}}}});"
        "</script>"
    )
    return _page(f"Editor · {name}", body, request)


async def editor_script(request: web.Request) -> web.Response:
    script = resources.files("proxy").joinpath("demo_static/editor.js").read_text(encoding="utf-8")
    return web.Response(text=script, content_type="application/javascript")


async def login_form(request: web.Request) -> web.Response:
    body = (
        "<h1>Log in</h1><form method='post' action='/login'>"
        "<label>Email <input name='email' value='jane@example.com'></label> <button>Log in</button></form>"
        "<p>Logging in gives you a new shop session; the sidecar still knows your guest storage "
        "and merges it into your account.</p>"
    )
    return _page("Log in", body, request)


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    email = str(form.get("email", "")).strip() or "jane@example.com"
    shop = request.app[DEMO_SHOP]
    shop.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
    # Rotate the session id at login, as shops should (session fixation).
    session = secrets.token_urlsafe(16)
    shop.sessions[session] = email
    response = web.HTTPSeeOther("/editor/mug")
    response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="Lax", path="/")
    raise response


async def logout(request: web.Request) -> web.Response:
    request.app[DEMO_SHOP].sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
    response = web.HTTPSeeOther("/")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def whoami(request: web.Request) -> web.Response:
    """The session check the sidecar calls: who is logged in on this session?"""
    user = request.app[DEMO_SHOP].sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    if user is None:
        return web.json_response({"customer": None}, status=401)
    return web.json_response({"customer": {"id": user}})


async def merges(request: web.Request) -> web.Response:
    """Demo only: the guests merged into the logged-in customer (from the emulator)."""
    shop = request.app[DEMO_SHOP]
    user = shop.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    return web.json_response({"customer": user, "merged": shop.merged_into(user) if user else []})


def create_demo_shop_app(merged_into: Callable[[str], list[str]] | None = None) -> web.Application:
    """The demo shop: products, an editor page, login with session rotation, a whoami endpoint."""
    app = web.Application()
    app[DEMO_SHOP] = DemoShop(merged_into)
    app.router.add_get("/", products)
    app.router.add_get("/editor/{product}", editor)
    app.router.add_get("/static/editor.js", editor_script)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/account/whoami", whoami)
    app.router.add_get("/account/merges", merges)
    return app


def demo_config(shop_url: str, api_url: str, port: int, token_lifetime_s: int = 3600) -> dict[str, object]:
    """The sidecar configuration of the demo (the same document a real deployment would write).

    Short-lived tokens (``--token-lifetime-s``) get a ``token_skew_s`` below half their lifetime,
    so that they are renewed at half-life and the page shows it.
    """
    return {
        "listen": f"127.0.0.1:{port}",
        "admin_listen": "127.0.0.1:0",
        "customers_canvas": {
            "api_url": api_url,
            "client_id": "demo",
            "client_secret": "demo-secret",
            "tenant_id": 1,
            "timeout_s": 5,
        },
        "secret": secrets.token_urlsafe(24),
        "token_skew_s": min(30, token_lifetime_s // 8),
        # The demo narrates the flow itself (narrate_call); a line per request would drown it.
        "access_log": False,
        "storefronts": [
            {
                "name": "demo",
                "storefront_id": 1,
                "upstream": shop_url,
                "session_cookie": SESSION_COOKIE,
                "user": {
                    "session_check": {
                        "url": "/account/whoami",
                        "id_field": "customer.id",
                        "ttl_s": 5,
                    }
                },
                "editor_paths": ["/editor/*"],
                "inject": ["html", "script"],
            }
        ],
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningDemo(NamedTuple):
    """What ``running_demo`` serves: the URL to open, the admin listener's, and the emulator."""

    url: str
    admin_url: str
    emulator_app: web.Application


def narrate_call(call: RecordedCall) -> None:
    """One INFO line per Storefront API call of the flow, so a newcomer sees what happened."""
    body = call.json if isinstance(call.json, dict) else {}
    answered = call.status is not None and call.status < 300
    if call.operation == "StorefrontUsers_Create" and answered:
        kind = "guest" if body.get("isAnonymous") else "customer"
        log.info("%s created: StorefrontUser %s (CreateUser)", kind, body.get("storefrontUserId"))
    elif call.operation == "StorefrontUsers_GetToken" and answered:
        log.info(
            "token cached for %s (GetToken): its editor pages get it without an API call until renewal",
            call.query.get("storefrontUserId"),
        )
    elif call.operation == "StorefrontUsers_MergeAnonymous" and answered:
        log.info(
            "login merged: guest %s into customer %s (MergeAnonymous)",
            body.get("anonymousStorefrontUserId"),
            body.get("regularStorefrontUserId"),
        )
    elif call.status is None or call.status >= 500:
        log.info("Storefront API %s failed (%s)", call.operation, call.status or "no answer")


def _merged_into(state: EmulatorState) -> Callable[[str], list[str]]:
    def merged(user: str) -> list[str]:
        return sorted(guest for (_, guest), regular in state.merged.items() if regular == user)

    return merged


@contextlib.asynccontextmanager
async def running_demo(port: int, *, token_lifetime_s: int = 3600) -> AsyncIterator[RunningDemo]:
    """Emulator, shop and sidecar (with its admin listener), serving until the block ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def listen(runner: web.BaseRunner, listen_port: int) -> int:
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.TCPSite(runner, "127.0.0.1", listen_port).start()
            return int(runner.addresses[0][1])

        def app_runner(app: web.Application) -> web.AppRunner:
            return web.AppRunner(app, access_log=None, handle_signals=False)

        emulator_app = create_emulator_app(EmulatorOptions(token_lifetime_s=token_lifetime_s))
        state = emulator_app[EMULATOR_STATE]
        state.on_answered.append(narrate_call)
        api_port = await listen(app_runner(emulator_app), 0)
        shop_port = await listen(app_runner(create_demo_shop_app(_merged_into(state))), 0)
        settings = parse_settings(
            demo_config(
                f"http://127.0.0.1:{shop_port}", f"http://127.0.0.1:{api_port}", port, token_lifetime_s
            ),
            {},
        )
        metrics = Metrics()
        services = await stack.enter_async_context(shop_services(settings, metrics=metrics))
        sidecar = web.ServerRunner(web.Server(services.handler, **SHOP_SERVER_OPTIONS), handle_signals=False)
        sidecar_port = await listen(sidecar, port)
        readiness = Readiness()
        admin_port = await listen(app_runner(create_admin_app(readiness, metrics)), 0)
        readiness.ready = True
        yield RunningDemo(
            f"http://127.0.0.1:{sidecar_port}/", f"http://127.0.0.1:{admin_port}/", emulator_app
        )


async def _run(port: int, token_lifetime_s: int) -> int:
    async with running_demo(port, token_lifetime_s=token_lifetime_s) as demo:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        print(
            f"cc-sidecar demo is running.\n\n  Open {demo.url}\n"
            f"  Admin listener: {demo.admin_url}metrics (also /healthz, /readyz)\n\n"
            "  1. Open a product: as a guest you get an anonymous StorefrontUser and its token\n"
            "     (on a first visit the page names you and its script fetches the token).\n"
            "  2. Log in: the shop rotates its session; the sidecar merges your guest storage\n"
            "     into your customer (MergeAnonymous) and hands you your own token.\n"
            "  3. Leave the editor open: the page script brings a newer token at renewIn\n"
            f"     (tokens live {token_lifetime_s} s here; --token-lifetime-s 60 shows one soon).\n\n"
            "What happens is logged below. Ctrl-C stops it.\n",
            flush=True,
        )
        await stop.wait()
        state = demo.emulator_app[EMULATOR_STATE]
        print(f"\nStorefront API calls made: {len(state.calls)}", flush=True)
    return 0


def _narration_to_stdout() -> None:
    """The demo's own lines, plain and timed, on stdout under the URL (not JSON on stderr)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s  %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``cc-sidecar demo``."""
    setup_logging("WARNING")
    _narration_to_stdout()
    port = int(args.port)
    if port and not _port_free(port):
        port = _free_port()
    return asyncio.run(_run(port, int(args.token_lifetime_s)))


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
