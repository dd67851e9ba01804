"""The fixed shop behind every benchmark target: its pages built once, served from memory.

- ``/product``: a 20 KB HTML product page (never an editor page: pure pass-through).
- ``/product-small``: a 1 KB HTML product page (pass-through where per-request overhead dominates).
- ``/editor/mug``: a 20 KB HTML editor page with a ``</head>`` near the top (the sidecar injects).
- ``/editor-gz/mug``: the same editor page, gzip-encoded once at start-up and always sent with
  ``Content-Encoding: gzip`` (the sidecar decodes, injects and re-frames it).

The pages are deterministic pseudo-text (seeded), so they compress like real markup rather than
like a run of one repeated byte. Usage: ``python bench/upstream.py --port P``; prints
``upstream listening on http://HOST:PORT`` once it serves.

The same shop with a fixed number of workers, as a PHP-FPM shop has (issue #22's attacks are
measured against it): ``create_wsgi_app()`` for gunicorn's sync workers, each serving one request
at a time, body and response included. It serves ``/product-small`` as above, reads every POST
body before it answers, and sends ``GET /download/SIZE`` as SIZE bytes in 64 KiB writes (a worker
is busy until the last one is in its client's socket)::

    gunicorn --worker-class sync --workers 16 --preload --chdir bench 'upstream:create_wsgi_app()'
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

PAGE_SIZE = 20 * 1024
SMALL_PAGE_SIZE = 1024
_WORDS = (
    *("mug", "ceramic", "white", "personalize", "photo", "text", "gift", "coffee", "tea"),
    *("handle", "glossy", "matte", "print", "design", "upload", "colour", "size", "order"),
    *("cart", "checkout", "shipping", "review", "rating", "stock", "price"),
)


def _filler(rng: random.Random, size: int) -> str:
    """Paragraphs of seeded pseudo-words, exactly ``size`` characters long."""
    parts: list[str] = []
    length = 0
    while length < size:
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 24)))
        paragraph = f'<p class="c{rng.randint(0, 99)}">{words}.</p>\n'
        parts.append(paragraph)
        length += len(paragraph)
    return "".join(parts)[:size]


def _page(title: str, seed: int, size: int = PAGE_SIZE) -> bytes:
    """A ``size``-byte HTML page; its ``</head>`` comes within the first few hundred bytes."""
    head = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{title}</title><link rel="stylesheet" href="/static/shop.css"></head>\n'
        "<body><main>\n"
    )
    tail = "</main></body></html>\n"
    body = _filler(random.Random(seed), size - len(head) - len(tail))
    page = (head + body + tail).encode()
    assert len(page) == size
    return page


def create_upstream_app() -> web.Application:
    """The shop application; every body is built here, once."""
    product = _page("Mug - product", seed=1)
    product_small = _page("Mug - product", seed=3, size=SMALL_PAGE_SIZE)
    editor = _page("Mug - personalize", seed=2)
    editor_gz = gzip.compress(editor, compresslevel=6, mtime=0)
    html = "text/html; charset=utf-8"

    async def product_page(request: web.Request) -> web.Response:
        return web.Response(body=product, headers={"Content-Type": html})

    async def product_small_page(request: web.Request) -> web.Response:
        return web.Response(body=product_small, headers={"Content-Type": html})

    async def editor_page(request: web.Request) -> web.Response:
        return web.Response(body=editor, headers={"Content-Type": html})

    async def editor_page_gz(request: web.Request) -> web.Response:
        headers = {"Content-Type": html, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        return web.Response(body=editor_gz, headers=headers)

    app = web.Application()
    app.router.add_get("/product", product_page)
    app.router.add_get("/product-small", product_small_page)
    app.router.add_get("/editor/{name}", editor_page)
    app.router.add_get("/editor-gz/{name}", editor_page_gz)
    return app


DOWNLOAD = "/download/"
_DOWNLOAD_PIECE = b"d" * 65536
StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def create_wsgi_app() -> WsgiApp:
    """The fixed-worker shop (see the module docstring); its page is built here, once."""
    product_small = _page("Mug - product", seed=3, size=SMALL_PAGE_SIZE)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] == "POST":
            received = len(environ["wsgi.input"].read())
            answer = b"received %d bytes\n" % received
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
            return [answer]
        if path.startswith(DOWNLOAD):
            size = int(path.removeprefix(DOWNLOAD))
            headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
            start_response("200 OK", headers)
            return (_DOWNLOAD_PIECE[: min(65536, size - at)] for at in range(0, size, 65536))
        if path == "/product-small":
            headers = [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(product_small))),
            ]
            start_response("200 OK", headers)
            return [product_small]
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]

    return app


async def _serve(host: str, port: int) -> None:
    runner = web.AppRunner(create_upstream_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    print(f"upstream listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # the sidecar serves on uvloop too: same event loop on both sides

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
