"""No lost updates: tasks carry a version, sent as the ETag, and If-Match refuses a change to a task that moved on.

Project "demo" is owned by alice; bob is a member and "agent-7" an admin-registered agent member.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import httpx2
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from support import AnyResponse, CreateProject, CreateTask, assert_refused, audit_count, task_row

# Each action, the actions that bring a fresh task to where it may be taken, and its query parameters.
ACTIONS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "start": ([], {}),
    "progress": (["start"], {"percent": 30}),
    "review": (["start"], {}),
    "complete": (["start"], {}),
    "block": (["start"], {"reason": "waiting"}),
    "unblock": (["start", "block"], {}),
    "release": (["start"], {}),
}


@pytest.fixture
def demo(client: TestClient, auth: AuthHeaders, create_project: CreateProject) -> None:
    registered = client.post(
        "/api/workers", json={"id": "agent-7", "type": "agent", "name": "Agent 7"}, headers=auth("root", role="admin")
    )
    assert registered.status_code == 201, registered.text
    create_project("demo", owner="alice", members=["bob", "agent-7"])


@pytest.fixture
def task_id(create_task: CreateTask, demo: None) -> int:  # noqa: ARG001
    created: int = create_task("Write the report", as_user="alice", project_slug="demo")["id"]
    return created


def etag(version: int) -> str:
    return f'"{version}"'


def act(
    client: TestClient, auth: AuthHeaders, task_id: int, action: str, *, user: str = "bob", **headers: str
) -> httpx2.Response:
    return client.post(f"/api/tasks/{task_id}/{action}", params=ACTIONS[action][1], headers={**auth(user), **headers})


def bring_to(client: TestClient, auth: AuthHeaders, task_id: int, action: str) -> None:
    for step in ACTIONS[action][0]:
        response = act(client, auth, task_id, step)
        assert response.status_code == 200, response.text


def current_etag(client: TestClient, auth: AuthHeaders, task_id: int) -> str:
    response = client.get(f"/api/tasks/{task_id}", headers=auth("bob"))
    assert response.status_code == 200, response.text
    return response.headers["ETag"]


def assert_precondition_failed(response: AnyResponse, current: str) -> None:
    body = assert_refused(response, 412, "precondition_failed")
    assert current in body["error"]


# ---------------------------------------------------------------- the ETag


@pytest.mark.usefixtures("demo")
def test_a_new_task_has_version_1_and_its_etag_on_create_and_get(client: TestClient, auth: AuthHeaders) -> None:
    created = client.post("/api/tasks", json={"title": "New", "project_slug": "demo"}, headers=auth("bob"))

    fetched = client.get(f"/api/tasks/{created.json()['id']}", headers=auth("bob"))

    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    assert created.headers["ETag"] == '"1"'
    assert fetched.headers["ETag"] == '"1"'
    assert fetched.json()["version"] == 1


def test_every_audited_change_adds_one_to_the_version(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int
) -> None:
    steps: list[Callable[[], httpx2.Response]] = [
        lambda: client.patch(f"/api/tasks/{task_id}", json={"title": "Renamed"}, headers=auth("bob")),
        lambda: act(client, auth, task_id, "start"),
        lambda: act(client, auth, task_id, "progress"),
        lambda: act(client, auth, task_id, "review"),
        lambda: act(client, auth, task_id, "complete"),
    ]

    for version, step in enumerate(steps, start=2):
        response = step()
        assert response.status_code == 200, response.text
        assert response.json()["version"] == version
        assert response.headers["ETag"] == etag(version)
        assert current_etag(client, auth, task_id) == etag(version)
        assert task_row(db, task_id).version == version


def test_a_patch_that_changes_nothing_keeps_the_version(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int
) -> None:
    response = client.patch(
        f"/api/tasks/{task_id}", json={"title": "Write the report"}, headers={**auth("bob"), "If-Match": '"1"'}
    )

    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == '"1"'
    assert task_row(db, task_id).version == 1


def test_the_etag_of_someone_elses_task_is_not_revealed(client: TestClient, auth: AuthHeaders, task_id: int) -> None:
    response = client.get(f"/api/tasks/{task_id}", headers=auth("mallory"))

    assert response.status_code == 404, response.text
    assert "ETag" not in response.headers


# ---------------------------------------------------------------- If-Match on PATCH


def test_patch_with_the_current_etag_succeeds_and_answers_the_new_one(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int
) -> None:
    response = client.patch(
        f"/api/tasks/{task_id}", json={"title": "Renamed"}, headers={**auth("bob"), "If-Match": '"1"'}
    )

    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == '"2"'
    assert task_row(db, task_id).title == "Renamed"


def test_patch_with_a_stale_etag_returns_412_and_changes_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int
) -> None:
    first = client.patch(f"/api/tasks/{task_id}", json={"title": "Mine"}, headers={**auth("alice"), "If-Match": '"1"'})
    assert first.status_code == 200, first.text
    rows_before = audit_count(db, task_id=task_id)

    response = client.patch(
        f"/api/tasks/{task_id}", json={"title": "Yours", "priority": "high"}, headers={**auth("bob"), "If-Match": '"1"'}
    )

    assert_precondition_failed(response, '"2"')
    task = task_row(db, task_id)
    assert (task.title, task.priority, task.version) == ("Mine", "medium", 2)
    assert audit_count(db, task_id=task_id) == rows_before


@pytest.mark.parametrize(
    ("if_match", "matches"),
    [
        pytest.param("*", True, id="star"),
        pytest.param('"1"', True, id="exact"),
        pytest.param('"7", "1"', True, id="list-containing-it"),
        pytest.param('"7","1"', True, id="list-without-spaces"),
        pytest.param('W/"1"', True, id="weak"),
        pytest.param('"2"', False, id="other-version"),
        pytest.param('"7", "8"', False, id="list-without-it"),
        pytest.param("1", False, id="unquoted"),
        pytest.param('"01"', False, id="not-the-same-string"),
    ],
)
def test_patch_if_match_forms(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int, if_match: str, matches: bool
) -> None:
    response = client.patch(
        f"/api/tasks/{task_id}", json={"title": "Renamed"}, headers={**auth("bob"), "If-Match": if_match}
    )

    if matches:
        assert response.status_code == 200, response.text
        assert task_row(db, task_id).title == "Renamed"
    else:
        assert_precondition_failed(response, '"1"')
        assert task_row(db, task_id).title == "Write the report"


def test_patch_without_if_match_proceeds_whatever_the_version(
    client: TestClient, auth: AuthHeaders, task_id: int
) -> None:
    assert client.patch(f"/api/tasks/{task_id}", json={"title": "One"}, headers=auth("alice")).status_code == 200

    response = client.patch(f"/api/tasks/{task_id}", json={"title": "Two"}, headers=auth("bob"))

    assert response.status_code == 200, response.text
    assert response.json()["title"] == "Two"
    assert response.headers["ETag"] == '"3"'


def test_if_match_on_a_task_the_caller_cannot_see_is_404_not_412(
    client: TestClient, auth: AuthHeaders, task_id: int
) -> None:
    response = client.patch(
        f"/api/tasks/{task_id}", json={"title": "X"}, headers={**auth("mallory"), "If-Match": '"9"'}
    )

    assert response.status_code == 404, response.text


def test_an_over_long_if_match_returns_422(client: TestClient, auth: AuthHeaders, task_id: int) -> None:
    response = client.patch(
        f"/api/tasks/{task_id}", json={"title": "X"}, headers={**auth("bob"), "If-Match": '"1",' * 300}
    )

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


# ---------------------------------------------------------------- If-Match on the workflow actions


@pytest.mark.parametrize("action", list(ACTIONS))
def test_an_action_with_the_current_etag_succeeds_and_answers_the_new_one(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int, action: str
) -> None:
    bring_to(client, auth, task_id, action)
    current = current_etag(client, auth, task_id)
    version = task_row(db, task_id).version

    response = act(client, auth, task_id, action, **{"If-Match": current})

    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == etag(version + 1)
    assert current_etag(client, auth, task_id) == etag(version + 1)


@pytest.mark.parametrize("action", list(ACTIONS))
def test_an_action_with_a_stale_etag_returns_412_and_changes_nothing(
    client: TestClient, auth: AuthHeaders, db: Engine, task_id: int, action: str
) -> None:
    bring_to(client, auth, task_id, action)
    stale = current_etag(client, auth, task_id)
    renamed = client.patch(f"/api/tasks/{task_id}", json={"title": "Renamed"}, headers=auth("alice"))
    assert renamed.status_code == 200, renamed.text
    before = task_row(db, task_id)
    rows_before = audit_count(db, task_id=task_id)

    response = act(client, auth, task_id, action, **{"If-Match": stale})

    assert_precondition_failed(response, renamed.headers["ETag"])
    after = task_row(db, task_id)
    assert (after.status, after.assigned_to, after.progress_percent, after.version) == (
        before.status,
        before.assigned_to,
        before.progress_percent,
        before.version,
    )
    assert audit_count(db, task_id=task_id) == rows_before


@pytest.mark.parametrize("action", list(ACTIONS))
def test_an_action_with_if_match_star_succeeds(
    client: TestClient, auth: AuthHeaders, task_id: int, action: str
) -> None:
    bring_to(client, auth, task_id, action)

    response = act(client, auth, task_id, action, **{"If-Match": "*"})

    assert response.status_code == 200, response.text


def test_an_action_that_would_fail_anyway_still_reports_the_stale_etag_first(
    client: TestClient, auth: AuthHeaders, task_id: int
) -> None:
    response = act(client, auth, task_id, "complete", **{"If-Match": '"5"'})

    assert_precondition_failed(response, '"1"')


def test_a_heartbeat_does_not_change_the_etag(client: TestClient, auth: AuthHeaders, db: Engine, task_id: int) -> None:
    started = client.post(f"/api/tasks/{task_id}/start?lease_seconds=60", headers=auth("bob"))
    assert started.status_code == 200, started.text

    response = client.post(f"/api/tasks/{task_id}/heartbeat", headers=auth("bob"))

    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == started.headers["ETag"]
    assert current_etag(client, auth, task_id) == started.headers["ETag"]
    assert task_row(db, task_id).version == started.json()["version"]
    renamed = client.patch(
        f"/api/tasks/{task_id}",
        json={"title": "After the heartbeat"},
        headers={**auth("bob"), "If-Match": started.headers["ETag"]},
    )
    assert renamed.status_code == 200, renamed.text


def test_a_claim_answers_the_claimed_tasks_etag(client: TestClient, auth: AuthHeaders, task_id: int) -> None:
    response = client.post("/api/tasks/claim", headers=auth("bob"))

    assert response.status_code == 200, response.text
    assert response.json()["id"] == task_id
    assert response.headers["ETag"] == '"2"'
    assert current_etag(client, auth, task_id) == '"2"'


# ---------------------------------------------------------------- a human and an agent at once


@pytest.mark.usefixtures("demo")
def test_a_human_and_an_agent_changing_the_same_version_at_once_exactly_one_wins(
    live_server: Any, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    tasks = [create_task(f"Contested {n}", as_user="alice", project_slug="demo")["id"] for n in range(4)]
    human, agent = auth("bob"), auth("agent-7")

    def race(task_id: int) -> tuple[httpx.Response, httpx.Response]:
        barrier = threading.Barrier(2)

        def patch() -> httpx.Response:
            with httpx.Client(base_url=live_server.url, headers={**human, "Connection": "close"}) as http:
                barrier.wait(timeout=10)
                return http.patch(
                    f"/api/tasks/{task_id}", json={"title": "The human's"}, headers={"If-Match": '"1"'}, timeout=30
                )

        def start() -> httpx.Response:
            with httpx.Client(base_url=live_server.url, headers={**agent, "Connection": "close"}) as http:
                barrier.wait(timeout=10)
                return http.post(f"/api/tasks/{task_id}/start", headers={"If-Match": '"1"'}, timeout=30)

        with ThreadPoolExecutor(max_workers=2) as pool:
            patched, started = pool.submit(patch), pool.submit(start)
            return patched.result(timeout=30), started.result(timeout=30)

    for task_id in tasks:
        patched, started = race(task_id)

        codes = sorted([patched.status_code, started.status_code])
        assert codes == [200, 412], (patched.text, started.text)
        loser = patched if patched.status_code == 412 else started
        assert loser.json()["code"] == "precondition_failed"
        task = task_row(db, task_id)
        assert task.version == 2
        if patched.status_code == 200:
            assert (task.title, task.status, task.assigned_to) == ("The human's", "pending", None)
        else:
            assert (task.title, task.status, task.assigned_to) == (
                f"Contested {tasks.index(task_id)}",
                "in_progress",
                "agent-7",
            )
        assert audit_count(db, task_id=task_id) == 2
