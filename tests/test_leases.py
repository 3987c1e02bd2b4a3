"""Leases: a claim that is not renewed runs out, the task goes back to the pool, and its former holder hears so.

Project "demo" is owned by alice; bob and carol are plain members. Bob starts tasks with a lease; a
lease runs out because a test moves `lease_expires_at` into the past through its own engine.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import httpx2
import pytest
from conftest import AuthHeaders
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlmodel import Session, col
from support import CreateProject, CreateTask, assert_refused, audit_rows, parse_time, task_row

from config import Settings
from main import create_app
from models import LostLease, Task, Worker
from sweeper import LeaseSweeper

HOLDER_ACTIONS: dict[str, dict[str, Any]] = {
    "heartbeat": {},
    "progress": {"percent": 40},
    "review": {},
    "complete": {},
}


@pytest.fixture
def demo(create_project: CreateProject) -> None:
    create_project("demo", owner="alice", members=["bob", "carol"])


@pytest.fixture
def leased(client: TestClient, auth: AuthHeaders, create_task: CreateTask, demo: None) -> int:  # noqa: ARG001
    """A task bob started with a 60 s lease."""
    task_id: int = create_task("Leased work", as_user="alice", project_slug="demo")["id"]
    response = client.post(f"/api/tasks/{task_id}/start?lease_seconds=60", headers=auth("bob"))
    assert response.status_code == 200, response.text
    return task_id


def set_lease_end(db: Engine, task_id: int, when: datetime) -> None:
    with Session(db) as session:
        session.exec(update(Task).where(col(Task.id) == task_id).values(lease_expires_at=when))
        session.commit()


def expire(db: Engine, task_id: int) -> None:
    set_lease_end(db, task_id, datetime.now(UTC) - timedelta(seconds=1))


def sweep(db: Engine) -> int:
    """What the app's background sweeper does on each turn, run now."""
    return LeaseSweeper(db, interval=0).sweep()


def act(client: TestClient, auth: AuthHeaders, task_id: int, action: str, user: str = "bob") -> httpx2.Response:
    return client.post(f"/api/tasks/{task_id}/{action}", params=HOLDER_ACTIONS.get(action, {}), headers=auth(user))


# ---------------------------------------------------------------- taking a lease


@pytest.mark.usefixtures("demo")
def test_start_with_lease_seconds_sets_when_the_lease_runs_out(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task_id = create_task("Work", project_slug="demo")["id"]
    before = datetime.now(UTC)

    response = client.post(f"/api/tasks/{task_id}/start?lease_seconds=120", headers=auth("bob"))

    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    lease_end = parse_time(response.json()["lease_expires_at"])
    assert before + timedelta(seconds=120) <= lease_end <= after + timedelta(seconds=120)
    assert task_row(db, task_id).lease_expires_at == lease_end


@pytest.mark.usefixtures("demo")
def test_start_without_a_lease_and_no_setting_never_expires(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task_id = create_task("Work", project_slug="demo")["id"]

    response = client.post(f"/api/tasks/{task_id}/start", headers=auth("bob"))

    assert response.status_code == 200, response.text
    assert response.json()["lease_expires_at"] is None
    assert task_row(db, task_id).lease_expires_at is None


@pytest.mark.usefixtures("demo")
def test_start_without_lease_seconds_takes_the_lease_seconds_setting(
    settings: Settings, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task_id = create_task("Work", project_slug="demo")["id"]

    with TestClient(create_app(settings.model_copy(update={"lease_seconds": 60}))) as leased_app:
        before = datetime.now(UTC)
        response = leased_app.post(f"/api/tasks/{task_id}/start", headers=auth("bob"))
        after = datetime.now(UTC)

    assert response.status_code == 200, response.text
    lease_end = parse_time(response.json()["lease_expires_at"])
    assert before + timedelta(seconds=60) <= lease_end <= after + timedelta(seconds=60)


@pytest.mark.parametrize("lease_seconds", ["0", "-1", "604801", "soon"])
@pytest.mark.usefixtures("demo")
def test_start_with_a_bad_lease_seconds_returns_422_and_starts_nothing(
    client: TestClient,
    auth: AuthHeaders,
    db: Engine,
    create_task: CreateTask,
    lease_seconds: str,
) -> None:
    task_id = create_task("Work", project_slug="demo")["id"]

    response = client.post(f"/api/tasks/{task_id}/start?lease_seconds={lease_seconds}", headers=auth("bob"))

    assert_refused(response, 422, "validation_error")
    assert task_row(db, task_id).status == "pending"


# ---------------------------------------------------------------- a lease running out


def test_a_task_whose_lease_ran_out_can_be_claimed_by_someone_else(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    expire(db, leased)

    response = client.post("/api/tasks/claim", headers=auth("carol"))

    assert response.status_code == 200, response.text
    assert (response.json()["id"], response.json()["assigned_to"]) == (leased, "carol")
    task = task_row(db, leased)
    assert (task.status, task.assigned_to) == ("in_progress", "carol")


def test_a_task_whose_lease_ran_out_can_be_started_by_someone_else(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    expire(db, leased)

    response = client.post(f"/api/tasks/{leased}/start", headers=auth("carol"))

    assert response.status_code == 200, response.text
    assert task_row(db, leased).assigned_to == "carol"


@pytest.mark.parametrize("read", ["get", "list", "pending", "ready", "dependencies"])
def test_every_read_reports_a_lease_that_ran_out_at_once_without_writing(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int, read: str
) -> None:
    before = task_row(db, leased)
    rows_before = len(audit_rows(db, task_id=leased))
    expire(db, leased)

    if read == "get":
        response = client.get(f"/api/tasks/{leased}", headers=auth("alice"))
        assert response.headers["ETag"] == f'"{before.version + 1}"'
        (seen,) = [response.json()]
    elif read == "dependencies":
        waiting = client.post("/api/tasks", json={"title": "Waits", "project_slug": "demo"}, headers=auth("alice"))
        linked = client.post(
            f"/api/tasks/{waiting.json()['id']}/dependencies", json={"depends_on": leased}, headers=auth("alice")
        )
        assert linked.status_code == 201, linked.text
        assert linked.json()["status"] == "pending"
        response = client.get(f"/api/tasks/{waiting.json()['id']}/dependencies", headers=auth("alice"))
        (seen,) = response.json()
    else:
        params = {"get": {}, "list": {}, "pending": {"status": "pending"}, "ready": {"ready": "true"}}[read]
        response = client.get("/api/tasks", params=params, headers=auth("carol"))
        (seen,) = [task for task in response.json() if task["id"] == leased]

    assert response.status_code == 200, response.text
    assert (seen["status"], seen["assigned_to"], seen["lease_expires_at"]) == ("pending", None, None)
    assert seen["version"] == before.version + 1
    # The hand-back is the system's, not a worker's edit: the task keeps its place in updated_at order.
    assert parse_time(seen["updated_at"]) == before.updated_at
    # The read wrote nothing: the sweeper (or the next change of the task) does.
    task = task_row(db, leased)
    assert (task.status, task.assigned_to, task.version) == ("in_progress", "bob", before.version)
    assert "lease_expired" not in [row.action for row in audit_rows(db, task_id=leased)[rows_before:]]


def test_filters_see_a_task_whose_lease_ran_out_as_pending_and_unassigned(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    expire(db, leased)

    def listed(**params: str) -> list[int]:
        response = client.get("/api/tasks", params=params, headers=auth("alice"))
        assert response.status_code == 200, response.text
        return [task["id"] for task in response.json()]

    assert leased in listed(status="pending")
    assert leased in listed(ready="true")
    assert leased not in listed(status="in_progress")
    assert leased not in listed(assigned_to="bob")
    assert leased not in listed(ready="false")


def test_the_sweeper_hands_the_task_back_as_the_system_exactly_as_reads_showed_it(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    rows_before = len(audit_rows(db, task_id=leased))
    expire(db, leased)
    shown = client.get(f"/api/tasks/{leased}", headers=auth("alice"))

    assert sweep(db) == 1

    task = task_row(db, leased)
    assert (task.status, task.assigned_to, task.lease_expires_at, task.lease_seconds) == ("pending", None, None, None)
    after = client.get(f"/api/tasks/{leased}", headers=auth("alice"))
    assert after.json() == shown.json()
    assert after.headers["ETag"] == shown.headers["ETag"] == f'"{task.version}"'
    rows = audit_rows(db, task_id=leased)[rows_before:]
    assert [row.action for row in rows] == ["lease_expired"]
    row = rows[0]
    assert (row.actor_id, row.actor_type, row.owner_id, row.project_slug) == ("system", "system", None, "demo")
    assert row.context["status"] == ["in_progress", "pending"]
    assert row.context["assigned_to"] == ["bob", None]
    with Session(db) as session:
        assert session.get(LostLease, (leased, "bob")) is not None


def test_a_claim_takes_a_task_whose_lease_ran_out_without_waiting_for_the_sweeper(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    expire(db, leased)

    response = client.post("/api/tasks/claim", headers=auth("carol"))

    assert response.status_code == 200, response.text
    assert response.json()["id"] == leased
    assert [row.action for row in audit_rows(db, task_id=leased)][-2:] == ["lease_expired", "task.claimed"]


def test_a_claim_that_finds_nothing_for_itself_still_hands_expired_leases_back(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    expire(db, leased)

    response = client.post("/api/tasks/claim", json={"min_priority": "critical"}, headers=auth("alice"))

    assert response.status_code == 204, response.text
    assert task_row(db, leased).status == "pending"
    assert [row.action for row in audit_rows(db, task_id=leased)].count("lease_expired") == 1


def test_a_lease_runs_out_once_however_often_the_task_is_read_or_swept(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    expire(db, leased)

    for _ in range(3):
        assert client.get(f"/api/tasks/{leased}", headers=auth("alice")).status_code == 200
        assert client.get("/api/tasks", headers=auth("carol")).status_code == 200
        sweep(db)

    assert [row.action for row in audit_rows(db, task_id=leased)].count("lease_expired") == 1


def test_the_lease_expired_row_is_listed_in_the_audit_log_as_the_systems(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    expire(db, leased)
    sweep(db)

    response = client.get("/api/audit?action=lease_expired", headers=auth("alice"))

    assert response.status_code == 200, response.text
    (row,) = response.json()
    assert (row["task_id"], row["actor_id"], row["actor_type"]) == (leased, "system", "system")


def test_the_app_sweeps_in_the_background(settings: Settings, auth: AuthHeaders, db: Engine) -> None:
    settings.lease_sweep_seconds = 0.05
    with TestClient(create_app(settings)) as client:
        client.post("/api/projects", json={"slug": "demo", "name": "Demo"}, headers=auth("alice"))
        created = client.post("/api/tasks", json={"title": "Work", "project_slug": "demo"}, headers=auth("alice"))
        task_id = created.json()["id"]
        assert client.post(f"/api/tasks/{task_id}/start?lease_seconds=60", headers=auth("alice")).status_code == 200
        expire(db, task_id)
        deadline = time.monotonic() + 10
        while task_row(db, task_id).status != "pending" and time.monotonic() < deadline:
            time.sleep(0.05)

    assert task_row(db, task_id).status == "pending"
    assert [row.action for row in audit_rows(db, task_id=task_id)].count("lease_expired") == 1


def test_a_lease_that_has_not_run_out_keeps_the_task_with_its_holder(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    set_lease_end(db, leased, datetime.now(UTC) + timedelta(seconds=5))

    listed = client.get("/api/tasks", headers=auth("alice"))
    claimed = client.post("/api/tasks/claim", headers=auth("carol"))

    assert listed.json()[0]["status"] == "in_progress"
    assert claimed.status_code == 204, claimed.text
    task = task_row(db, leased)
    assert (task.status, task.assigned_to) == ("in_progress", "bob")
    assert "lease_expired" not in [row.action for row in audit_rows(db, task_id=leased)]


@pytest.mark.usefixtures("demo")
def test_a_task_without_a_lease_never_runs_out(
    client: TestClient, auth: AuthHeaders, db: Engine, create_task: CreateTask
) -> None:
    task_id = create_task("Work", project_slug="demo")["id"]
    assert client.post(f"/api/tasks/{task_id}/start", headers=auth("bob")).status_code == 200

    claimed = client.post("/api/tasks/claim", headers=auth("carol"))

    assert claimed.status_code == 204, claimed.text
    assert task_row(db, task_id).assigned_to == "bob"


# ---------------------------------------------------------------- the former holder hears lease_lost


@pytest.mark.parametrize("action", list(HOLDER_ACTIONS))
def test_the_former_holder_gets_lease_lost_when_nobody_has_claimed_the_task_since(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int, action: str
) -> None:
    expire(db, leased)

    response = act(client, auth, leased, action)

    assert_refused(response, 409, "lease_lost")
    seen = client.get(f"/api/tasks/{leased}", headers=auth("alice")).json()
    assert (seen["status"], seen["assigned_to"], seen["progress_percent"]) == ("pending", None, 0)
    # The refused request saved nothing; the hand-back is the sweeper's, once.
    sweep(db)
    assert [row.action for row in audit_rows(db, task_id=leased)].count("lease_expired") == 1


@pytest.mark.parametrize("action", list(HOLDER_ACTIONS))
def test_the_former_holder_gets_lease_lost_when_someone_else_has_claimed_the_task_since(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int, action: str
) -> None:
    expire(db, leased)
    claimed = client.post("/api/tasks/claim", headers=auth("carol"))
    assert claimed.json()["id"] == leased
    rows_before = len(audit_rows(db, task_id=leased))

    response = act(client, auth, leased, action)

    assert_refused(response, 409, "lease_lost")
    task = task_row(db, leased)
    assert (task.status, task.assigned_to, task.progress_percent) == ("in_progress", "carol", 0)
    assert len(audit_rows(db, task_id=leased)) == rows_before


@pytest.mark.parametrize("action", list(HOLDER_ACTIONS))
def test_someone_who_never_held_the_task_gets_403_not_lease_lost(
    client: TestClient, auth: AuthHeaders, leased: int, action: str
) -> None:
    response = act(client, auth, leased, action, user="carol")

    assert_refused(response, 403, "forbidden")


def test_the_former_holder_who_claims_the_task_again_may_work_on_it(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    expire(db, leased)
    assert act(client, auth, leased, "heartbeat").status_code == 409

    again = client.post("/api/tasks/claim", json={"lease_seconds": 60}, headers=auth("bob"))
    heartbeat = act(client, auth, leased, "heartbeat")
    progress = act(client, auth, leased, "progress")

    assert again.json()["id"] == leased
    assert heartbeat.status_code == 200, heartbeat.text
    assert progress.status_code == 200, progress.text
    with Session(db) as session:
        assert session.get(LostLease, (leased, "bob")) is None


def test_the_former_holder_hears_lease_lost_even_with_the_if_match_they_last_saw(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    last_seen = client.get(f"/api/tasks/{leased}", headers=auth("bob")).headers["ETag"]
    expire(db, leased)

    response = client.post(f"/api/tasks/{leased}/progress?percent=50", headers={**auth("bob"), "If-Match": last_seen})

    assert_refused(response, 409, "lease_lost")


def test_the_lease_running_out_changes_the_etag(client: TestClient, auth: AuthHeaders, db: Engine, leased: int) -> None:
    before = client.get(f"/api/tasks/{leased}", headers=auth("alice")).headers["ETag"]
    expire(db, leased)

    after = client.get(f"/api/tasks/{leased}", headers=auth("alice")).headers["ETag"]

    assert after != before
    sweep(db)
    assert after == f'"{task_row(db, leased).version}"'


def test_readers_and_sweepers_at_once_hand_an_expired_task_back_once(
    live_server: Any, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    expire(db, leased)
    headers = [{**auth(user), "Connection": "close"} for user in ("alice", "bob", "carol") * 3]
    barrier = threading.Barrier(len(headers) + 3)

    def read(index: int) -> int:
        with httpx.Client(base_url=live_server.url, headers=headers[index], timeout=30) as http:
            barrier.wait(timeout=10)
            path = "/api/tasks" if index % 2 else f"/api/tasks/{leased}"
            return http.get(path).status_code

    def sweep_at_once(_index: int) -> int:
        barrier.wait(timeout=10)
        return sweep(db)

    with ThreadPoolExecutor(max_workers=len(headers) + 3) as pool:
        sweeps = pool.map(sweep_at_once, range(3))
        statuses = list(pool.map(read, range(len(headers))))
        swept = sum(sweeps)

    assert statuses == [200] * len(headers)
    assert swept <= 1
    sweep(db)
    assert [row.action for row in audit_rows(db, task_id=leased)].count("lease_expired") == 1
    task = task_row(db, leased)
    assert (task.status, task.assigned_to) == ("pending", None)


# ---------------------------------------------------------------- heartbeats


def test_a_heartbeat_renews_the_lease_without_an_audit_row_or_a_new_version(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    set_lease_end(db, leased, datetime.now(UTC) + timedelta(seconds=2))
    before = task_row(db, leased)
    etag = client.get(f"/api/tasks/{leased}", headers=auth("bob")).headers["ETag"]
    rows_before = len(audit_rows(db, task_id=leased))
    sent = datetime.now(UTC)

    response = act(client, auth, leased, "heartbeat")

    received = datetime.now(UTC)
    assert response.status_code == 200, response.text
    lease_end = parse_time(response.json()["lease_expires_at"])
    assert sent + timedelta(seconds=60) <= lease_end <= received + timedelta(seconds=60)
    assert response.headers["ETag"] == etag
    after = task_row(db, leased)
    assert after.lease_expires_at == lease_end
    assert (after.version, after.updated_at, after.status, after.assigned_to) == (
        before.version,
        before.updated_at,
        "in_progress",
        "bob",
    )
    assert len(audit_rows(db, task_id=leased)) == rows_before
    assert client.get(f"/api/tasks/{leased}", headers=auth("bob")).headers["ETag"] == etag


def test_a_heartbeat_with_lease_seconds_changes_how_long_the_lease_lasts(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    sent = datetime.now(UTC)

    response = client.post(f"/api/tasks/{leased}/heartbeat?lease_seconds=600", headers=auth("bob"))

    assert response.status_code == 200, response.text
    lease_end = parse_time(response.json()["lease_expires_at"])
    assert lease_end >= sent + timedelta(seconds=600)
    assert task_row(db, leased).lease_expires_at == lease_end


def test_a_heartbeat_just_before_the_lease_runs_out_keeps_the_task(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    set_lease_end(db, leased, datetime.now(UTC) + timedelta(seconds=2))
    assert act(client, auth, leased, "heartbeat").status_code == 200

    claimed = client.post("/api/tasks/claim", headers=auth("carol"))

    assert claimed.status_code == 204, claimed.text
    assert task_row(db, leased).assigned_to == "bob"


@pytest.mark.usefixtures("demo")
def test_a_heartbeat_on_a_task_that_is_not_in_progress_returns_400(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task_id = create_task("Work", project_slug="demo", assigned_to="bob")["id"]

    response = act(client, auth, task_id, "heartbeat")

    assert_refused(response, 400, "invalid_transition")


def test_a_heartbeat_on_a_missing_task_returns_404(client: TestClient, auth: AuthHeaders) -> None:
    response = act(client, auth, 999_999, "heartbeat")

    assert_refused(response, 404, "not_found")


def test_progress_renews_the_lease(client: TestClient, auth: AuthHeaders, db: Engine, leased: int) -> None:
    set_lease_end(db, leased, datetime.now(UTC) + timedelta(seconds=2))
    sent = datetime.now(UTC)

    response = act(client, auth, leased, "progress")

    assert response.status_code == 200, response.text
    lease_end = parse_time(response.json()["lease_expires_at"])
    assert lease_end >= sent + timedelta(seconds=60)
    assert task_row(db, leased).lease_expires_at == lease_end


def test_leaving_in_progress_ends_the_lease(client: TestClient, auth: AuthHeaders, db: Engine, leased: int) -> None:
    response = act(client, auth, leased, "review")

    assert response.status_code == 200, response.text
    assert response.json()["lease_expires_at"] is None
    expire(db, leased)  # even a stale value left behind must not hand a task in review back
    assert client.get(f"/api/tasks/{leased}", headers=auth("alice")).json()["status"] == "review"


# ---------------------------------------------------------------- release


def test_release_hands_the_task_back_pending_and_unassigned_and_is_audited(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int
) -> None:
    rows_before = len(audit_rows(db, task_id=leased))

    response = act(client, auth, leased, "release")

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["assigned_to"], body["lease_expires_at"]) == ("pending", None, None)
    task = task_row(db, leased)
    assert (task.status, task.assigned_to, task.lease_expires_at) == ("pending", None, None)
    rows = audit_rows(db, task_id=leased)[rows_before:]
    assert [row.action for row in rows] == ["task.released"]
    assert (rows[0].actor_id, rows[0].actor_type) == ("bob", "human")
    assert rows[0].context["status"] == ["in_progress", "pending"]
    assert rows[0].context["assigned_to"] == ["bob", None]
    assert client.post("/api/tasks/claim", headers=auth("carol")).json()["id"] == leased


@pytest.mark.parametrize("user", ["carol", "alice"])
def test_release_by_anyone_but_the_assignee_returns_403(
    client: TestClient, auth: AuthHeaders, db: Engine, leased: int, user: str
) -> None:
    response = act(client, auth, leased, "release", user=user)

    assert_refused(response, 403, "forbidden")
    task = task_row(db, leased)
    assert (task.status, task.assigned_to) == ("in_progress", "bob")


@pytest.mark.parametrize("status", ["pending", "review", "completed", "blocked"])
@pytest.mark.usefixtures("demo")
def test_release_of_a_task_that_is_not_in_progress_returns_400(
    client: TestClient,
    auth: AuthHeaders,
    db: Engine,
    create_task: CreateTask,
    status: str,
) -> None:
    task_id = create_task("Work", project_slug="demo", assigned_to="bob")["id"]
    steps = {"pending": [], "review": ["start", "review"], "completed": ["start", "complete"], "blocked": ["block"]}
    for step in steps[status]:
        params = {"reason": "waiting"} if step == "block" else {}
        assert client.post(f"/api/tasks/{task_id}/{step}", params=params, headers=auth("bob")).status_code == 200

    response = act(client, auth, task_id, "release")

    assert_refused(response, 400, "invalid_transition")
    assert task_row(db, task_id).status == status


# ---------------------------------------------------------------- the reserved id "system"


def test_a_token_for_the_subject_system_is_refused_with_401(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    response = client.get("/api/tasks", headers=auth("system"))

    assert_refused(response, 401, "unauthorized")
    with Session(db) as session:
        assert session.get(Worker, "system") is None


def test_even_an_admin_token_for_the_subject_system_is_refused(client: TestClient, auth: AuthHeaders) -> None:
    response = client.post("/api/tasks/claim", headers=auth("system", role="admin"))

    assert_refused(response, 401, "unauthorized")


def test_registering_the_worker_id_system_is_refused(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    response = client.post(
        "/api/workers", json={"id": "system", "type": "agent", "name": "Impostor"}, headers=auth("root", role="admin")
    )

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "conflict"
    with Session(db) as session:
        assert session.get(Worker, "system") is None


def test_registering_a_worker_of_type_system_is_refused(client: TestClient, auth: AuthHeaders, db: Engine) -> None:
    response = client.post(
        "/api/workers", json={"id": "robot", "type": "system", "name": "Robot"}, headers=auth("root", role="admin")
    )

    assert_refused(response, 400, "bad_request")
    with Session(db) as session:
        assert session.get(Worker, "robot") is None


def test_no_worker_can_be_made_a_system_worker(client: TestClient, auth: AuthHeaders) -> None:
    client.get("/api/tasks", headers=auth("bob"))

    response = client.patch("/api/workers/bob", json={"type": "system"}, headers=auth("root", role="admin"))

    assert_refused(response, 400, "bad_request")
    assert client.get("/api/workers/bob", headers=auth("bob")).json()["type"] == "human"
