"""proxy.sidecar_paths: the route table of /.cc-sidecar/, served by a real aiohttp server."""

from __future__ import annotations

from typing import Any, cast

import aiohttp
from aiohttp import web

from proxy.handler import Attachment, Storefront
from proxy.sidecar_paths import TOKEN_PATH, Route, SidecarPaths, SidecarRequest, sidecar_paths


async def hello(sidecar_request: SidecarRequest) -> web.StreamResponse:
    return web.Response(text=f"hello {sidecar_request.host}", headers={"Cache-Control": "public, max-age=60"})


async def serve(aiohttp_raw_server: Any, paths: SidecarPaths) -> Any:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        # The table reads only the request; the storefront is for the routes that need one.
        return await paths.answer(SidecarRequest(request, cast(Storefront, None), False, "shop.test"))

    return await aiohttp_raw_server(handler)


async def test_a_route_added_to_the_table_answers_its_path(aiohttp_raw_server: Any) -> None:
    """A path in the table is answered by its route, with the headers the route chose."""
    server = await serve(aiohttp_raw_server, SidecarPaths({"/.cc-sidecar/v1/hello": Route(hello)}))
    async with (
        aiohttp.ClientSession() as client,
        client.get(server.make_url("/.cc-sidecar/v1/hello")) as response,
    ):
        assert (response.status, await response.text()) == (200, "hello shop.test")
        assert response.headers["Cache-Control"] == "public, max-age=60"


async def test_other_paths_are_404_and_other_methods_405_never_cached(aiohttp_raw_server: Any) -> None:
    """A path not in the table is 404; a method its route does not take is 405 with Allow; both no-store."""
    server = await serve(aiohttp_raw_server, SidecarPaths({"/.cc-sidecar/v1/hello": Route(hello)}))
    async with aiohttp.ClientSession() as client:
        async with client.get(server.make_url("/.cc-sidecar/v1/other")) as response:
            assert (response.status, response.headers["Cache-Control"]) == (404, "no-store")
        async with client.post(server.make_url("/.cc-sidecar/v1/hello")) as response:
            assert (response.status, response.headers["Allow"], response.headers["Cache-Control"]) == (
                405,
                "GET",
                "no-store",
            )


class UnwantedWork:
    """Customer work that must not be asked for: it counts the requests that asked."""

    def __init__(self) -> None:
        self.asked = 0

    async def token_endpoint_attachment(self, sidecar_request: SidecarRequest) -> Attachment:
        self.asked += 1
        return Attachment()


async def test_head_on_the_token_endpoint_is_405_and_does_no_customer_work(aiohttp_raw_server: Any) -> None:
    """HEAD would find or make the customer (a StorefrontUser, a budget charge) for no body: 405, Allow GET."""
    work = UnwantedWork()
    server = await serve(aiohttp_raw_server, sidecar_paths(work, retry_after_s=5))
    async with aiohttp.ClientSession() as client, client.head(server.make_url(TOKEN_PATH)) as response:
        assert (response.status, response.headers["Allow"], response.headers["Cache-Control"]) == (
            405,
            "GET",
            "no-store",
        )
    assert work.asked == 0
