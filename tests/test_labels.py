"""Labels, for routing work: set on create, replaced by PATCH and audited, filtered on in lists and claims.

Project "demo" is owned by alice with bob as a member; project "secret" is carol's alone.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from support import CreateProject, CreateTask, audit_rows, task_row

# The app as a caller meets it: an unhandled error is a 500 response, not an exception here.
pytestmark = pytest.mark.errors_as_responses


@pytest.fixture
def board(create_project: CreateProject) -> None:
    create_project("demo", owner="alice", members=["bob"])
    create_project("secret", owner="carol")


def assert_422_at(response: Any, loc: list[str | int]) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    assert loc in [entry["loc"][: len(loc)] for entry in body["detail"]], body["detail"]


def titles(client: TestClient, headers: dict[str, str], **params: Any) -> list[str]:
    response = client.get("/api/tasks", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [task["title"] for task in response.json()]


# ---------------------------------------------------------------- the field


def test_a_new_task_has_no_labels_and_every_read_returns_the_field(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("Plain")

    read = client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()
    listed = client.get("/api/tasks", headers=auth("alice")).json()

    assert task["labels"] == read["labels"] == listed[0]["labels"] == []


def test_labels_are_lowercased_deduplicated_and_sorted_on_create(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Labelled", labels=["Python", "db:postgres", "python", "a.b-c_d", "0day"])

    expected = ["0day", "a.b-c_d", "db:postgres", "python"]
    assert task["labels"] == expected
    assert client.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()["labels"] == expected
    assert task_row(db, task["id"]).labels == expected
    (created,) = audit_rows(db, task_id=task["id"], action="task.created")
    assert created.context["labels"] == [None, expected]


def test_a_task_created_without_labels_does_not_name_them_in_its_audit_row(create_task: CreateTask, db: Engine) -> None:
    task = create_task("Plain")

    (created,) = audit_rows(db, task_id=task["id"], action="task.created")
    assert "labels" not in created.context


@pytest.mark.parametrize(
    ("labels", "index"),
    [
        (["-x"], 0),
        ([".x"], 0),
        ([""], 0),
        (["x" * 51], 0),
        (["has space"], 0),
        (["ok", "slash/no"], 1),
        (["ünïcode"], 0),
        (["İ"], 0),  # lowercases to two code points, the second not allowed
        ([7], 0),
        ([None], 0),
        ([["nested"]], 0),
    ],
)
def test_a_malformed_label_is_refused_with_422_naming_it(
    client: TestClient, auth: AuthHeaders, labels: list[Any], index: int
) -> None:
    created = client.post("/api/tasks", json={"title": "Bad", "labels": labels}, headers=auth("alice"))
    assert_422_at(created, ["body", "labels", index])

    listed = client.get("/api/tasks", params={"label": labels[index]}, headers=auth("alice"))
    if isinstance(labels[index], str):
        assert_422_at(listed, ["query", "label", 0])

    claimed = client.post("/api/tasks/claim", json={"labels": labels}, headers=auth("alice"))
    assert_422_at(claimed, ["body", "labels", index])


def test_fifty_characters_is_the_longest_label(create_task: CreateTask) -> None:
    assert create_task("Long", labels=["x" * 50])["labels"] == ["x" * 50]


def test_twenty_labels_are_the_most_a_task_may_have(client: TestClient, auth: AuthHeaders) -> None:
    twenty = [f"l{n:02d}" for n in range(20)]

    accepted = client.post("/api/tasks", json={"title": "Twenty", "labels": twenty}, headers=auth("alice"))
    refused = client.post("/api/tasks", json={"title": "More", "labels": [*twenty, "l20"]}, headers=auth("alice"))
    too_many_filters = client.get("/api/tasks", params={"label": [*twenty, "l20"]}, headers=auth("alice"))
    too_many_to_claim = client.post("/api/tasks/claim", json={"labels": [*twenty, "l20"]}, headers=auth("alice"))

    assert accepted.status_code == 201, accepted.text
    assert_422_at(refused, ["body", "labels"])
    assert_422_at(too_many_filters, ["query", "label"])
    assert_422_at(too_many_to_claim, ["body", "labels"])


@pytest.mark.parametrize("value", ["urgent", {"a": 1}, 3])
def test_labels_must_be_a_list(client: TestClient, auth: AuthHeaders, value: Any) -> None:
    response = client.post("/api/tasks", json={"title": "Bad", "labels": value}, headers=auth("alice"))

    assert_422_at(response, ["body", "labels"])


# ---------------------------------------------------------------- PATCH


def test_patch_replaces_the_whole_set_and_audits_before_and_after(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Route me", labels=["python", "db"])

    response = client.patch(f"/api/tasks/{task['id']}", json={"labels": ["GPU", "python"]}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json()["labels"] == ["gpu", "python"]
    assert response.json()["version"] == task["version"] + 1
    (updated,) = audit_rows(db, task_id=task["id"], action="task.updated")
    assert updated.context == {"labels": [["db", "python"], ["gpu", "python"]]}


def test_patch_with_an_empty_list_removes_every_label(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Route me", labels=["python"])

    response = client.patch(f"/api/tasks/{task['id']}", json={"labels": []}, headers=auth("alice"))

    assert response.json()["labels"] == []
    assert task_row(db, task["id"]).labels == []


def test_patch_with_the_same_set_in_another_order_changes_nothing(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Route me", labels=["a", "b"])

    response = client.patch(f"/api/tasks/{task['id']}", json={"labels": ["B", "a", "b"]}, headers=auth("alice"))

    assert response.status_code == 200, response.text
    assert response.json()["version"] == task["version"]
    assert audit_rows(db, task_id=task["id"], action="task.updated") == []


def test_patch_labels_null_is_refused(client: TestClient, auth: AuthHeaders, create_task: CreateTask) -> None:
    task = create_task("Route me", labels=["a"])

    response = client.patch(f"/api/tasks/{task['id']}", json={"labels": None}, headers=auth("alice"))

    assert_422_at(response, ["body", "labels"])


def test_patch_with_a_bad_label_is_refused_and_changes_nothing(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Route me", labels=["a"])

    response = client.patch(f"/api/tasks/{task['id']}", json={"labels": ["ok", "-bad"]}, headers=auth("alice"))

    assert_422_at(response, ["body", "labels", 1])
    assert task_row(db, task["id"]).labels == ["a"]


# ---------------------------------------------------------------- the list filter


@pytest.mark.usefixtures("board")
def test_the_label_filter_keeps_tasks_carrying_every_label_given(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    create_task("Python only", project_slug="demo", labels=["python"])
    create_task("Python and GPU", project_slug="demo", labels=["python", "gpu"])
    create_task("GPU only", project_slug="demo", labels=["gpu"])
    create_task("Nothing", project_slug="demo")
    # A label that merely starts like one asked for is another label.
    create_task("Pythonic", project_slug="demo", labels=["pythonic"])
    headers = auth("bob")

    assert titles(client, headers, label="python") == ["Python only", "Python and GPU"]
    assert titles(client, headers, label="PYTHON") == ["Python only", "Python and GPU"]
    assert titles(client, headers, label=["gpu", "python"]) == ["Python and GPU"]
    assert titles(client, headers, label=["python", "python"]) == ["Python only", "Python and GPU"]
    assert titles(client, headers, label=["gpu", "rust"]) == []
    response = client.get("/api/tasks", params={"label": "gpu"}, headers=headers)
    assert response.headers["X-Total-Count"] == "2"


@pytest.mark.usefixtures("board")
def test_the_label_filter_combines_with_project_and_other_filters(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    create_task("Demo high", project_slug="demo", labels=["python"], priority="high")
    create_task("Demo low", project_slug="demo", labels=["python"], priority="low")
    create_task("Loose", labels=["python"], priority="high")
    headers = auth("alice")

    assert titles(client, headers, label="python", project="demo") == ["Demo high", "Demo low"]
    assert titles(client, headers, label="python", priority="high") == ["Demo high", "Loose"]
    assert titles(client, headers, label="python", project="demo", sort="-priority") == ["Demo high", "Demo low"]


@pytest.mark.usefixtures("board")
def test_ready_lists_honour_the_label_filter(client: TestClient, auth: AuthHeaders, create_task: CreateTask) -> None:
    free = create_task("Free", project_slug="demo", labels=["python"])
    started = create_task("Started", project_slug="demo", labels=["python"])
    create_task("Free but other label", project_slug="demo", labels=["rust"])
    client.post(f"/api/tasks/{started['id']}/start", headers=auth("alice"))
    headers = auth("bob")

    assert titles(client, headers, ready="true", label="python") == [free["title"]]
    assert titles(client, headers, ready="false", label="python") == ["Started"]


@pytest.mark.usefixtures("board")
def test_pages_of_a_labelled_list_follow_the_link_header(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    for n in range(5):
        create_task(f"T{n}", project_slug="demo", labels=["python"] if n % 2 == 0 else ["rust"])
    headers = auth("bob")

    first = client.get("/api/tasks", params={"label": "python", "limit": 2}, headers=headers)
    second = client.get(first.links["next"]["url"], headers=headers)

    assert [task["title"] for task in first.json()] == ["T0", "T2"]
    assert [task["title"] for task in second.json()] == ["T4"]


@pytest.mark.usefixtures("board")
def test_labels_of_a_task_you_cannot_see_never_show(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    hidden = create_task("Secret work", as_user="carol", project_slug="secret", labels=["python"])
    create_task("Demo work", project_slug="demo", labels=["python"])

    assert titles(client, auth("bob"), label="python") == ["Demo work"]
    assert client.get(f"/api/tasks/{hidden['id']}", headers=auth("bob")).status_code == 404
    patched = client.patch(f"/api/tasks/{hidden['id']}", json={"labels": ["mine"]}, headers=auth("bob"))
    assert patched.status_code == 404
    assert titles(client, auth("root", role="admin"), label="python") == ["Secret work", "Demo work"]


# ---------------------------------------------------------------- claims


@pytest.mark.usefixtures("board")
def test_a_claim_with_labels_takes_only_a_task_carrying_all_of_them(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    create_task("Urgent but Rust", project_slug="demo", labels=["rust"], priority="critical")
    create_task("Python, no GPU", project_slug="demo", labels=["python"], priority="high")
    wanted = create_task("Python on GPU", project_slug="demo", labels=["gpu", "python"], priority="low")

    claimed = client.post("/api/tasks/claim", json={"labels": ["Python", "gpu"]}, headers=auth("bob"))

    assert claimed.status_code == 200, claimed.text
    assert (claimed.json()["id"], claimed.json()["assigned_to"]) == (wanted["id"], "bob")
    again = client.post("/api/tasks/claim", json={"labels": ["python", "gpu"]}, headers=auth("bob"))
    assert again.status_code == 204, again.text


@pytest.mark.usefixtures("board")
def test_a_claim_with_labels_that_nothing_carries_is_204_and_claims_nothing(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, db: Engine
) -> None:
    task = create_task("Python", project_slug="demo", labels=["python"])
    create_task("Hidden Rust", as_user="carol", project_slug="secret", labels=["rust"])

    response = client.post("/api/tasks/claim", json={"labels": ["rust"]}, headers=auth("bob"))

    assert response.status_code == 204, response.text
    assert task_row(db, task["id"]).status == "pending"
    assert audit_rows(db, action="task.claimed") == []


@pytest.mark.usefixtures("board")
def test_a_claim_with_labels_combines_with_project_and_min_priority(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    create_task("Loose python", labels=["python"], priority="critical", as_user="bob")
    create_task("Demo python low", project_slug="demo", labels=["python"], priority="low")
    wanted = create_task("Demo python high", project_slug="demo", labels=["python"], priority="high")

    body = {"labels": ["python"], "project": "demo", "min_priority": "high"}
    claimed = client.post("/api/tasks/claim", json=body, headers=auth("bob"))

    assert claimed.json()["id"] == wanted["id"]


@pytest.mark.usefixtures("board")
def test_a_claim_without_labels_takes_labelled_and_unlabelled_work_alike(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    labelled = create_task("Labelled", project_slug="demo", labels=["python"], priority="high")

    claimed = client.post("/api/tasks/claim", json={"labels": []}, headers=auth("bob"))

    assert claimed.json()["id"] == labelled["id"]
