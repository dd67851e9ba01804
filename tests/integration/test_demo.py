"""`cc-sidecar demo` tells a newcomer what happened: the admin URL, and the flow logged at INFO."""

from __future__ import annotations

import logging
import re

import aiohttp
import pytest

from proxy.demo import running_demo


async def test_demo_logs_guest_token_and_merge_and_shows_the_merge(caplog: pytest.LogCaptureFixture) -> None:
    """A guest's editor page, then a login: INFO lines for guest created, token cached, login merged."""
    caplog.set_level(logging.INFO, logger="proxy.demo")
    async with (
        running_demo(0) as demo,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
    ):
        async with browser.get(demo.admin_url + "metrics") as response:
            assert response.status == 200
            assert "cc_sidecar_requests_total" in await response.text()
        for _ in range(2):  # the first visit brings no cookie yet: no StorefrontUser for it
            async with browser.get(demo.url + "editor/mug") as response:
                page = await response.text()
        guest = re.search(r'"userId": ?"(anon-[^"]+)"', page)
        assert guest is not None, page
        async with browser.post(demo.url + "login", data={"email": "jane@example.com"}) as response:
            assert response.status == 200  # the redirect to /editor/mug followed
        async with browser.get(demo.url + "account/merges") as response:
            assert await response.json() == {"customer": "jane@example.com", "merged": [guest.group(1)]}
    lines = [record.getMessage() for record in caplog.records if record.name == "proxy.demo"]
    assert lines == [
        f"guest created: StorefrontUser {guest.group(1)} (CreateUser)",
        f"token cached for {guest.group(1)} (GetToken): its editor pages get it without an API call until renewal",
        "customer created: StorefrontUser jane@example.com (CreateUser)",
        f"login merged: guest {guest.group(1)} into customer jane@example.com (MergeAnonymous)",
        "token cached for jane@example.com (GetToken): its editor pages get it without an API call until renewal",
    ]
