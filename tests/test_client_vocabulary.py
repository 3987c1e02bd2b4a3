"""The clients' vocabulary is the server's: every word `taskflow_client` offers the CLI and the MCP
tools is pinned here to the enum or schema in `models` it stands for. The clients may not import
the server; a test may, so a new status or sort key on the server fails here, not in a user's hands.
"""

from __future__ import annotations

import inspect
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

import models
import taskflow_client
from taskflow_client import TASK_FIELD, TaskFlowClient


def words(literal: Any) -> set[str]:
    return set(get_args(literal))


def test_the_clients_task_statuses_are_the_servers() -> None:
    assert words(taskflow_client.TaskStatus) == {status.value for status in models.TaskStatus}


def test_the_clients_task_priorities_are_the_servers() -> None:
    assert words(taskflow_client.TaskPriority) == {priority.value for priority in models.TaskPriority}


def test_the_clients_sort_keys_are_the_servers() -> None:
    assert words(taskflow_client.TaskSort) == {sort.value for sort in models.TaskSort}


def test_the_clients_worker_types_are_the_servers_but_the_system() -> None:
    # The system is TaskFlow itself (it hands back expired leases); the API refuses to register it.
    assert words(taskflow_client.WorkerType) == {kind.value for kind in models.WorkerType} - {models.WorkerType.system}


def test_the_clients_member_roles_are_the_servers() -> None:
    assert words(taskflow_client.ProjectRole) == {role.value for role in models.ProjectRole}


def nullable_fields(schema: type[BaseModel]) -> set[str]:
    """The fields of a request body that accept null."""
    nullable = set()
    for name in schema.model_fields:
        try:
            schema.model_validate({name: None})
        except ValidationError:
            continue
        nullable.add(name)
    return nullable


def test_update_task_can_clear_exactly_the_fields_the_server_lets_be_null() -> None:
    cleared = {TASK_FIELD.get(name, name) for name in words(taskflow_client.ClearableTaskField)}

    assert cleared == nullable_fields(models.TaskUpdate)


@pytest.mark.parametrize(
    ("method", "schema", "not_fields"),
    [
        (TaskFlowClient.create_task, models.TaskCreate, set()),
        (TaskFlowClient.update_task, models.TaskUpdate, {"task_id", "clear", "if_version"}),
    ],
)
def test_every_task_keyword_of_the_client_is_a_field_of_the_server_and_every_field_has_one(
    method: Any, schema: type[BaseModel], not_fields: set[str]
) -> None:
    keywords = set(inspect.signature(method).parameters) - {"self"} - not_fields

    assert {TASK_FIELD.get(keyword, keyword) for keyword in keywords} == set(schema.model_fields)


@pytest.mark.parametrize(
    ("method", "schema", "not_fields"),
    [
        (TaskFlowClient.claim_next, models.ClaimRequest, set()),
        (TaskFlowClient.complete_task, models.TaskResult, {"task_id"}),
    ],
)
def test_every_keyword_of_a_body_the_client_sends_is_a_field_of_the_server_and_every_field_has_one(
    method: Any, schema: type[BaseModel], not_fields: set[str]
) -> None:
    assert set(inspect.signature(method).parameters) - {"self"} - not_fields == set(schema.model_fields)


def test_the_clients_artifact_has_exactly_the_servers_fields() -> None:
    assert set(taskflow_client.Artifact.__annotations__) == set(models.Artifact.model_fields)


def test_the_clients_event_types_are_the_servers_audit_actions() -> None:
    assert words(taskflow_client.EventType) == {action.value for action in models.AuditAction}


def test_the_feeds_keywords_are_the_servers_query_and_the_stream_has_all_but_waiting() -> None:
    events = set(inspect.signature(TaskFlowClient.events).parameters) - {"self"}
    stream = set(inspect.signature(TaskFlowClient.stream_events).parameters) - {
        "self",
        "max_reconnects",
        "read_timeout",
    }

    assert events == set(models.EventQuery.model_fields)
    assert stream == set(models.EventQuery.model_fields) - {"wait_seconds"}
