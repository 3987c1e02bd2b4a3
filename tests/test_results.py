"""Results on completion: an optional body on POST /complete, kept as the task's `result`, audited in
the completion row, returned by every read, and cleared (but kept in the audit trail) on reopening.

Project "demo" is owned by alice with bob as a member; bob works the tasks.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from support import CreateProject, CreateTask, audit_rows, task_row

pytestmark = pytest.mark.errors_as_responses

RESULT = {
    "summary": "Shipped the **parser**; see the PR.",
    "artifacts": [
        {"name": "Pull request", "url": "https://example.com/org/repo/pull/7"},
        {"name": "Build log", "url": "http://ci.example.com/runs/42?attempt=2"},
    ],
}


@pytest.fixture
def started(create_project: CreateProject, create_task: CreateTask, client: TestClient, auth: AuthHeaders) -> int:
    """A task of project "demo" in progress, held by bob; its id."""
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Parser", project_slug="demo")
    response = client.post(f"/api/tasks/{task['id']}/start", headers=auth("bob"))
    assert response.status_code == 200, response.text
    task_id: int = task["id"]
    return task_id


def complete(client: TestClient, auth: AuthHeaders, task_id: int, body: Any = None, **kwargs: Any) -> Any:
    if body is None:
        return client.post(f"/api/tasks/{task_id}/complete", headers=auth("bob"), **kwargs)
    return client.post(f"/api/tasks/{task_id}/complete", json=body, headers=auth("bob"), **kwargs)


def assert_422_at(response: Any, loc: list[str | int]) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert loc in [entry["loc"][: len(loc)] for entry in body["detail"]], body["detail"]


def test_a_task_has_no_result_until_completed_with_one(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("Plain")

    assert task["result"] is None
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()["result"] is None


def test_completing_without_a_body_works_as_before_and_leaves_no_result(
    client: TestClient, auth: AuthHeaders, started: int, db: Engine
) -> None:
    response = complete(client, auth, started)

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["result"]) == ("completed", None)
    assert task_row(db, started).result is None
    (row,) = audit_rows(db, task_id=started, action="task.completed")
    assert "result" not in row.context


@pytest.mark.parametrize("body", [{}, {"summary": None}, {"summary": "", "artifacts": []}])
def test_a_result_with_nothing_in_it_is_no_result(
    client: TestClient, auth: AuthHeaders, started: int, db: Engine, body: dict[str, Any]
) -> None:
    response = complete(client, auth, started, body)

    assert response.status_code == 200, response.text
    assert response.json()["result"] is None
    assert task_row(db, started).result is None


def test_completing_with_a_json_null_body_is_no_result(client: TestClient, auth: AuthHeaders, started: int) -> None:
    response = client.post(
        f"/api/tasks/{started}/complete",
        content="null",
        headers={**auth("bob"), "Content-Type": "application/json"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["result"] is None


def test_the_result_is_kept_returned_by_every_read_and_audited_in_the_completion_row(
    client: TestClient, auth: AuthHeaders, started: int, db: Engine
) -> None:
    response = complete(client, auth, started, RESULT)

    assert response.status_code == 200, response.text
    assert response.json()["result"] == RESULT
    assert client.get(f"/api/tasks/{started}", headers=auth("alice")).json()["result"] == RESULT
    listed = client.get("/api/tasks", params={"status": "completed"}, headers=auth("alice")).json()
    assert [task["result"] for task in listed] == [RESULT]
    assert task_row(db, started).result == RESULT
    (row,) = audit_rows(db, task_id=started, action="task.completed")
    assert row.context["result"] == [None, RESULT]
    assert row.context["status"] == ["in_progress", "completed"]
    history = client.get(f"/api/tasks/{started}/audit", headers=auth("alice")).json()
    assert history[-1]["context"]["result"] == [None, RESULT]


def test_a_summary_alone_is_a_result_with_no_artifacts(client: TestClient, auth: AuthHeaders, started: int) -> None:
    response = complete(client, auth, started, {"summary": "Done."})

    assert response.json()["result"] == {"summary": "Done.", "artifacts": []}


def test_urls_come_back_as_the_api_normalizes_them(client: TestClient, auth: AuthHeaders, started: int) -> None:
    body = {"artifacts": [{"name": "Site", "url": "HTTPS://Example.COM"}]}

    response = complete(client, auth, started, body)

    assert response.json()["result"] == {
        "summary": None,
        "artifacts": [{"name": "Site", "url": "https://example.com/"}],
    }


def test_completing_from_review_with_a_result_keeps_it(client: TestClient, auth: AuthHeaders, started: int) -> None:
    client.post(f"/api/tasks/{started}/review", headers=auth("bob"))

    response = client.post(f"/api/tasks/{started}/complete", json=RESULT, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json()["result"] == RESULT


# ---------------------------------------------------------------- what is refused


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"summary": "x" * 10_001}, ["body", "summary"]),
        ({"summary": "nul\x00"}, ["body", "summary"]),
        ({"summary": 5}, ["body", "summary"]),
        (
            {"artifacts": [{"name": f"a{n}", "url": f"https://example.com/{n}"} for n in range(21)]},
            ["body", "artifacts"],
        ),
        ({"artifacts": [{"name": "ftp", "url": "ftp://example.com/file"}]}, ["body", "artifacts", 0, "url"]),
        ({"artifacts": [{"name": "js", "url": "javascript:alert(1)"}]}, ["body", "artifacts", 0, "url"]),
        ({"artifacts": [{"name": "file", "url": "file:///etc/passwd"}]}, ["body", "artifacts", 0, "url"]),
        ({"artifacts": [{"name": "rel", "url": "/relative/path"}]}, ["body", "artifacts", 0, "url"]),
        (
            {"artifacts": [{"name": "long", "url": "https://example.com/" + "a" * 2100}]},
            ["body", "artifacts", 0, "url"],
        ),
        ({"artifacts": [{"name": "", "url": "https://example.com"}]}, ["body", "artifacts", 0, "name"]),
        ({"artifacts": [{"name": "   ", "url": "https://example.com"}]}, ["body", "artifacts", 0, "name"]),
        ({"artifacts": [{"name": "n" * 201, "url": "https://example.com"}]}, ["body", "artifacts", 0, "name"]),
        ({"artifacts": [{"url": "https://example.com"}]}, ["body", "artifacts", 0, "name"]),
        ({"artifacts": [{"name": "x", "url": "https://example.com", "size": 3}]}, ["body", "artifacts", 0, "size"]),
        ({"artifacts": "https://example.com"}, ["body", "artifacts"]),
        ({"summary": "ok", "status": "completed"}, ["body", "status"]),
        (["not", "an", "object"], ["body"]),
    ],
)
def test_a_malformed_result_is_refused_with_422_naming_the_field_and_changes_nothing(
    client: TestClient, auth: AuthHeaders, started: int, db: Engine, body: Any, loc: list[str | int]
) -> None:
    response = complete(client, auth, started, body)

    assert_422_at(response, loc)
    assert (task_row(db, started).status, task_row(db, started).result) == ("in_progress", None)


def test_twenty_artifacts_and_ten_thousand_characters_are_the_most(
    client: TestClient, auth: AuthHeaders, started: int
) -> None:
    body = {
        "summary": "s" * 10_000,
        "artifacts": [{"name": "n" * 200, "url": f"https://example.com/{n}"} for n in range(20)],
    }

    response = complete(client, auth, started, body)

    assert response.status_code == 200, response.text
    assert len(response.json()["result"]["artifacts"]) == 20


def test_a_body_that_is_not_json_is_refused(client: TestClient, auth: AuthHeaders, started: int) -> None:
    response = client.post(
        f"/api/tasks/{started}/complete",
        content="{summary",
        headers={**auth("bob"), "Content-Type": "application/json"},
    )

    assert response.status_code == 422, response.text


def test_a_result_on_a_task_you_cannot_see_is_404(
    client: TestClient, auth: AuthHeaders, started: int, db: Engine
) -> None:
    response = client.post(f"/api/tasks/{started}/complete", json=RESULT, headers=auth("mallory"))

    assert response.status_code == 404, response.text
    assert task_row(db, started).result is None


def test_a_result_on_a_task_that_cannot_be_completed_is_refused_and_not_kept(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Pending")

    response = client.post(f"/api/tasks/{task['id']}/complete", json=RESULT, headers=auth("alice"))

    assert response.status_code == 400, response.text
    assert task_row(db, task["id"]).result is None


# ---------------------------------------------------------------- reopening


def test_reopening_clears_the_result_and_the_reopen_row_keeps_it_as_before(
    client: TestClient, auth: AuthHeaders, started: int, db: Engine
) -> None:
    complete(client, auth, started, RESULT)

    reopened = client.patch(f"/api/tasks/{started}", json={"status": "in_progress"}, headers=auth("alice"))

    assert reopened.status_code == 200, reopened.text
    assert reopened.json()["result"] is None
    assert task_row(db, started).result is None
    reopen_row = audit_rows(db, task_id=started, action="task.updated")[-1]
    assert reopen_row.context["result"] == [RESULT, None]
    assert reopen_row.context["status"] == ["completed", "in_progress"]


def test_completing_again_after_reopening_keeps_only_the_new_result(
    client: TestClient, auth: AuthHeaders, started: int, db: Engine
) -> None:
    complete(client, auth, started, RESULT)
    client.patch(f"/api/tasks/{started}", json={"status": "in_progress"}, headers=auth("alice"))

    again = complete(client, auth, started, {"summary": "Second go"})
    without = [task_row(db, started).result]
    client.patch(f"/api/tasks/{started}", json={"status": "in_progress"}, headers=auth("alice"))
    plain = complete(client, auth, started)

    assert again.json()["result"] == {"summary": "Second go", "artifacts": []}
    assert without == [{"summary": "Second go", "artifacts": []}]
    assert plain.json()["result"] is None


def test_a_patch_that_completes_the_task_keeps_no_result(
    client: TestClient, auth: AuthHeaders, started: int, db: Engine
) -> None:
    response = client.patch(f"/api/tasks/{started}", json={"status": "completed"}, headers=auth("bob"))

    assert response.status_code == 200, response.text
    assert response.json()["result"] is None
    assert task_row(db, started).result is None


# ---------------------------------------------------------------- retries and preconditions


def test_an_idempotent_replay_of_a_completion_with_a_result_returns_the_same_response(
    client: TestClient, auth: AuthHeaders, started: int, db: Engine
) -> None:
    key = {"Idempotency-Key": "complete-parser-1"}

    first = client.post(f"/api/tasks/{started}/complete", json=RESULT, headers={**auth("bob"), **key})
    replay = client.post(f"/api/tasks/{started}/complete", json=RESULT, headers={**auth("bob"), **key})
    other = client.post(f"/api/tasks/{started}/complete", json={"summary": "Different"}, headers={**auth("bob"), **key})

    assert first.status_code == replay.status_code == 200, replay.text
    assert replay.content == first.content
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["ETag"] == first.headers["ETag"]
    assert other.status_code == 422, other.text  # another body under the same key
    assert len(audit_rows(db, task_id=started, action="task.completed")) == 1


def test_a_completion_with_a_stale_if_match_is_refused_and_keeps_no_result(
    client: TestClient, auth: AuthHeaders, started: int, db: Engine
) -> None:
    response = client.post(f"/api/tasks/{started}/complete", json=RESULT, headers={**auth("bob"), "If-Match": '"1"'})

    assert response.status_code == 412, response.text
    assert task_row(db, started).result is None
