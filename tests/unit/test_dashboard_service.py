"""The dashboard service's lifecycle on local sockets only (Kafka on a closed port, ledger off):
event streams end when it stops, and a reader that gives up fails the service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError

from services.dashboard.app import Dashboard
from services.dashboard.settings import DashboardSettings

NO_KAFKA = "127.0.0.1:1"  # nothing listens on port 1


def settings(**overrides: object) -> DashboardSettings:
    return DashboardSettings(kafka_bootstrap=NO_KAFKA, dashboard_port=0, dashboard_ledger=False,
                             dashboard_tick_seconds=0.05, dashboard_kafka_retry_max_seconds=0.5, **overrides)


async def test_stopping_ends_every_event_stream_and_the_server() -> None:
    frames: list[str] = []
    running = contextlib.AsyncExitStack()
    dashboard = await running.enter_async_context(Dashboard(settings()))
    url = f"http://127.0.0.1:{dashboard.port}"
    client = httpx.AsyncClient(timeout=5)
    stream = await client.send(client.build_request("GET", f"{url}/events"), stream=True)
    lines = stream.aiter_lines()
    while len(frames) < 2:
        line = await asyncio.wait_for(anext(lines), 5)
        if line.startswith("event: "):
            frames.append(line)
    assert frames == ["event: frame", "event: frame"]
    assert (await client.get(f"{url}/api/state")).json()["kafka"]["connected"] is False
    # What SIGTERM does in `serve`: stops at once, as no open stream holds the server up...
    await asyncio.wait_for(running.aclose(), 10)
    await asyncio.wait_for(_drain(lines), 5)  # ...and the stream has ended, not been cut
    await stream.aclose()
    with pytest.raises(httpx.ConnectError):
        await client.get(f"{url}/api/state")
    await client.aclose()


async def _drain(lines: AsyncIterator[str]) -> None:
    async for _ in lines:
        pass


async def test_a_reader_that_gives_up_fails_the_service_with_its_error() -> None:
    dashboard = Dashboard(settings(dashboard_kafka_retry_attempts=2))
    with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
        async with dashboard:
            await asyncio.wait_for(dashboard.wait(), 20)  # what `serve` waits on: it then exits 1
    async with httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(httpx.ConnectError):  # and the server was stopped
            await client.get(f"http://127.0.0.1:{dashboard.port}/api/state")


TOKEN = "0123456789abcdef-dashboard"
ROUTES = ["/", "/api/state", "/static/dashboard.js"]


async def _first_frame(client: httpx.AsyncClient, url: str, **kwargs: object) -> int:
    """The status of `GET /events`; when 200, after its first frame arrived."""
    async with client.stream("GET", url, **kwargs) as stream:
        if stream.status_code == 200:
            lines = stream.aiter_lines()
            while await asyncio.wait_for(anext(lines), 5) != "event: frame":
                pass
        return stream.status_code


async def test_with_a_token_every_route_asks_for_it() -> None:
    async with Dashboard(settings(dashboard_token=TOKEN)) as dashboard:
        url = f"http://127.0.0.1:{dashboard.port}"
        async with httpx.AsyncClient(base_url=url, timeout=5) as anonymous:
            for route in ROUTES:
                refused = await anonymous.get(route)
                assert (route, refused.status_code) == (route, 401)
                assert refused.headers["www-authenticate"] == "Bearer" and TOKEN not in refused.text
                wrong = await anonymous.get(route, headers={"Authorization": "Bearer wrong-token-0123456789"})
                assert (route, wrong.status_code) == (route, 401)
            assert await _first_frame(anonymous, "/events") == 401
            assert (await anonymous.get("/?token=wrong")).status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url, timeout=5, headers=bearer) as with_header:
            for route in ROUTES:
                assert (route, (await with_header.get(route)).status_code) == (route, 200)
            assert await _first_frame(with_header, "/events") == 200
        async with httpx.AsyncClient(base_url=url, timeout=5) as browser:  # opens the link once, then the cookie
            page = await browser.get(f"/?token={TOKEN}")
            assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
            for route in ROUTES:
                assert (route, (await browser.get(route)).status_code) == (route, 200)
            assert await _first_frame(browser, "/events") == 200


async def test_on_loopback_without_a_token_every_route_stays_open() -> None:
    async with (Dashboard(settings()) as dashboard,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{dashboard.port}", timeout=5) as anonymous):
        for route in ROUTES:
            assert (route, (await anonymous.get(route)).status_code) == (route, 200)
        assert await _first_frame(anonymous, "/events") == 200
