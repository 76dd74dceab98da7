"""The local stand-in for the Functions host: routes from the registrations, timers on their schedule."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

import function_app
from dicomweb.api.local_host import PerInstanceConcurrency, build_app, interval_seconds
from dicomweb.api.uploads import CLEANUP_SCHEDULE


@pytest.mark.parametrize("schedule,seconds", [
    ("*/5 * * * * *", 5), ("0 */15 * * * *", 900), ("0 0 */2 * * *", 7200), (CLEANUP_SCHEDULE, 900)])
def test_step_schedules(schedule: str, seconds: int) -> None:
    assert interval_seconds(schedule) == seconds


@pytest.mark.parametrize("schedule", ["0 30 9 * * *", "*/5 * * * *", "0 */0 * * * *", "5 */15 * * * *"])
def test_other_schedules_are_refused(schedule: str) -> None:
    with pytest.raises(ValueError):
        interval_seconds(schedule)


def test_every_http_function_is_routed_under_the_prefix() -> None:
    app = build_app(function_app.app, 4)
    assert app.limit == 4
    paths = {route.path for route in app.app.routes}
    assert {"/v1/studies", "/v1/uploads", "/v1/uploads/{id}", "/v1/uploads/{id}/commit", "/v1/changefeed",
            "/v1/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"} <= paths


def test_requests_beyond_the_per_instance_concurrency_wait_until_a_body_is_sent() -> None:
    """One Flex instance holds at most perInstanceConcurrency requests, each until its answer's last byte."""
    in_flight = peak = 0

    async def slow(request: Request) -> StreamingResponse:
        async def body():  # type: ignore[no-untyped-def]
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            yield b"x"
            in_flight -= 1

        return StreamingResponse(body())

    app = PerInstanceConcurrency(Starlette(routes=[Route("/", slow)]), 3)

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://local") as client:
            answers = await asyncio.gather(*(client.get("/") for _ in range(12)))
        return [a.status_code for a in answers]

    assert asyncio.run(scenario()) == [200] * 12
    assert peak == 3
    with pytest.raises(ValueError):
        PerInstanceConcurrency(app, 0)
