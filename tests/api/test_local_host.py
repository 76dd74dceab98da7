"""The local stand-in for the Functions host: routes from the registrations, timers on their schedule."""

from __future__ import annotations

import pytest

import function_app
from dicomweb.api.local_host import build_app, interval_seconds
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
    app = build_app(function_app.app)
    paths = {route.path for route in app.routes}
    assert {"/v1/studies", "/v1/uploads", "/v1/uploads/{id}", "/v1/uploads/{id}/commit", "/v1/changefeed",
            "/v1/studies/{study}/series/{series}/instances/{instance}/frames/{frames}"} <= paths
