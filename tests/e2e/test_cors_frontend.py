"""A browser frontend on another origin calls TaskFlow: CORS as Chromium enforces it.

The page (frontend/) is served from two loopback ports, that is two origins; only the first is
in ALLOWED_ORIGINS. What the server received is recorded, to tell a preflight the browser sent
from a request it let through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from conftest import TokenFactory

from config import Settings
from e2e.harness import (
    FRONTEND_DIRECTORY,
    OfflinePage,
    RecordRequests,
    SeenRequest,
    screenshot_path,
    serve,
    static_site,
)
from main import create_app

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Stage:
    api: str  # TaskFlow's base URL
    allowed: str  # an origin in ALLOWED_ORIGINS
    unlisted: str  # an origin that is not
    token: str
    server: RecordRequests

    def seen_from(self, origin: str) -> list[SeenRequest]:
        return [request for request in self.server.seen if request.origin == origin]

    def create_task(self, title: str) -> dict[str, Any]:
        response = httpx.post(
            f"{self.api}/api/tasks", json={"title": title}, headers={"Authorization": f"Bearer {self.token}"}
        )
        assert response.status_code == 201, response.text
        task: dict[str, Any] = response.json()
        return task


@pytest.fixture
def stage(settings: Settings, make_token: TokenFactory) -> Iterator[Stage]:
    with static_site(FRONTEND_DIRECTORY) as allowed, static_site(FRONTEND_DIRECTORY) as unlisted:
        app = RecordRequests(create_app(settings.model_copy(update={"allowed_origins": [allowed]})))
        with serve(app) as api:
            yield Stage(api, allowed, unlisted, make_token("alice"), app)


def call(watched_page: OfflinePage, stage: Stage, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """Run the page's own fetch call in the browser."""
    result: dict[str, Any] = watched_page.page.evaluate(
        "([api, token, method, path, body]) => window.callTaskFlow(api, token, method, path, body ?? undefined)",
        [stage.api, stage.token, method, path, body],
    )
    return result


def test_frontend_on_an_allowed_origin_reads_the_tasks_and_the_exposed_headers(
    stage: Stage, watched_page: OfflinePage
) -> None:
    task = stage.create_task("Ship the frontend")
    watched_page.page.goto(f"{stage.allowed}/index.html")

    result = call(watched_page, stage, "GET", "/api/tasks")

    assert result.get("status") == 200, result
    assert [row["id"] for row in result["body"]] == [task["id"]]
    assert result["totalCount"] == "1"
    assert REQUEST_ID.match(result["requestId"]), result
    # The Authorization header makes even a GET need a preflight.
    assert [(seen.method, seen.preflight_for) for seen in stage.seen_from(stage.allowed)] == [
        ("OPTIONS", "GET"),
        ("GET", None),
    ]
    watched_page.page.screenshot(path=screenshot_path("cors-frontend-allowed-origin.png"))
    assert watched_page.left_host == []


def test_frontend_on_an_unlisted_origin_is_blocked_by_the_browser(stage: Stage, watched_page: OfflinePage) -> None:
    stage.create_task("Not for strangers")
    watched_page.page.goto(f"{stage.unlisted}/index.html")

    result = call(watched_page, stage, "GET", "/api/tasks")

    assert result == {"error": "TypeError: Failed to fetch"}
    # The preflight was refused, so the browser never sent the request itself.
    assert [(seen.method, seen.preflight_for) for seen in stage.seen_from(stage.unlisted)] == [("OPTIONS", "GET")]
    assert watched_page.left_host == []


def test_preflight_lets_the_allowed_origin_patch_and_delete_but_not_an_unlisted_one(
    stage: Stage, watched_page: OfflinePage
) -> None:
    # Two tasks, two URLs: the browser caches a preflight's answer per URL (Access-Control-Max-Age).
    renamed, deleted = stage.create_task("Rename me"), stage.create_task("Delete me")
    watched_page.page.goto(f"{stage.unlisted}/index.html")
    refused = call(watched_page, stage, "PATCH", f"/api/tasks/{renamed['id']}", {"title": "Hijacked"})
    assert refused == {"error": "TypeError: Failed to fetch"}
    refused = call(watched_page, stage, "DELETE", f"/api/tasks/{deleted['id']}")
    assert refused == {"error": "TypeError: Failed to fetch"}

    watched_page.page.goto(f"{stage.allowed}/index.html")
    patched = call(watched_page, stage, "PATCH", f"/api/tasks/{renamed['id']}", {"title": "Renamed"})
    assert patched.get("status") == 200, patched
    assert patched["body"]["title"] == "Renamed"
    assert REQUEST_ID.match(patched["requestId"]), patched
    removed = call(watched_page, stage, "DELETE", f"/api/tasks/{deleted['id']}")
    assert removed.get("status") == 204, removed

    assert [(seen.method, seen.preflight_for) for seen in stage.seen_from(stage.unlisted)] == [
        ("OPTIONS", "PATCH"),
        ("OPTIONS", "DELETE"),
    ]
    assert [(seen.method, seen.preflight_for) for seen in stage.seen_from(stage.allowed)] == [
        ("OPTIONS", "PATCH"),
        ("PATCH", None),
        ("OPTIONS", "DELETE"),
        ("DELETE", None),
    ]
    assert watched_page.left_host == []
