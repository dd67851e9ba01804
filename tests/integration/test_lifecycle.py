"""The real process: `cc-sidecar run` serves, reports readiness, and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.fixtures.process import free_port, start_sidecar, wait_ready
from tests.fixtures.shop import Shop, sidecar_config


async def _start(
    tmp_path: Path, shop: Shop, env: dict[str, str] | None = None, **overrides: Any
) -> tuple[asyncio.subprocess.Process, int, int]:
    port, admin = free_port(), free_port()
    document = sidecar_config(shop.url, "http://127.0.0.1:9", upstream_timeout_s=10)
    document.update(
        listen=f"127.0.0.1:{port}",
        admin_listen=f"127.0.0.1:{admin}",
        shutdown_grace_s=5,
        access_log=True,
    )
    document.update(overrides)
    return await start_sidecar(tmp_path, document, env=env), port, admin


async def stopped(process: asyncio.subprocess.Process) -> list[str]:
    """SIGTERM the sidecar, expect exit code 0, and return the lines it wrote to stderr."""
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    assert process.stderr is not None
    return (await process.stderr.read()).decode().splitlines()


async def test_request_in_flight_during_sigterm_completes_and_process_exits_0(
    tmp_path: Path, shop: Shop
) -> None:
    """SIGTERM: readiness turns 503 at once, the in-flight request finishes, exit code 0."""
    process, port, admin = await _start(tmp_path, shop)
    try:
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
            async with client.get(f"http://127.0.0.1:{admin}/healthz") as response:
                assert response.status == 200
            in_flight = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/slow?s=1.5"))
            await asyncio.sleep(0.4)
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with client.get(f"http://127.0.0.1:{admin}/readyz") as response:
                assert response.status == 503
            response = await in_flight
            assert response.status == 200
            assert await response.text() == "finally"
            response.release()
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_request_cut_at_the_end_of_the_grace_still_has_its_access_line(
    tmp_path: Path, shop: Shop
) -> None:
    """SIGTERM with a 5 s request in flight and a 1 s grace: the request is cut, its access line is
    written as a 503 before the last word, and the process exits 0."""
    process, port, admin = await _start(tmp_path, shop, shutdown_grace_s=1)
    try:
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
            in_flight = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/slow?s=5"))
            await asyncio.sleep(0.4)
            lines = await stopped(process)
            with pytest.raises(aiohttp.ClientError):
                await in_flight
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    entries = [json.loads(line) for line in lines]
    access = [(entry["path"], entry["status"]) for entry in entries if entry["logger"] == "proxy.access"]
    assert access == [("/slow", 503)]
    assert entries[-1]["message"] == "stopped"


async def test_every_stderr_line_is_a_json_object(tmp_path: Path, shop: Shop) -> None:
    """The process writes only JSON lines to stderr, the access log included, no secrets."""
    process, port, admin = await _start(tmp_path, shop)
    try:
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
            async with client.get(
                f"http://127.0.0.1:{port}/plain", headers={"Cookie": "PHPSESSID=raw-session-value"}
            ) as response:
                assert response.status == 200
            async with client.get(f"http://127.0.0.1:{admin}/metrics") as response:
                metrics = await response.text()
        lines = await stopped(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    entries = [json.loads(line) for line in lines]
    access = [e for e in entries if e["logger"] == "proxy.access"]
    assert [(e["method"], e["path"], e["status"]) for e in access] == [("GET", "/plain", 200)]
    assert access[0]["storefront"] == "main"
    assert "raw-session-value" not in "\n".join(lines)
    assert "demo-secret" not in "\n".join(lines)
    assert 'cc_sidecar_requests_total{status="200",storefront="main"} 1.0' in metrics


async def test_unreachable_shop_leaves_healthz_200(tmp_path: Path, shop: Shop) -> None:
    """With the shop down the client gets 502 and the sidecar stays healthy and ready."""
    dead = f"http://127.0.0.1:{free_port()}"
    process, port, admin = await _start(tmp_path, shop)
    config = tmp_path / "sidecar.yaml"
    document = yaml.safe_load(config.read_text())
    document["storefronts"][0]["upstream"] = dead
    config.write_text(yaml.safe_dump(document))
    process.kill()
    await process.wait()
    process, port, admin = await _start(tmp_path, shop, storefronts=document["storefronts"])
    try:
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
            async with client.get(f"http://127.0.0.1:{port}/plain") as response:
                assert response.status == 502
            async with client.get(f"http://127.0.0.1:{admin}/healthz") as response:
                assert response.status == 200
            async with client.get(f"http://127.0.0.1:{admin}/readyz") as response:
                assert response.status == 200
    finally:
        process.kill()
        await process.wait()


async def test_startup_warns_about_a_storefront_the_account_lacks(
    tmp_path: Path, shop: Shop, emulator: Any
) -> None:
    """At start-up a storefront_id unknown to the API account is a JSON warning; serving goes on."""
    document = sidecar_config(shop.url, emulator.url)
    document["storefronts"][0]["storefront_id"] = 99
    process, port, admin = await _start(
        tmp_path, shop, customers_canvas=document["customers_canvas"], storefronts=document["storefronts"]
    )
    try:
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
            async with client.get(f"http://127.0.0.1:{port}/plain") as response:
                assert response.status == 200
        entries = [json.loads(line) for line in await stopped(process)]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    warnings = [e for e in entries if e["logger"] == "proxy.storefront_api" and e["level"] == "warning"]
    assert [e["storefront_id"] for e in warnings] == [99]
    assert emulator.state.count("Storefronts_GetAll") == 1


async def listening_line(tmp_path: Path, shop: Shop, env: dict[str, str]) -> dict[str, Any]:
    """Start the sidecar with ``env``, proxy one page (which must arrive), stop it; its start-up line."""
    process, port, admin = await _start(tmp_path, shop, env=env)
    try:
        async with aiohttp.ClientSession() as client:
            await wait_ready(client, f"http://127.0.0.1:{admin}/readyz")
            async with client.get(f"http://127.0.0.1:{port}/plain") as response:
                assert (response.status, await response.text()) == (200, "hello from the shop")
        lines = await stopped(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    [listening] = [e for e in map(json.loads, lines) if e["message"] == "cc-sidecar listening"]
    return listening


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
async def test_serves_on_the_event_loop_named_by_the_environment(
    tmp_path: Path, shop: Shop, loop_name: str
) -> None:
    """CC_SIDECAR_EVENT_LOOP=asyncio serves on the standard loop (uvloop the default); both proxy a page."""
    env = {"CC_SIDECAR_EVENT_LOOP": loop_name} if loop_name == "asyncio" else {}
    assert (await listening_line(tmp_path, shop, env))["event_loop"] == loop_name


async def test_the_start_up_line_says_the_request_path_runs_from_source_when_told(
    tmp_path: Path, shop: Shop
) -> None:
    """CC_SIDECAR_PURE_PYTHON=1: a page is proxied, and "compiled" is false on the listening line."""
    assert (await listening_line(tmp_path, shop, {"CC_SIDECAR_PURE_PYTHON": "1"}))["compiled"] is False


@pytest.mark.skipif(
    not any((Path(__file__).resolve().parents[2] / "proxy").glob("handler.*.so"))
    or os.environ.get("CC_SIDECAR_PURE_PYTHON") == "1",
    reason="runs on a compiled build (make compile)",
)
async def test_the_start_up_line_says_a_compiled_build_serves(tmp_path: Path, shop: Shop) -> None:
    """With `make compile`'s modules, a page is proxied, and "compiled" is true on the listening line."""
    assert (await listening_line(tmp_path, shop, {}))["compiled"] is True


async def test_an_unknown_event_loop_name_is_refused_before_serving(tmp_path: Path, shop: Shop) -> None:
    """CC_SIDECAR_EVENT_LOOP=tokio: exit 2 with one error line naming the variable, nothing served."""
    process, _, _ = await _start(tmp_path, shop, env={"CC_SIDECAR_EVENT_LOOP": "tokio"})
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
    assert process.returncode == 2
    assert [json.loads(line)["message"] for line in stderr.decode().splitlines()] == [
        "CC_SIDECAR_EVENT_LOOP: must be uvloop or asyncio, not 'tokio'"
    ]
