"""The task workflow: every allowed and forbidden transition, who may make it, and the audit row it leaves.

Project "demo" is owned by alice; bob and carol are plain members; root is an admin and no member.
Tasks are created by alice and, unless a test says otherwise, driven through the workflow by bob.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from support import CreateProject, app_engine, assert_refused, audit_rows, task_row

from models import AuditLog, Task, TaskStatus
from workflow import TRANSITIONS

STATUSES = [status.value for status in TaskStatus]

# The state machine as the issue writes it down; the code's table must be exactly this one.
ALLOWED = {
    ("pending", "in_progress"),
    ("in_progress", "review"),
    ("review", "in_progress"),
    ("in_progress", "completed"),
    ("review", "completed"),
    ("pending", "blocked"),
    ("in_progress", "blocked"),
    ("review", "blocked"),
    ("blocked", "in_progress"),
    ("blocked", "pending"),
    ("completed", "in_progress"),
    # Issue 4: the assignee hands the task back (`release`).
    ("in_progress", "pending"),
}
# Every change between two different statuses that the code's table does not list; the same
# status again is no change at all (a no-op PATCH), not a transition.
FORBIDDEN = [
    (old, new)
    for old in STATUSES
    for new in STATUSES
    if old != new and (TaskStatus(old), TaskStatus(new)) not in TRANSITIONS
]

# Where each action may be taken from, its query parameters, and the audit action it writes.
ALLOWED_FROM = {
    "start": {"pending"},
    "progress": {"in_progress"},
    "review": {"in_progress"},
    "complete": {"in_progress", "review"},
    "block": {"pending", "in_progress", "review"},
    "unblock": {"blocked"},
}
ACTION_PARAMS: dict[str, dict[str, Any]] = {"progress": {"percent": 50}, "block": {"reason": "waiting on the API"}}
AUDIT_ACTION = {
    "start": "task.started",
    "progress": "task.progress",
    "review": "task.review",
    "complete": "task.completed",
    "block": "task.blocked",
    "unblock": "task.unblocked",
}
WRONG_STATUS = [
    (action, status) for action in ALLOWED_FROM for status in STATUSES if status not in ALLOWED_FROM[action]
]

# The actions (by bob, the assignee) that take a task from a status to another.
PATHS: dict[str, list[str]] = {
    "pending": [],
    "in_progress": ["start"],
    "review": ["start", "review"],
    "completed": ["start", "complete"],
    "blocked": ["start", "block"],
}


@dataclass
class Workflow:
    """Drives tasks through the API and reads what was really stored through an engine of its own."""

    client: TestClient
    auth: AuthHeaders
    db: Engine

    def new_task(self, *, as_user: str = "alice", **fields: Any) -> int:
        fields.setdefault("project_slug", "demo")
        response = self.client.post(
            "/api/tasks", json={"title": "Write the report", **fields}, headers=self.auth(as_user)
        )
        assert response.status_code == 201, response.text
        task_id: int = response.json()["id"]
        return task_id

    def act(self, task_id: int, action: str, *, as_user: str = "bob", **params: Any) -> httpx2.Response:
        params = {**ACTION_PARAMS.get(action, {}), **params}
        return self.client.post(f"/api/tasks/{task_id}/{action}", params=params, headers=self.auth(as_user))

    def patch(self, task_id: int, *, as_user: str = "bob", **fields: Any) -> httpx2.Response:
        return self.client.patch(f"/api/tasks/{task_id}", json=fields, headers=self.auth(as_user))

    def drive(self, task_id: int, status: str, *, as_user: str = "bob") -> None:
        """Take a pending task to `status` through the action endpoints."""
        for action in PATHS[status]:
            response = self.act(task_id, action, as_user=as_user)
            assert response.status_code == 200, response.text
        assert self.stored(task_id).status == status

    def stored(self, task_id: int) -> Task:
        return task_row(self.db, task_id)

    def audit(self, task_id: int) -> list[AuditLog]:
        return audit_rows(self.db, task_id=task_id)


@pytest.fixture
def flow(client: TestClient, auth: AuthHeaders, db: Engine, create_project: CreateProject) -> Workflow:
    create_project("demo", owner="alice", members=["bob", "carol"])
    return Workflow(client, auth, db)


def assert_unchanged(flow: Workflow, task_id: int, before: Task, audit_rows: int) -> None:
    after = flow.stored(task_id)
    assert (after.status, after.assigned_to, after.progress_percent) == (
        before.status,
        before.assigned_to,
        before.progress_percent,
    )
    assert after.updated_at == before.updated_at
    assert len(flow.audit(task_id)) == audit_rows


def new_audit_row(flow: Workflow, task_id: int, rows_before: int) -> AuditLog:
    rows = flow.audit(task_id)[rows_before:]
    assert len(rows) == 1, [(row.action, row.context) for row in rows]
    return rows[0]


# ---------------------------------------------------------------- the table


def test_the_transition_table_is_the_one_the_issue_documents() -> None:
    assert {(old.value, new.value) for old, new in TRANSITIONS} == ALLOWED


# ---------------------------------------------------------------- allowed transitions, through the actions


@pytest.mark.parametrize(
    ("current", "action", "target", "extra_context"),
    [
        pytest.param("pending", "start", "in_progress", {"assigned_to": [None, "bob"]}, id="start"),
        pytest.param("in_progress", "review", "review", {}, id="review"),
        pytest.param("in_progress", "complete", "completed", {"progress_percent": [0, 100]}, id="complete-in-progress"),
        pytest.param("review", "complete", "completed", {"progress_percent": [0, 100]}, id="complete-review"),
        pytest.param("in_progress", "block", "blocked", {"reason": "waiting on the API"}, id="block-in-progress"),
        pytest.param("review", "block", "blocked", {"reason": "waiting on the API"}, id="block-review"),
        pytest.param("blocked", "unblock", "in_progress", {}, id="unblock-assigned"),
    ],
)
def test_an_allowed_action_moves_the_task_and_writes_one_audit_row(
    flow: Workflow, current: str, action: str, target: str, extra_context: dict[str, Any]
) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, current)
    rows_before = len(flow.audit(task_id))

    response = flow.act(task_id, action)

    assert response.status_code == 200, response.text
    body = response.json()
    expected_progress = 100 if target == "completed" else 0
    assert (body["status"], body["assigned_to"], body["progress_percent"]) == (target, "bob", expected_progress)
    stored = flow.stored(task_id)
    assert (stored.status, stored.assigned_to, stored.progress_percent) == (target, "bob", expected_progress)
    row = new_audit_row(flow, task_id, rows_before)
    assert row.action == AUDIT_ACTION[action]
    assert row.context == {"status": [current, target], **extra_context}
    assert (row.actor_id, row.actor_type, row.project_slug) == ("bob", "human", "demo")


def test_blocking_an_unassigned_pending_task_keeps_it_unassigned(flow: Workflow) -> None:
    task_id = flow.new_task()

    response = flow.act(task_id, "block", as_user="carol", reason="waiting on legal")

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["assigned_to"]) == ("blocked", None)
    row = new_audit_row(flow, task_id, 1)
    assert row.action == "task.blocked"
    assert row.context == {"status": ["pending", "blocked"], "reason": "waiting on legal"}


def test_unblocking_an_unassigned_task_returns_it_to_pending(flow: Workflow) -> None:
    task_id = flow.new_task()
    assert flow.act(task_id, "block").status_code == 200

    response = flow.act(task_id, "unblock", as_user="carol")

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["assigned_to"]) == ("pending", None)
    assert flow.stored(task_id).status == "pending"
    row = new_audit_row(flow, task_id, 2)
    assert (row.action, row.context, row.actor_id) == ("task.unblocked", {"status": ["blocked", "pending"]}, "carol")


def test_unblocking_an_assigned_task_blocked_while_pending_moves_it_to_in_progress(flow: Workflow) -> None:
    task_id = flow.new_task(assigned_to="bob")
    assert flow.act(task_id, "block", as_user="carol").status_code == 200

    response = flow.act(task_id, "unblock", as_user="carol")

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["assigned_to"]) == ("in_progress", "bob")
    row = new_audit_row(flow, task_id, 2)
    assert (row.action, row.context) == ("task.unblocked", {"status": ["blocked", "in_progress"]})


def test_any_member_may_block_and_unblock_a_task_assigned_to_someone_else(flow: Workflow) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, "in_progress")

    blocked = flow.act(task_id, "block", as_user="carol", reason="needs a decision")
    unblocked = flow.act(task_id, "unblock", as_user="carol")

    assert blocked.status_code == 200, blocked.text
    assert unblocked.status_code == 200, unblocked.text
    assert (unblocked.json()["status"], unblocked.json()["assigned_to"]) == ("in_progress", "bob")
    assert [(row.action, row.actor_id) for row in flow.audit(task_id)[-2:]] == [
        ("task.blocked", "carol"),
        ("task.unblocked", "carol"),
    ]


# ---------------------------------------------------------------- allowed transitions, through PATCH status


@pytest.mark.parametrize(
    ("current", "target", "as_user", "extra_context"),
    [
        pytest.param("pending", "in_progress", "bob", {"assigned_to": [None, "bob"]}, id="start"),
        pytest.param("in_progress", "review", "bob", {}, id="review"),
        pytest.param("review", "in_progress", "bob", {}, id="changes-requested-by-assignee"),
        pytest.param("review", "in_progress", "alice", {}, id="changes-requested-by-owner"),
        pytest.param("in_progress", "completed", "bob", {"progress_percent": [0, 100]}, id="complete-in-progress"),
        pytest.param("review", "completed", "bob", {"progress_percent": [0, 100]}, id="complete-review"),
        pytest.param("blocked", "in_progress", "carol", {}, id="unblock-assigned"),
        pytest.param("completed", "in_progress", "bob", {}, id="reopen-by-assignee"),
        pytest.param("completed", "in_progress", "alice", {}, id="reopen-by-owner"),
    ],
)
def test_an_allowed_patch_of_status_moves_the_task_and_writes_one_audit_row(
    flow: Workflow, current: str, target: str, as_user: str, extra_context: dict[str, Any]
) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, current)
    rows_before = len(flow.audit(task_id))

    response = flow.patch(task_id, as_user=as_user, status=target)

    assert response.status_code == 200, response.text
    body = response.json()
    expected_progress = 100 if "completed" in (current, target) else 0
    assert (body["status"], body["assigned_to"], body["progress_percent"]) == (target, "bob", expected_progress)
    stored = flow.stored(task_id)
    assert (stored.status, stored.assigned_to, stored.progress_percent) == (target, "bob", expected_progress)
    row = new_audit_row(flow, task_id, rows_before)
    assert row.action == "task.updated"
    assert row.context == {"status": [current, target], **extra_context}
    assert (row.actor_id, row.project_slug) == (as_user, "demo")


def test_patch_unblocks_an_unassigned_task_to_pending(flow: Workflow) -> None:
    task_id = flow.new_task()
    assert flow.act(task_id, "block").status_code == 200

    response = flow.patch(task_id, as_user="carol", status="pending")

    assert response.status_code == 200, response.text
    assert flow.stored(task_id).status == "pending"
    row = new_audit_row(flow, task_id, 2)
    assert (row.action, row.context) == ("task.updated", {"status": ["blocked", "pending"]})


@pytest.mark.parametrize(
    ("assigned_to", "wrong_target"),
    [
        pytest.param("bob", "pending", id="assigned-to-pending"),
        pytest.param(None, "in_progress", id="unassigned-to-in-progress"),
    ],
)
def test_patch_unblocking_to_the_wrong_status_returns_400(
    flow: Workflow, assigned_to: str | None, wrong_target: str
) -> None:
    task_id = flow.new_task(assigned_to=assigned_to)
    assert flow.act(task_id, "block").status_code == 200
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.patch(task_id, as_user="alice", status=wrong_target)

    body = assert_refused(response, 400, "invalid_transition")
    assert wrong_target in body["error"]
    assert_unchanged(flow, task_id, before, rows)


@pytest.mark.parametrize("current", ["pending", "in_progress", "review"])
def test_patch_status_blocked_returns_400_because_blocking_needs_a_reason(flow: Workflow, current: str) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, current)
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.patch(task_id, as_user="alice", status="blocked")

    body = assert_refused(response, 400, "bad_request")
    assert "reason" in body["error"]
    assert_unchanged(flow, task_id, before, rows)


@pytest.mark.parametrize("status", STATUSES)
def test_patch_of_the_current_status_changes_nothing_and_writes_no_audit_row(flow: Workflow, status: str) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, status)
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.patch(task_id, as_user="alice", status=status)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == status
    assert_unchanged(flow, task_id, before, rows)


# ---------------------------------------------------------------- forbidden transitions


@pytest.mark.parametrize(("current", "target"), FORBIDDEN)
def test_patch_of_status_to_a_forbidden_status_returns_400_naming_the_current_status(
    flow: Workflow, current: str, target: str
) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, current)
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.patch(task_id, as_user="bob", status=target)

    body = assert_refused(response, 400, "invalid_transition")
    assert f"is {current}" in body["error"]
    assert_unchanged(flow, task_id, before, rows)


@pytest.mark.parametrize(("action", "current"), WRONG_STATUS)
def test_an_action_from_a_status_it_is_not_allowed_in_returns_400_naming_the_current_status(
    flow: Workflow, action: str, current: str
) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, current)
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.act(task_id, action, as_user="bob")

    body = assert_refused(response, 400, "invalid_transition")
    assert f"is {current}" in body["error"]
    assert_unchanged(flow, task_id, before, rows)


def test_repeating_complete_on_a_completed_task_returns_400_and_writes_no_second_audit_row(flow: Workflow) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, "in_progress")
    assert flow.act(task_id, "complete").status_code == 200
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    replay = flow.act(task_id, "complete")

    body = assert_refused(replay, 400, "invalid_transition")
    assert "is completed" in body["error"]
    assert_unchanged(flow, task_id, before, rows)
    assert [row.action for row in flow.audit(task_id)].count("task.completed") == 1


def test_reopening_a_completed_task_that_has_no_assignee_returns_400(flow: Workflow) -> None:
    # An in_progress task needs an assignee (clearing it is a 400); reopening must not make one without.
    task_id = flow.new_task()
    flow.drive(task_id, "completed")
    cleared = flow.patch(task_id, as_user="alice", assigned_to=None)
    assert cleared.status_code == 200, cleared.text
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.patch(task_id, as_user="alice", status="in_progress")

    assert_refused(response, 400, "bad_request")
    assert_unchanged(flow, task_id, before, rows)


# ---------------------------------------------------------------- who may make which transition


def test_start_task_assigned_to_someone_else_returns_403(flow: Workflow) -> None:
    task_id = flow.new_task(assigned_to="carol")
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.act(task_id, "start", as_user="bob")

    body = assert_refused(response, 403, "forbidden")
    assert "carol" in body["error"]
    assert_unchanged(flow, task_id, before, rows)


def test_patch_to_in_progress_of_a_task_assigned_to_someone_else_returns_403(flow: Workflow) -> None:
    task_id = flow.new_task(assigned_to="carol")
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.patch(task_id, as_user="bob", status="in_progress")

    assert_refused(response, 403, "forbidden")
    assert_unchanged(flow, task_id, before, rows)


def test_start_task_assigned_to_me_keeps_me_as_assignee(flow: Workflow) -> None:
    task_id = flow.new_task(assigned_to="bob")

    response = flow.act(task_id, "start", as_user="bob")

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["assigned_to"]) == ("in_progress", "bob")
    row = new_audit_row(flow, task_id, 1)
    assert (row.action, row.context) == ("task.started", {"status": ["pending", "in_progress"]})


@pytest.mark.parametrize("action", ["review", "progress"])
@pytest.mark.parametrize("as_user", ["carol", "alice"])
def test_review_or_progress_by_someone_other_than_the_assignee_returns_403(
    flow: Workflow, action: str, as_user: str
) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, "in_progress")
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.act(task_id, action, as_user=as_user)

    assert_refused(response, 403, "forbidden")
    assert_unchanged(flow, task_id, before, rows)


def test_patch_to_review_by_someone_other_than_the_assignee_returns_403(flow: Workflow) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, "in_progress")
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.patch(task_id, as_user="carol", status="review")

    assert_refused(response, 403, "forbidden")
    assert_unchanged(flow, task_id, before, rows)


@pytest.mark.parametrize("current", ["in_progress", "review"])
def test_complete_by_the_project_owner_who_is_not_the_assignee_succeeds(flow: Workflow, current: str) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, current)

    response = flow.act(task_id, "complete", as_user="alice")

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["assigned_to"], body["progress_percent"]) == ("completed", "bob", 100)
    assert flow.audit(task_id)[-1].actor_id == "alice"


def test_a_second_owner_of_the_project_may_complete_too(flow: Workflow) -> None:
    promoted = flow.client.patch("/api/projects/demo/members/carol", json={"role": "owner"}, headers=flow.auth("alice"))
    assert promoted.status_code == 200, promoted.text
    task_id = flow.new_task()
    flow.drive(task_id, "in_progress")

    response = flow.act(task_id, "complete", as_user="carol")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"


@pytest.mark.parametrize("current", ["in_progress", "review"])
def test_complete_by_a_plain_member_who_is_not_the_assignee_returns_403(flow: Workflow, current: str) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, current)
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    action = flow.act(task_id, "complete", as_user="carol")
    patch = flow.patch(task_id, as_user="carol", status="completed")

    assert_refused(action, 403, "forbidden")
    assert_refused(patch, 403, "forbidden")
    assert_unchanged(flow, task_id, before, rows)


def test_a_creator_who_is_a_plain_member_is_not_an_owner_of_a_project_task(flow: Workflow) -> None:
    task_id = flow.new_task(as_user="carol")
    flow.drive(task_id, "in_progress")
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.act(task_id, "complete", as_user="carol")

    assert_refused(response, 403, "forbidden")
    assert_unchanged(flow, task_id, before, rows)


@pytest.mark.parametrize(("current", "target"), [("completed", "in_progress"), ("review", "in_progress")])
def test_reopen_or_request_changes_by_another_member_returns_403(flow: Workflow, current: str, target: str) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, current)
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.patch(task_id, as_user="carol", status=target)

    assert_refused(response, 403, "forbidden")
    assert_unchanged(flow, task_id, before, rows)


def test_for_a_task_without_project_the_creator_counts_as_owner(flow: Workflow) -> None:
    task_id = flow.new_task(project_slug=None, assigned_to="bob")
    flow.drive(task_id, "review")

    changes = flow.patch(task_id, as_user="alice", status="in_progress")
    assert changes.status_code == 200, changes.text
    completed = flow.act(task_id, "complete", as_user="alice")
    assert completed.status_code == 200, completed.text
    reopened = flow.patch(task_id, as_user="alice", status="in_progress")
    assert reopened.status_code == 200, reopened.text

    assert (reopened.json()["status"], reopened.json()["assigned_to"]) == ("in_progress", "bob")
    assert [
        (row.action, row.actor_id, row.project_slug, row.context["status"]) for row in flow.audit(task_id)[-3:]
    ] == [
        ("task.updated", "alice", None, ["review", "in_progress"]),
        ("task.completed", "alice", None, ["in_progress", "completed"]),
        ("task.updated", "alice", None, ["completed", "in_progress"]),
    ]


def test_the_creator_of_a_task_without_project_may_complete_it_but_not_submit_it_for_review(flow: Workflow) -> None:
    task_id = flow.new_task(as_user="bob", project_slug=None, assigned_to="alice")
    flow.drive(task_id, "in_progress", as_user="alice")

    by_creator = flow.act(task_id, "review", as_user="bob")

    # Review is for the assignee only, even for the creator of a task without project.
    assert_refused(by_creator, 403, "forbidden")
    assert flow.act(task_id, "complete", as_user="bob").status_code == 200


def test_a_worker_who_cannot_see_a_task_without_project_gets_404_for_every_action(flow: Workflow) -> None:
    task_id = flow.new_task(project_slug=None, assigned_to="bob")
    flow.drive(task_id, "in_progress")
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    for action in ALLOWED_FROM:
        assert_refused(flow.act(task_id, action, as_user="carol"), 404, "not_found")
    assert_refused(flow.patch(task_id, as_user="carol", status="review"), 404, "not_found")

    assert_unchanged(flow, task_id, before, rows)


@pytest.mark.parametrize(
    ("current", "how", "target"),
    [
        pytest.param("pending", "start", "in_progress", id="start-task-assigned-to-bob"),
        pytest.param("in_progress", "progress", "in_progress", id="progress"),
        pytest.param("in_progress", "review", "review", id="review"),
        pytest.param("in_progress", "complete", "completed", id="complete-in-progress"),
        pytest.param("review", "complete", "completed", id="complete-review"),
        pytest.param("pending", "block", "blocked", id="block-pending"),
        pytest.param("in_progress", "block", "blocked", id="block-in-progress"),
        pytest.param("review", "block", "blocked", id="block-review"),
        pytest.param("blocked", "unblock", "in_progress", id="unblock"),
        pytest.param("review", "patch", "in_progress", id="request-changes"),
        pytest.param("in_progress", "patch", "review", id="patch-review"),
        pytest.param("in_progress", "patch", "completed", id="patch-complete"),
        pytest.param("completed", "patch", "in_progress", id="reopen"),
    ],
)
def test_an_admin_who_is_no_member_may_make_every_allowed_transition(
    flow: Workflow, current: str, how: str, target: str
) -> None:
    task_id = flow.new_task(assigned_to="bob")
    flow.drive(task_id, current)
    rows_before = len(flow.audit(task_id))
    admin = flow.auth("root", role="admin")

    if how == "patch":
        response = flow.client.patch(f"/api/tasks/{task_id}", json={"status": target}, headers=admin)
    else:
        response = flow.client.post(f"/api/tasks/{task_id}/{how}", params=ACTION_PARAMS.get(how, {}), headers=admin)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == target
    assert flow.stored(task_id).status == target
    row = new_audit_row(flow, task_id, rows_before)
    assert row.action == ("task.updated" if how == "patch" else AUDIT_ACTION[how])
    assert row.actor_id == "root"


# ---------------------------------------------------------------- progress


@pytest.mark.parametrize("percent", [0, 55, 100])
def test_progress_stores_the_percent_and_the_note_in_the_audit_row(flow: Workflow, percent: int) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, "in_progress")

    response = flow.act(task_id, "progress", percent=percent, note="drafted the intro")

    assert response.status_code == 200, response.text
    # Reporting 100 does not complete the task: that is the complete action.
    assert (response.json()["progress_percent"], response.json()["status"]) == (percent, "in_progress")
    assert flow.stored(task_id).progress_percent == percent
    row = new_audit_row(flow, task_id, 2)
    expected = {"progress_percent": [0, percent]} if percent else {}
    assert row.action == "task.progress"
    assert row.context == {**expected, "note": "drafted the intro"}


def test_progress_without_a_note_writes_no_note(flow: Workflow) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, "in_progress")
    assert flow.act(task_id, "progress", percent=30).status_code == 200

    response = flow.act(task_id, "progress", percent=70)

    assert response.status_code == 200, response.text
    row = new_audit_row(flow, task_id, 3)
    assert row.context == {"progress_percent": [30, 70]}


@pytest.mark.parametrize("params", [{"percent": -1}, {"percent": 101}, {"percent": "half"}, {}])
def test_progress_with_a_percent_outside_0_to_100_returns_422(flow: Workflow, params: dict[str, Any]) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, "in_progress")
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.client.post(f"/api/tasks/{task_id}/progress", params=params, headers=flow.auth("bob"))

    body = assert_refused(response, 422, "validation_error")
    assert body["detail"][0]["loc"] == ["query", "percent"]
    assert_unchanged(flow, task_id, before, rows)


def test_progress_on_a_completed_task_returns_400(flow: Workflow) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, "completed")
    before, rows = flow.stored(task_id), len(flow.audit(task_id))

    response = flow.act(task_id, "progress", percent=20)

    body = assert_refused(response, 400, "invalid_transition")
    assert "is completed" in body["error"]
    assert_unchanged(flow, task_id, before, rows)
    assert flow.stored(task_id).progress_percent == 100


# ---------------------------------------------------------------- block


@pytest.mark.parametrize("reason", ["", "   ", "\t\n", None])
def test_block_without_a_reason_or_with_a_blank_one_returns_422(flow: Workflow, reason: str | None) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, "in_progress")
    before, rows = flow.stored(task_id), len(flow.audit(task_id))
    params = {} if reason is None else {"reason": reason}

    response = flow.client.post(f"/api/tasks/{task_id}/block", params=params, headers=flow.auth("bob"))

    body = assert_refused(response, 422, "validation_error")
    assert body["detail"][0]["loc"] == ["query", "reason"]
    assert_unchanged(flow, task_id, before, rows)


# ---------------------------------------------------------------- two requests at once


def race(flow: Workflow, task_id: int, action: str, users: list[str]) -> dict[str, httpx2.Response]:
    """Send `action` for each user at the same moment, with the app lingering after it reads the task.

    The pause widens the window between reading the task and writing it: without a row lock
    both requests would read the old status and both would succeed.
    """
    headers = {user: flow.auth(user) for user in users}
    barrier = threading.Barrier(len(users))
    engine = app_engine(flow.client)

    def linger(
        _connection: Any, _cursor: Any, statement: str, _parameters: Any, _context: Any, _executemany: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM task" in statement and "task.id =" in statement:
            time.sleep(0.05)

    def send(user: str) -> tuple[str, httpx2.Response]:
        barrier.wait(timeout=10)
        return user, flow.client.post(
            f"/api/tasks/{task_id}/{action}", params=ACTION_PARAMS.get(action, {}), headers=headers[user]
        )

    event.listen(engine, "after_cursor_execute", linger)
    try:
        with ThreadPoolExecutor(max_workers=len(users)) as pool:
            return dict(pool.map(send, users))
    finally:
        event.remove(engine, "after_cursor_execute", linger)


def test_two_users_starting_the_same_task_at_once_give_it_exactly_one_assignee(flow: Workflow) -> None:
    task_id = flow.new_task()

    responses = race(flow, task_id, "start", ["bob", "carol"])

    assert sorted(response.status_code for response in responses.values()) == [200, 400], {
        user: response.text for user, response in responses.items()
    }
    winner = next(user for user, response in responses.items() if response.status_code == 200)
    loser = next(user for user in responses if user != winner)
    # The loser sees what a later request would: a task already in progress.
    body = assert_refused(responses[loser], 400, "invalid_transition")
    assert "is in_progress" in body["error"]
    assert responses[winner].json()["assigned_to"] == winner
    stored = flow.stored(task_id)
    assert (stored.status, stored.assigned_to) == ("in_progress", winner)
    started = [row for row in flow.audit(task_id) if row.action == "task.started"]
    assert [(row.actor_id, row.context) for row in started] == [
        (winner, {"status": ["pending", "in_progress"], "assigned_to": [None, winner]})
    ]


def test_owner_and_assignee_completing_the_same_task_at_once_complete_it_once(flow: Workflow) -> None:
    task_id = flow.new_task()
    flow.drive(task_id, "review")

    responses = race(flow, task_id, "complete", ["alice", "bob"])

    assert sorted(response.status_code for response in responses.values()) == [200, 400], {
        user: response.text for user, response in responses.items()
    }
    loser = next(user for user, response in responses.items() if response.status_code != 200)
    assert "is completed" in assert_refused(responses[loser], 400, "invalid_transition")["error"]
    assert flow.stored(task_id).status == "completed"
    assert [row.action for row in flow.audit(task_id)].count("task.completed") == 1
