"""The `taskflow` CLI against a live TaskFlow server over real HTTP, with real tokens.

Commands run in-process through Typer's runner (and a few through the installed console
script); data is arranged and checked through the REST API itself, or the database.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import AuthHeaders
from sqlalchemy import Engine, text
from support import free_port
from typer.testing import CliRunner, Result

import devtoken
from config import Settings
from taskflow_cli import app
from taskflow_client import ApiError, TaskFlowClient

TASKFLOW = Path(sys.executable).parent / "taskflow"
DEVTOKEN = Path(devtoken.__file__)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These servers also trust the development key, so a token from `devtoken.py` can be tried for real."""
    # WARNING: the server runs in this process, and its request log lines would land on the CLI's captured stderr.
    return settings.model_copy(update={"dev_auth": True, "log_level": "WARNING"})


@dataclass
class Cli:
    url: str
    make_token: Callable[..., str]
    config_home: Path
    settings: Settings

    def __call__(self, *args: str, user: str | None = "alice", env: dict[str, str | None] | None = None) -> Result:
        """Run `taskflow ARGS` as `user` (TASKFLOW_URL/TASKFLOW_TOKEN set), or with no token if user is None."""
        environment: dict[str, str | None] = {
            "TASKFLOW_URL": self.url,
            "TASKFLOW_TOKEN": self.make_token(user) if user else None,
            "XDG_CONFIG_HOME": str(self.config_home),
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
        environment.update(env or {})
        return CliRunner().invoke(app, list(args), env=environment, catch_exceptions=False)


@pytest.fixture
def cli(live_server: Any, make_token: Callable[..., str], tmp_path: Path, settings: Settings) -> Cli:
    return Cli(live_server.url, make_token, tmp_path / "config", settings)


@pytest.fixture
def api(live_server: Any) -> Iterator[httpx.Client]:
    """Plain REST calls to the same live server, to arrange and to check."""
    with httpx.Client(base_url=live_server.url) as client:
        yield client


@pytest.fixture
def board(api: httpx.Client, auth: AuthHeaders) -> dict[str, Any]:
    """Project `demo` owned by alice, with bob as a member."""
    api.get("/api/tasks", headers=auth("bob"))  # bob's worker row appears on his first request
    created = api.post("/api/projects", json={"slug": "demo", "name": "Demo"}, headers=auth("alice"))
    assert created.status_code == 201, created.text
    added = api.post("/api/projects/demo/members", json={"worker_id": "bob"}, headers=auth("alice"))
    assert added.status_code == 201, added.text
    body: dict[str, Any] = created.json()
    return body


def new_task(api: httpx.Client, auth: AuthHeaders, title: str, *, user: str = "alice", **fields: Any) -> dict[str, Any]:
    response = api.post("/api/tasks", json={"title": title, "project_slug": "demo", **fields}, headers=auth(user))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def output_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ---------------------------------------------------------------- tasks


@pytest.mark.usefixtures("board")
def test_add_with_every_option_prints_exactly_the_tasks_json(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    parent = new_task(api, auth, "Release 1.0")

    result = cli(
        "--json",
        "add",
        "Write the release notes",
        "--project",
        "demo",
        "--priority",
        "high",
        "--parent",
        str(parent["id"]),
        "--assign",
        "bob",
        "--due",
        "2026-12-01T17:00:00Z",
        "--description",
        "Mention the CLI",
    )

    task = output_json(result)
    assert task == api.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()
    assert task["title"] == "Write the release notes"
    assert task["project_slug"] == "demo"
    assert task["priority"] == "high"
    assert task["parent_id"] == parent["id"]
    assert task["assigned_to"] == "bob"
    assert task["due_date"].startswith("2026-12-01T17:00:00")
    assert task["description"] == "Mention the CLI"
    assert task["status"] == "pending"


def test_add_for_people_prints_one_line_naming_the_task(cli: Cli) -> None:
    result = cli("add", "Water the plants")

    assert result.exit_code == 0, result.output
    assert "Water the plants" in result.stdout
    assert "pending" in result.stdout


@pytest.mark.usefixtures("board")
def test_show_prints_the_task_for_people_and_the_apis_json_with_json(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    task = new_task(api, auth, "Fix the [red]login[/red] page", description="Users see a 500")

    human = cli("show", str(task["id"]))
    scripted = cli("--json", "show", str(task["id"]))

    assert human.exit_code == 0, human.output
    assert "Fix the [red]login[/red] page" in human.stdout  # shown as typed, never as markup
    assert "Users see a 500" in human.stdout
    assert "pending" in human.stdout
    assert scripted.stdout == api.get(f"/api/tasks/{task['id']}", headers=auth("alice")).text + "\n"


@pytest.mark.usefixtures("board")
def test_list_filters_by_status_priority_assignee_project_parent_and_search(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    parent = new_task(api, auth, "Launch", priority="high")
    child = new_task(api, auth, "Draft the launch post", parent_id=parent["id"], assigned_to="bob")
    other = new_task(api, auth, "Order pizza", priority="low")
    new_task(api, auth, "Elsewhere", project_slug=None)
    api.post(f"/api/tasks/{other['id']}/start", headers=auth("alice"))

    def ids(*args: str) -> list[int]:
        return [task["id"] for task in output_json(cli("--json", "list", *args))]

    assert ids("--project", "demo") == [parent["id"], child["id"], other["id"]]
    exact = api.get("/api/tasks", params={"project": "demo"}, headers=auth("alice")).text
    assert cli("--json", "list", "--project", "demo").stdout == exact + "\n"
    assert ids("--project", "demo", "--status", "in_progress") == [other["id"]]
    assert ids("--priority", "high") == [parent["id"]]
    assert ids("--assigned-to", "bob") == [child["id"]]
    assert ids("--parent", str(parent["id"])) == [child["id"]]
    assert ids("--search", "LAUNCH") == [parent["id"], child["id"]]
    assert ids("--project", "demo", "--sort=-priority", "--limit", "1") == [parent["id"]]
    assert ids("--project", "demo", "--limit", "1", "--offset", "2") == [other["id"]]


@pytest.mark.usefixtures("board")
def test_list_ready_shows_only_what_the_caller_could_claim(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    free = new_task(api, auth, "Free")
    new_task(api, auth, "Bob's", assigned_to="bob")
    mine = new_task(api, auth, "Mine", assigned_to="alice")
    waiting = new_task(api, auth, "Waits for Free")
    added = api.post(f"/api/tasks/{waiting['id']}/dependencies", json={"depends_on": free["id"]}, headers=auth("alice"))
    assert added.status_code == 201, added.text

    tasks = output_json(cli("--json", "list", "--ready"))

    assert [task["id"] for task in tasks] == [free["id"], mine["id"]]


@pytest.mark.usefixtures("board")
def test_list_for_people_is_a_table_that_says_when_more_tasks_match(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    for title in ["First task", "Second task", "Third task"]:
        new_task(api, auth, title)

    result = cli("list", "--limit", "2")

    assert result.exit_code == 0, result.output
    assert "First task" in result.stdout
    assert "Second task" in result.stdout
    assert "Third task" not in result.stdout
    assert "2 of 3 shown" in result.stdout


def test_list_with_nothing_to_show_says_so(cli: Cli) -> None:
    result = cli("list")

    assert result.exit_code == 0, result.output
    assert "No tasks." in result.stdout
    assert output_json(cli("--json", "list")) == []


@pytest.mark.usefixtures("board")
def test_edit_changes_only_the_fields_given_and_clear_empties_fields(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    task = new_task(api, auth, "Draft", description="Old", due_date="2026-12-01T00:00:00Z", assigned_to="bob")

    edited = output_json(
        cli(
            "--json",
            "edit",
            str(task["id"]),
            "--title",
            "Final",
            "--priority",
            "critical",
            "--clear",
            "due",
            "--clear",
            "assign",
        )
    )

    assert edited["title"] == "Final"
    assert edited["priority"] == "critical"
    assert edited["due_date"] is None
    assert edited["assigned_to"] is None
    assert edited["description"] == "Old"
    assert edited == api.get(f"/api/tasks/{task['id']}", headers=auth("alice")).json()


@pytest.mark.usefixtures("board")
def test_edit_with_the_current_version_succeeds_and_with_a_stale_one_exits_1(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    task = new_task(api, auth, "Draft")
    version = str(task["version"])
    assert cli("edit", task_id := str(task["id"]), "--title", "Second", "--if-version", version).exit_code == 0

    stale = cli("edit", task_id, "--title", "Third", "--if-version", version)

    assert stale.exit_code == 1
    assert "precondition_failed" in stale.stderr
    assert api.get(f"/api/tasks/{task_id}", headers=auth("alice")).json()["title"] == "Second"


def test_edit_with_nothing_to_change_is_a_usage_error(cli: Cli) -> None:
    result = cli("edit", "1")

    assert result.exit_code == 2
    assert "Nothing to change" in result.stderr


@pytest.mark.usefixtures("board")
def test_delete_removes_the_task(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    task = new_task(api, auth, "Obsolete")

    result = cli("delete", str(task["id"]))

    assert result.exit_code == 0, result.output
    assert f"Deleted task {task['id']}" in result.stdout
    assert api.get(f"/api/tasks/{task['id']}", headers=auth("alice")).status_code == 404


# ---------------------------------------------------------------- the workflow


@pytest.mark.usefixtures("board")
def test_a_task_goes_through_the_whole_workflow(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    task_id = str(new_task(api, auth, "Ship it")["id"])

    started = output_json(cli("--json", "start", task_id, "--lease", "300", user="bob"))
    assert (started["status"], started["assigned_to"]) == ("in_progress", "bob")
    assert started["lease_expires_at"] is not None
    beat = output_json(cli("--json", "heartbeat", task_id, user="bob"))
    assert beat["version"] == started["version"]
    progressed = output_json(cli("--json", "progress", task_id, "60", "--note", "draft done", user="bob"))
    assert progressed["progress_percent"] == 60
    blocked = output_json(cli("--json", "block", task_id, "--reason", "waiting for legal", user="bob"))
    assert blocked["status"] == "blocked"
    assert output_json(cli("--json", "unblock", task_id, user="bob"))["status"] == "in_progress"
    assert output_json(cli("--json", "review", task_id, user="bob"))["status"] == "review"
    done = output_json(cli("--json", "done", task_id))
    assert (done["status"], done["progress_percent"]) == ("completed", 100)

    history = output_json(cli("--json", "history", task_id))
    assert [row["action"] for row in history] == [
        "task.created",
        "task.started",
        "task.progress",
        "task.blocked",
        "task.unblocked",
        "task.review",
        "task.completed",
    ]
    assert history == api.get(f"/api/tasks/{task_id}/audit", headers=auth("alice")).json()
    assert history[2]["context"]["note"] == "draft done"


@pytest.mark.usefixtures("board")
def test_workflow_commands_for_people_print_the_new_state(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    task_id = str(new_task(api, auth, "Ship it")["id"])

    started = cli("start", task_id, user="bob")
    history = cli("history", task_id)

    assert started.exit_code == 0, started.output
    assert f"Task {task_id}" in started.stdout
    assert "in_progress" in started.stdout
    assert "assigned to bob" in started.stdout
    assert history.exit_code == 0, history.output
    assert "task.started" in history.stdout
    assert "bob" in history.stdout


@pytest.mark.usefixtures("board")
def test_release_hands_the_task_back_unassigned(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    task_id = str(new_task(api, auth, "Too hard")["id"])
    assert cli("start", task_id, user="bob").exit_code == 0

    released = output_json(cli("--json", "release", task_id, user="bob"))

    assert (released["status"], released["assigned_to"]) == ("pending", None)


@pytest.mark.usefixtures("board")
def test_claim_takes_the_most_urgent_ready_task_and_starts_it(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    new_task(api, auth, "Low", priority="low")
    urgent = new_task(api, auth, "Urgent", priority="critical")
    new_task(api, auth, "Elsewhere", priority="critical", project_slug=None)

    claimed = output_json(cli("--json", "claim", "--project", "demo", "--lease", "120", user="bob"))

    assert claimed["id"] == urgent["id"]
    assert (claimed["status"], claimed["assigned_to"]) == ("in_progress", "bob")
    assert claimed["lease_expires_at"] is not None


@pytest.mark.usefixtures("board")
def test_claim_with_min_priority_skips_less_urgent_tasks(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    new_task(api, auth, "Low", priority="low")

    result = cli("claim", "--min-priority", "high", user="bob")

    assert result.exit_code == 0, result.output
    assert "Nothing is ready to claim" in result.stdout


def test_claim_with_nothing_ready_says_so_and_exits_0_and_json_prints_null(cli: Cli) -> None:
    human = cli("claim")
    scripted = cli("--json", "claim")

    assert human.exit_code == 0, human.output
    assert "Nothing is ready to claim." in human.stdout
    assert scripted.exit_code == 0, scripted.output
    assert scripted.stdout == "null\n"


@pytest.mark.usefixtures("board")
def test_heartbeat_after_the_lease_ran_out_exits_1_with_lease_lost(
    cli: Cli, api: httpx.Client, auth: AuthHeaders, db: Engine
) -> None:
    task_id = str(new_task(api, auth, "Slow")["id"])
    assert cli("start", task_id, "--lease", "60", user="bob").exit_code == 0
    with db.begin() as connection:
        connection.execute(
            text("UPDATE task SET lease_expires_at = :past WHERE id = :id"),
            {"past": "2020-01-01 00:00:00", "id": int(task_id)},
        )

    result = cli("heartbeat", task_id, user="bob")

    assert result.exit_code == 1
    assert "lease_lost" in result.stderr
    assert api.get(f"/api/tasks/{task_id}", headers=auth("alice")).json()["status"] == "pending"


# ---------------------------------------------------------------- dependencies


@pytest.mark.usefixtures("board")
def test_deps_add_list_and_rm_and_start_names_the_blockers(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    first = new_task(api, auth, "Design")
    second = new_task(api, auth, "Build")

    added = cli("deps", "add", str(second["id"]), str(first["id"]))
    listed = output_json(cli("--json", "deps", "list", str(second["id"])))
    refused = cli("start", str(second["id"]))
    cycle = cli("deps", "add", str(first["id"]), str(second["id"]))
    removed = cli("deps", "rm", str(second["id"]), str(first["id"]))

    assert added.exit_code == 0, added.output
    assert f"Task {second['id']} now depends on task {first['id']}" in added.stdout
    assert [task["id"] for task in listed] == [first["id"]]
    assert refused.exit_code == 1
    assert "unfinished_dependencies" in refused.stderr
    assert str(first["id"]) in refused.stderr
    assert cycle.exit_code == 1
    assert removed.exit_code == 0, removed.output
    assert output_json(cli("--json", "deps", "list", str(second["id"]))) == []
    assert cli("start", str(second["id"])).exit_code == 0


# ---------------------------------------------------------------- projects, members, workers


@pytest.mark.usefixtures("board")
def test_comment_posts_text_or_stdin_and_comments_lists_them_for_people_and_as_json(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    task = new_task(api, auth, "Discuss")

    posted = cli("comment", str(task["id"]), "Looks good, @bob.")
    piped = CliRunner().invoke(
        app,
        ["--json", "comment", str(task["id"]), "-"],
        input="Line one\n[red]not markup[/red]\n",
        env={"TASKFLOW_URL": cli.url, "TASKFLOW_TOKEN": cli.make_token("bob"), "XDG_CONFIG_HOME": str(cli.config_home)},
        catch_exceptions=False,
    )
    listed = cli("comments", str(task["id"]))
    as_json = output_json(cli("--json", "comments", str(task["id"])))

    assert posted.exit_code == 0, posted.output
    assert "added to task" in posted.stdout
    assert "mentioning bob" in posted.stdout
    from_stdin = output_json(piped)
    assert (from_stdin["author_id"], from_stdin["body"]) == ("bob", "Line one\n[red]not markup[/red]\n")
    assert listed.exit_code == 0, listed.output
    assert "alice" in listed.stdout
    assert "mentions bob" in listed.stdout
    assert "Looks good, @bob." in listed.stdout
    assert "[red]not markup[/red]" in listed.stdout
    assert [comment["body"] for comment in as_json] == ["Looks good, @bob.", from_stdin["body"]]
    assert as_json == api.get(f"/api/tasks/{task['id']}/comments", headers=auth("alice")).json()


@pytest.mark.usefixtures("board")
def test_comments_on_a_task_without_any_say_so_and_one_you_cannot_see_exits_1(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    task = new_task(api, auth, "Quiet")

    empty = cli("comments", str(task["id"]))
    hidden = cli("comment", str(task["id"]), "Hello", user="carol")

    assert (empty.exit_code, empty.stdout.strip()) == (0, "No comments.")
    assert hidden.exit_code == 1
    assert f"Task {task['id']} not found (404 not_found)" in hidden.stderr


def test_projects_create_list_show_edit_and_delete(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    created = output_json(cli("--json", "projects", "create", "launch", "Launch", "--description", "Q4"))
    assert (created["slug"], created["name"], created["description"]) == ("launch", "Launch", "Q4")

    listed = cli("projects", "list")
    assert listed.exit_code == 0, listed.output
    assert "launch" in listed.stdout
    assert "Launch" in listed.stdout
    shown = cli("projects", "show", "launch")
    assert shown.exit_code == 0, shown.output
    assert "Q4" in shown.stdout

    edited = output_json(cli("--json", "projects", "edit", "launch", "--name", "Big launch", "--clear-description"))
    assert (edited["name"], edited["description"]) == ("Big launch", None)

    deleted = cli("projects", "delete", "launch")
    assert deleted.exit_code == 0, deleted.output
    assert api.get("/api/projects/launch", headers=auth("alice")).status_code == 404


@pytest.mark.usefixtures("board")
def test_members_add_list_role_and_rm(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    api.get("/api/tasks", headers=auth("carol"))

    added = output_json(cli("--json", "members", "add", "demo", "carol"))
    promoted = output_json(cli("--json", "members", "role", "demo", "carol", "owner"))
    listed = cli("members", "list", "demo")
    removed = cli("members", "rm", "demo", "carol")

    assert (added["worker_id"], added["role"]) == ("carol", "member")
    assert promoted["role"] == "owner"
    assert listed.exit_code == 0, listed.output
    assert "carol" in listed.stdout
    assert removed.exit_code == 0, removed.output
    members = api.get("/api/projects/demo/members", headers=auth("alice")).json()
    assert sorted(member["worker_id"] for member in members) == ["alice", "bob"]


def test_workers_register_list_show_and_edit_an_agent(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    api.get("/api/tasks", headers=auth("alice"))

    registered = output_json(
        cli(
            "--json",
            "workers",
            "register",
            "@coder",
            "--type",
            "agent",
            "--name",
            "Coder",
            "--owner",
            "alice",
            user="root",
            env={"TASKFLOW_TOKEN": cli.make_token("root", role="admin")},
        )
    )
    listed = output_json(cli("--json", "workers", "list", "--type", "agent"))
    shown = cli("workers", "show", "@coder")
    edited = output_json(
        cli(
            "--json",
            "workers",
            "edit",
            "@coder",
            "--name",
            "Coder 2",
            env={"TASKFLOW_TOKEN": cli.make_token("root", role="admin")},
        )
    )

    assert (registered["id"], registered["type"], registered["name"], registered["owner_id"]) == (
        "@coder",
        "agent",
        "Coder",
        "alice",
    )
    assert [worker["id"] for worker in listed] == ["@coder"]
    assert shown.exit_code == 0, shown.output
    assert "Coder" in shown.stdout
    assert edited["name"] == "Coder 2"


def test_registering_someone_else_without_being_admin_exits_1_with_the_apis_message(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    expected = api.post("/api/workers", json={"id": "@x", "type": "agent", "name": "X"}, headers=auth("alice")).json()

    result = cli("workers", "register", "@x", "--type", "agent", "--name", "X")

    assert result.exit_code == 1
    assert expected["error"] in result.stderr
    assert "403 forbidden" in result.stderr


# ---------------------------------------------------------------- errors and exit codes


def test_an_api_error_shows_the_apis_message_as_is_and_exits_1(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    expected = api.get("/api/tasks/999", headers=auth("alice")).json()

    result = cli("show", "999")

    assert result.exit_code == 1
    assert expected["error"] in result.stderr
    assert "404 not_found" in result.stderr
    assert result.stdout == ""


def test_an_api_error_with_json_prints_the_apis_error_body_on_stderr(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    expected = api.get("/api/tasks/999", headers=auth("alice")).json()

    result = cli("--json", "show", "999")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert json.loads(result.stderr) == expected


def test_a_rejected_token_exits_1_with_the_apis_message(cli: Cli) -> None:
    result = cli("list", env={"TASKFLOW_TOKEN": "not-a-jwt"})

    assert result.exit_code == 1
    assert "401 unauthorized" in result.stderr


def test_an_unreachable_server_exits_1_naming_the_url(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    result = cli("list", env={"TASKFLOW_URL": url})

    assert result.exit_code == 1
    assert f"Could not reach TaskFlow at {url}" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["show"],
        ["show", "not-a-number"],
        ["progress", "1", "150"],
        ["list", "--status", "sleeping"],
        ["list", "--json"],
        ["block", "1"],
        ["edit", "1", "--title", "x", "--clear", "everything"],
        ["edit", "1", "--label", "x", "--clear", "label"],
        ["done", "1", "--artifact", "no-equals-sign"],
        ["done", "1", "--artifact", "=https://example.com"],
        ["done", "1", "--artifact", "Name="],
    ],
)
def test_wrong_usage_exits_2_without_calling_the_api(cli: Cli, args: list[str]) -> None:
    result = cli(*args, env={"TASKFLOW_URL": f"http://127.0.0.1:{free_port()}"})

    assert result.exit_code == 2, result.output


def test_no_url_at_all_is_a_usage_error_that_says_how_to_configure(cli: Cli) -> None:
    result = cli("list", env={"TASKFLOW_URL": None})

    assert result.exit_code == 2
    assert "TASKFLOW_URL" in result.stderr
    assert "taskflow login" in result.stderr


def test_no_token_is_a_usage_error(cli: Cli) -> None:
    result = cli("list", user=None)

    assert result.exit_code == 2
    assert "TASKFLOW_TOKEN" in result.stderr


# ---------------------------------------------------------------- labels and results


@pytest.mark.usefixtures("board")
def test_add_edit_and_list_with_labels(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    added = output_json(cli("--json", "add", "Train the model", "-p", "demo", "--label", "GPU", "-l", "python"))
    other = new_task(api, auth, "Write docs", labels=["docs"])

    edited = output_json(cli("--json", "edit", str(other["id"]), "--label", "docs", "--label", "python"))
    both = output_json(cli("--json", "list", "--label", "python", "--label", "gpu"))
    python = output_json(cli("--json", "list", "--label", "python"))
    cleared = output_json(cli("--json", "edit", str(added["id"]), "--clear", "label"))
    shown = cli("show", str(other["id"]))

    assert added["labels"] == ["gpu", "python"]
    assert edited["labels"] == ["docs", "python"]
    assert [task["id"] for task in both] == [added["id"]]
    assert [task["id"] for task in python] == [added["id"], other["id"]]
    assert cleared["labels"] == []
    assert shown.exit_code == 0, shown.output
    assert "docs, python" in shown.stdout


@pytest.mark.usefixtures("board")
def test_a_bad_label_exits_1_with_the_apis_message(cli: Cli) -> None:
    result = cli("add", "Bad", "--label", "-nope")

    assert result.exit_code == 1
    assert "labels" in result.stderr


@pytest.mark.usefixtures("board")
def test_claim_with_labels_takes_only_work_carrying_them(cli: Cli, api: httpx.Client, auth: AuthHeaders) -> None:
    new_task(api, auth, "Urgent Rust", priority="critical", labels=["rust"])
    wanted = new_task(api, auth, "Python on GPU", priority="low", labels=["python", "gpu"])

    claimed = output_json(cli("--json", "claim", "--label", "python", "--label", "gpu", user="bob"))
    nothing = cli("claim", "--label", "python", user="bob")

    assert (claimed["id"], claimed["assigned_to"]) == (wanted["id"], "bob")
    assert nothing.exit_code == 0, nothing.output
    assert "Nothing is ready to claim." in nothing.stdout


@pytest.mark.usefixtures("board")
def test_done_with_a_summary_and_artifacts_keeps_them_as_the_result(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    task_id = str(new_task(api, auth, "Ship it")["id"])
    cli("start", task_id, user="bob")

    done = output_json(
        cli(
            "--json",
            "done",
            task_id,
            "--summary",
            "Released 1.0",
            "--artifact",
            "Release=https://example.com/releases?tag=v1.0",
            "-a",
            "Notes=https://example.com/notes",
            user="bob",
        )
    )
    shown = cli("show", task_id)

    assert done["result"] == {
        "summary": "Released 1.0",
        "artifacts": [
            {"name": "Release", "url": "https://example.com/releases?tag=v1.0"},
            {"name": "Notes", "url": "https://example.com/notes"},
        ],
    }
    assert done == api.get(f"/api/tasks/{task_id}", headers=auth("alice")).json()
    assert "Released 1.0" in shown.stdout
    assert "Release: https://example.com/releases?tag=v1.0" in shown.stdout


@pytest.mark.usefixtures("board")
def test_done_with_an_ftp_artifact_exits_1_and_leaves_the_task_in_progress(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    task_id = str(new_task(api, auth, "Ship it")["id"])
    cli("start", task_id, user="bob")

    result = cli("done", task_id, "--artifact", "Dump=ftp://example.com/dump", user="bob")

    assert result.exit_code == 1
    assert "url" in result.stderr
    assert api.get(f"/api/tasks/{task_id}", headers=auth("alice")).json()["status"] == "in_progress"


# ---------------------------------------------------------------- configuration


def test_login_stores_url_and_token_readable_only_by_the_owner_and_later_commands_use_them(
    cli: Cli, make_token: Callable[..., str]
) -> None:
    token = make_token("alice")

    stored = cli("login", "--url", cli.url, "--token", token, env={"TASKFLOW_URL": None, "TASKFLOW_TOKEN": None})
    added = cli("--json", "add", "From the stored login", env={"TASKFLOW_URL": None, "TASKFLOW_TOKEN": None})

    assert stored.exit_code == 0, stored.output
    path = cli.config_home / "taskflow" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"url": cli.url, "token": token}
    assert output_json(added)["created_by"] == "alice"


def test_flags_and_environment_win_over_the_stored_login(cli: Cli, make_token: Callable[..., str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert cli("login", "--url", dead, "--token", make_token("alice")).exit_code == 0

    by_environment = cli("--json", "add", "Env wins", user="bob")
    by_flag = cli("--url", cli.url, "--token", make_token("carol"), "--json", "add", "Flag wins", user="bob")
    stored_only = cli("list", env={"TASKFLOW_URL": None, "TASKFLOW_TOKEN": None})

    assert output_json(by_environment)["created_by"] == "bob"
    assert output_json(by_flag)["created_by"] == "carol"
    assert stored_only.exit_code == 1
    assert dead in stored_only.stderr


def test_the_stored_token_is_never_sent_to_another_url(cli: Cli, make_token: Callable[..., str]) -> None:
    assert cli("login", "--url", "http://127.0.0.1:9", "--token", make_token("alice")).exit_code == 0

    result = cli("list", env={"TASKFLOW_TOKEN": None})

    assert result.exit_code == 2
    assert f"No token for {cli.url}" in result.stderr


def test_logout_forgets_the_stored_login(cli: Cli, make_token: Callable[..., str]) -> None:
    assert cli("login", "--url", cli.url, "--token", make_token("alice")).exit_code == 0

    assert cli("logout").exit_code == 0

    assert not (cli.config_home / "taskflow" / "config.json").exists()
    assert cli("list", env={"TASKFLOW_URL": None, "TASKFLOW_TOKEN": None}).exit_code == 2


def test_login_refuses_a_url_that_is_not_http(cli: Cli) -> None:
    result = cli("login", "--url", "ftp://example.test", "--token", "x")

    assert result.exit_code == 2
    assert "http(s) URL" in result.stderr


def test_devtoken_prints_a_token_the_server_trusts_with_dev_auth_and_the_cli_uses_it(
    cli: Cli, settings: Settings, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DEV_KEY_FILE": settings.dev_key_file,
        "AUTH_SERVER_URL": settings.auth_server_url,
        "JWT_ISSUER": settings.jwt_issuer,
        "JWT_AUDIENCE": settings.jwt_audience,
    }

    # The documented command, `uv run python devtoken.py ...`, from a directory with no .env.
    result = subprocess.run(
        [sys.executable, str(DEVTOKEN), "@builder", "--role", "admin", "--name", "Builder", "--ttl", "120"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    key = devtoken.load_or_create_key(settings.dev_key_file)
    claims = jwt.decode(token, devtoken.public_jwk(key), algorithms=["EdDSA"], audience=settings.jwt_audience)
    assert (claims["sub"], claims["role"], claims["name"], claims["exp"] - claims["iat"]) == (
        "@builder",
        "admin",
        "Builder",
        120,
    )
    added = cli("--token", token, "--json", "add", "Made with a dev token", env={"TASKFLOW_TOKEN": None})
    assert output_json(added)["created_by"] == "@builder"


# ---------------------------------------------------------------- the shared client


class FlakyNetwork(httpx.BaseTransport):
    """The first request reaches the server but its answer is lost, as on a dropped connection; the
    second finds the first still running (the API's 409 `idempotency_in_progress`); then all is well."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        if len(self.sent) == 2:
            body = {
                "error": "A request with this key is in progress",
                "status_code": 409,
                "code": "idempotency_in_progress",
            }
            return httpx.Response(409, json=body, request=request)
        response = self.inner.handle_request(request)
        if len(self.sent) == 1:
            response.read()
            response.close()
            raise httpx.ReadError("connection lost", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_a_post_whose_answer_was_lost_is_resent_with_the_same_idempotency_key_and_done_once(
    live_server: Any, api: httpx.Client, auth: AuthHeaders, make_token: Callable[..., str]
) -> None:
    network = FlakyNetwork()

    with TaskFlowClient(live_server.url, make_token("alice"), transport=network, resend_delays=(0.01, 0.01)) as client:
        reply = client.create_task("Exactly once")

    assert len(network.sent) == 3
    assert len({request.headers["Idempotency-Key"] for request in network.sent}) == 1
    assert {request.content for request in network.sent} == {network.sent[0].content}
    assert reply.response.headers["Idempotent-Replayed"] == "true"
    tasks = api.get("/api/tasks", params={"q": "Exactly once"}, headers=auth("alice")).json()
    assert [task["id"] for task in tasks] == [reply.data["id"]]


def test_the_client_raises_the_apis_message_and_code(live_server: Any, make_token: Callable[..., str]) -> None:
    with TaskFlowClient(live_server.url, make_token("alice")) as client, pytest.raises(ApiError) as raised:
        client.start_task(12345)

    assert (raised.value.status_code, raised.value.code) == (404, "not_found")
    assert raised.value.message == raised.value.body["error"]


# ---------------------------------------------------------------- waiting and the event feed

# Only guards against a hang: every wait below ends long before this when things work.
HANG = 30


@dataclass
class Running:
    """A `taskflow` process started by a test: its stdout read line by line as it comes."""

    process: subprocess.Popen[str]

    def line(self) -> str:
        """The next line it prints (fails rather than hangs)."""
        assert self.process.stdout is not None
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(self.process.stdout.readline).result(timeout=HANG)


@pytest.fixture
def taskflow_process(
    live_server: Any, make_token: Callable[..., str], tmp_path: Path
) -> Iterator[Callable[..., Running]]:
    """`taskflow_process(*args, user=...)`: the installed `taskflow` started in the background; stopped afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, user: str = "alice") -> Running:
        env = {
            **os.environ,
            "TASKFLOW_URL": live_server.url,
            "TASKFLOW_TOKEN": make_token(user),
            "XDG_CONFIG_HOME": str(tmp_path),
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
        process = subprocess.Popen(
            [str(TASKFLOW), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started.append(process)
        return Running(process)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=HANG)


def feed_cursor(api: httpx.Client, auth: AuthHeaders) -> int:
    """Where the feed is now: events after it are the ones still to come."""
    response = api.get("/api/events", headers=auth("alice"))
    assert response.status_code == 200, response.text
    cursor: int = response.json()["next_after"]
    return cursor


def test_claim_wait_with_nothing_ready_answers_nothing_when_the_wait_ends(cli: Cli) -> None:
    started = time.monotonic()

    result = cli("claim", "--wait", "1")

    assert result.exit_code == 0, result.output
    assert "Nothing is ready to claim." in result.stdout
    assert time.monotonic() - started < HANG


@pytest.mark.usefixtures("board")
def test_claim_wait_claims_a_task_created_while_it_waits(
    taskflow_process: Callable[..., Running], api: httpx.Client, auth: AuthHeaders
) -> None:
    waiting = taskflow_process("--json", "claim", "--wait", "30", "--project", "demo", user="bob")
    time.sleep(1)  # let it start waiting; had it not yet, it claims at once, which passes as well
    task = new_task(api, auth, "Arrives while bob waits")

    claimed = json.loads(waiting.line())

    assert (claimed["id"], claimed["status"], claimed["assigned_to"]) == (task["id"], "in_progress", "bob")
    assert waiting.process.wait(timeout=HANG) == 0


@pytest.mark.usefixtures("board")
def test_watch_json_prints_each_event_as_one_line_and_exits_0_on_ctrl_c(
    taskflow_process: Callable[..., Running], api: httpx.Client, auth: AuthHeaders
) -> None:
    cursor = feed_cursor(api, auth)
    watching = taskflow_process("--json", "watch", "--project", "demo", "--after", str(cursor), user="bob")
    task = new_task(api, auth, "Watched")
    api.post(f"/api/tasks/{task['id']}/comments", json={"body": "Over to you @bob"}, headers=auth("alice"))

    created, commented = json.loads(watching.line()), json.loads(watching.line())
    watching.process.send_signal(signal.SIGINT)
    _, stderr = watching.process.communicate(timeout=HANG)

    assert (created["type"], created["task_id"], created["actor_id"]) == ("task.created", task["id"], "alice")
    assert created["changes"]["title"] == [None, "Watched"]
    assert (commented["type"], commented["comment"]["body"], commented["comment"]["mentions"]) == (
        "comment.added",
        "Over to you @bob",
        ["bob"],
    )
    assert commented["id"] > created["id"]
    assert watching.process.returncode == 0
    assert "Traceback" not in stderr


@pytest.mark.usefixtures("board")
def test_watch_for_people_prints_a_line_per_event_with_actor_type_task_and_what_changed(
    taskflow_process: Callable[..., Running], api: httpx.Client, auth: AuthHeaders
) -> None:
    cursor = feed_cursor(api, auth)
    watching = taskflow_process("watch", "--type", "task.created", "--after", str(cursor))
    task = new_task(api, auth, "Seen by people")

    line = watching.line()
    watching.process.send_signal(signal.SIGINT)

    assert "alice (human)" in line
    assert f"task.created  task {task['id']}  [demo]" in line
    assert "title: Seen by people" in line
    assert watching.process.wait(timeout=HANG) == 0


@pytest.mark.usefixtures("board")
def test_events_prints_a_page_and_where_to_read_on_for_people_and_as_json(
    cli: Cli, api: httpx.Client, auth: AuthHeaders
) -> None:
    cursor = feed_cursor(api, auth)
    task = new_task(api, auth, "Paged")
    api.post(f"/api/tasks/{task['id']}/comments", json={"body": "Line one\nline two @bob"}, headers=auth("alice"))

    human = cli("events", "--after", str(cursor), "--project", "demo")
    page = output_json(cli("--json", "events", "--after", str(cursor), "--limit", "1"))
    rest = output_json(cli("--json", "events", "--after", str(page["next_after"]), "--type", "comment.added"))
    empty = cli("events", "--after", str(rest["next_after"]), "--task", str(task["id"]), "--wait", "1")

    assert human.exit_code == 0, human.output
    assert f"task.created  task {task['id']}  [demo]" in human.stdout
    assert "“Line one…”, mentions bob" in human.stdout
    assert [event["type"] for event in page["events"]] == ["task.created"]
    assert [event["comment"]["body"] for event in rest["events"]] == ["Line one\nline two @bob"]
    assert empty.exit_code == 0, empty.output
    assert "No events." in empty.stdout
    assert f"next_after: {rest['next_after']}" in empty.stdout


def test_events_after_an_unknown_id_exits_1_with_the_apis_message(cli: Cli) -> None:
    result = cli("events", "--after", "999999")

    assert result.exit_code == 1
    assert "No event has id 999999" in result.stderr


# ---------------------------------------------------------------- the installed console script


def test_the_installed_taskflow_script_runs_with_the_documented_exit_codes(
    live_server: Any, make_token: Callable[..., str], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "TASKFLOW_URL": live_server.url,
        "TASKFLOW_TOKEN": make_token("alice"),
        "XDG_CONFIG_HOME": str(tmp_path),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(TASKFLOW), *args], env=env, capture_output=True, text=True, timeout=60, check=False)

    added = run("--json", "add", "From a shell script")
    missing = run("show", "999")
    wrong = run("show")

    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["title"] == "From a shell script"
    assert missing.returncode == 1
    assert "not_found" in missing.stderr
    assert wrong.returncode == 2
