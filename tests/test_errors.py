"""The error envelope on every kind of failure, the OpenAPI description of it, and CORS."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
from conftest import AuthHeaders, JWKSServer, TokenFactory
from fastapi.testclient import TestClient
from sqlalchemy import event
from support import CreateProject, CreateTask, app_engine, assert_error

ENVELOPE = {"error", "status_code", "code"}
FRONTEND = "http://localhost:3000"


class InjectedFault(Exception):
    """Raised by a test's event listener; nothing of it may reach the client."""


# The app as a caller meets it: an unhandled error comes back as a 500 response instead of raising here.
pytestmark = pytest.mark.errors_as_responses


@contextmanager
def failing_reads_of_tasks(client: TestClient) -> Iterator[None]:
    """Every statement that reads the task table fails, with a message full of things that must not leak."""
    engine = app_engine(client)

    def fail(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM task" in statement:
            raise InjectedFault(f"secret-detail: {statement} at /srv/taskflow/services.py password=hunter2")

    event.listen(engine, "before_cursor_execute", fail)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", fail)


def assert_envelope(response: httpx2.Response, status_code: int, code: str) -> dict[str, Any]:
    """The error envelope of this status and code, served as JSON with a request id; its body."""
    body = assert_error(response, status_code, code)
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["X-Request-ID"]
    return body


# ---------------------------------------------------------------- the envelope, status by status


@pytest.mark.parametrize("path", ["/nope", "/api/nope", "/api/tasks/1/nope", "/api"])
def test_an_unknown_route_is_a_404_envelope(client: TestClient, path: str) -> None:
    body = assert_envelope(client.get(path), 404, "not_found")

    assert set(body) == ENVELOPE


def test_an_unknown_route_is_a_404_envelope_with_a_token_too(client: TestClient, auth: AuthHeaders) -> None:
    body = assert_envelope(client.get("/api/nothing-here", headers=auth("alice")), 404, "not_found")

    assert set(body) == ENVELOPE


def test_a_missing_resource_is_a_404_envelope(client: TestClient, auth: AuthHeaders) -> None:
    for path in ["/api/tasks/999", "/api/projects/nope", "/api/workers/nobody", "/api/tasks/999/audit"]:
        body = assert_envelope(client.get(path, headers=auth("alice")), 404, "not_found")
        assert set(body) == ENVELOPE


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/tasks"),
        ("DELETE", "/api/tasks"),
        ("PUT", "/api/tasks/1"),
        ("POST", "/health"),
        ("GET", "/api/tasks/1/start"),
    ],
)
def test_a_wrong_method_is_a_405_envelope(client: TestClient, auth: AuthHeaders, method: str, path: str) -> None:
    body = assert_envelope(client.request(method, path, headers=auth("alice")), 405, "method_not_allowed")

    assert set(body) == ENVELOPE


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "where"),
    [
        ("POST", "/api/tasks", {"json": {}}, ["body", "title"]),
        ("POST", "/api/tasks", {"json": {"title": "x", "status": "completed"}}, ["body", "status"]),
        ("POST", "/api/tasks", {"json": {"title": "x", "priority": "urgent"}}, ["body", "priority"]),
        ("GET", "/api/tasks/0", {}, ["path", "task_id"]),
        ("GET", "/api/tasks/abc", {}, ["path", "task_id"]),
        ("GET", "/api/tasks", {"params": {"limit": 0}}, ["query", "limit"]),
        ("GET", "/api/tasks", {"params": {"sort": "title"}}, ["query", "sort"]),
        ("POST", "/api/tasks/1/block", {}, ["query", "reason"]),
    ],
)
def test_a_malformed_request_is_a_422_envelope_with_field_errors(
    client: TestClient, auth: AuthHeaders, method: str, path: str, kwargs: dict[str, Any], where: list[str]
) -> None:
    body = assert_envelope(client.request(method, path, headers=auth("alice"), **kwargs), 422, "validation_error")

    assert set(body) == ENVELOPE | {"detail"}
    assert body["detail"]
    for error in body["detail"]:
        assert set(error) == {"loc", "msg", "type"}
        assert isinstance(error["loc"], list)
        assert isinstance(error["msg"], str)
        assert isinstance(error["type"], str)
    assert where in [error["loc"] for error in body["detail"]]


def test_a_body_that_is_not_json_is_a_422_envelope(client: TestClient, auth: AuthHeaders) -> None:
    response = client.post(
        "/api/tasks", content=b"{not json", headers={**auth("alice"), "Content-Type": "application/json"}
    )

    body = assert_envelope(response, 422, "validation_error")
    assert set(body) == ENVELOPE | {"detail"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": "Bearer "},
    ],
)
def test_a_missing_or_bad_token_is_a_401_envelope_with_www_authenticate(
    client: TestClient, headers: dict[str, str]
) -> None:
    body = assert_envelope(client.get("/api/tasks", headers=headers), 401, "unauthorized")

    assert set(body) == ENVELOPE
    assert client.get("/api/tasks", headers=headers).headers["WWW-Authenticate"] == "Bearer"


def test_an_expired_token_is_a_401_envelope_that_does_not_echo_the_token(
    client: TestClient, make_token: TokenFactory
) -> None:
    token = make_token("alice", exp=1_700_000_000)

    response = client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})

    body = assert_envelope(response, 401, "unauthorized")
    assert set(body) == ENVELOPE
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert token not in response.text
    assert token.split(".")[1] not in response.text


def test_rule_errors_use_the_envelope_with_their_codes(
    client: TestClient,
    auth: AuthHeaders,
    create_project: CreateProject,
    create_task: CreateTask,
) -> None:
    create_project("demo", owner="alice", members=["bob"])
    task = create_task("Guarded", as_user="alice", project_slug="demo")
    url = f"/api/tasks/{task['id']}"

    cases = [
        (client.post(f"{url}/complete", headers=auth("alice")), 400, "invalid_transition"),
        (client.patch(url, json={"status": "blocked"}, headers=auth("alice")), 400, None),
        (client.delete(url, headers=auth("bob")), 403, "forbidden"),
        (client.post("/api/projects", json={"slug": "demo", "name": "Again"}, headers=auth("bob")), 409, "conflict"),
        (client.get(url, headers=auth("mallory")), 404, "not_found"),
    ]

    for response, status_code, code in cases:
        body = assert_envelope(response, status_code, code or response.json()["code"])
        assert set(body) == ENVELOPE
        assert body["code"] in {"bad_request", "invalid_transition", "forbidden", "conflict", "not_found"}
    assert "pending" in cases[0][0].json()["error"]


def test_unreachable_signing_keys_are_a_503_envelope(client: TestClient, auth: AuthHeaders, jwks: JWKSServer) -> None:
    jwks.failing = True

    body = assert_envelope(client.get("/api/tasks", headers=auth("alice")), 503, "service_unavailable")

    assert set(body) == ENVELOPE


# ---------------------------------------------------------------- 500: an envelope with the request id, nothing internal


def test_an_unexpected_error_is_a_500_envelope_with_the_callers_request_id(
    client: TestClient, auth: AuthHeaders
) -> None:
    with failing_reads_of_tasks(client):
        response = client.get("/api/tasks", headers={**auth("alice"), "X-Request-ID": "trace-me-42"})

    assert response.status_code == 500, response.text
    assert response.json() == {
        "error": "Internal server error",
        "status_code": 500,
        "code": "internal_error",
        "request_id": "trace-me-42",
    }
    assert response.headers["X-Request-ID"] == "trace-me-42"


def test_a_500_without_an_incoming_request_id_names_the_generated_one(client: TestClient, auth: AuthHeaders) -> None:
    with failing_reads_of_tasks(client):
        response = client.get("/api/tasks", headers=auth("alice"))

    body = assert_envelope(response, 500, "internal_error")
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert len(body["request_id"]) == 32


def test_a_500_leaks_no_sql_path_or_secret(client: TestClient, auth: AuthHeaders) -> None:
    with failing_reads_of_tasks(client):
        responses = [
            client.get("/api/tasks", headers=auth("alice")),
            client.post("/api/tasks", json={"title": "x", "parent_id": 1}, headers=auth("alice")),
        ]

    for response in responses:
        assert response.status_code == 500, response.text
        assert set(response.json()) == ENVELOPE | {"request_id"}
        for leak in ("secret-detail", "SELECT", "FROM task", "services.py", "/srv", "hunter2", "Traceback"):
            assert leak not in response.text
            assert all(leak not in value for value in response.headers.values())


def test_a_500_is_logged_with_its_traceback_and_request_id(
    client: TestClient, auth: AuthHeaders, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="taskflow"), failing_reads_of_tasks(client):
        response = client.get("/api/tasks", headers={**auth("alice"), "X-Request-ID": "logged-500"})

    assert response.status_code == 500, response.text
    records = [r for r in caplog.records if r.name == "taskflow" and r.levelno >= logging.ERROR]
    assert records, "the 500 was not logged"
    record = records[-1]
    assert "logged-500" in record.getMessage()
    assert record.exc_info is not None, "the 500 was logged without its traceback"
    assert record.exc_info[0] is not None, "the 500 was logged without its traceback"
    assert isinstance(record.exc_info[1], InjectedFault)


# ---------------------------------------------------------------- OpenAPI and the docs


@pytest.fixture
def openapi(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    schema: dict[str, Any] = response.json()
    return schema


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("status_code", ["401", "404", "422"])
def test_openapi_declares_the_error_body_on_tasks(openapi: dict[str, Any], method: str, status_code: str) -> None:
    response = openapi["paths"]["/api/tasks"][method]["responses"][status_code]

    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_openapi_declares_rule_errors_on_task_creation(openapi: dict[str, Any]) -> None:
    responses = openapi["paths"]["/api/tasks"]["post"]["responses"]

    for status_code in ("400", "403", "409"):
        assert responses[status_code]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }


def test_openapi_describes_the_error_body(openapi: dict[str, Any]) -> None:
    schema = openapi["components"]["schemas"]["ErrorBody"]

    assert {"error", "status_code", "code", "detail", "request_id"} <= set(schema["properties"])
    assert {"error", "status_code", "code"} <= set(schema["required"])


def test_openapi_declares_the_bearer_scheme_on_api_routes(openapi: dict[str, Any]) -> None:
    schemes = openapi["components"]["securitySchemes"]

    assert schemes["HTTPBearer"]["type"] == "http"
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["HTTPBearer"].get("bearerFormat") == "JWT"
    assert {"HTTPBearer": []} in openapi["paths"]["/api/tasks"]["get"]["security"]
    assert {"HTTPBearer": []} in openapi["paths"]["/api/tasks"]["post"]["security"]
    assert "security" not in openapi["paths"]["/health"]["get"]


def test_the_docs_page_serves_html(client: TestClient) -> None:
    response = client.get("/docs")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger" in response.text.lower()
    assert "/openapi.json" in response.text


# ---------------------------------------------------------------- CORS


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_a_preflight_from_the_frontend_is_allowed_with_credentials(client: TestClient, method: str) -> None:
    response = client.options(
        "/api/tasks/1",
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )

    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert method in {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    allowed_headers = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed_headers


def test_a_request_from_the_frontend_can_read_the_count_and_request_id(client: TestClient, auth: AuthHeaders) -> None:
    response = client.get("/api/tasks", headers={**auth("alice"), "Origin": FRONTEND})

    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-total-count", "x-request-id"} <= exposed
    assert response.headers["X-Total-Count"] == "0"


def test_an_error_for_the_frontend_is_readable_by_it(client: TestClient) -> None:
    response = client.get("/api/tasks", headers={"Origin": FRONTEND})

    assert_envelope(response, 401, "unauthorized")
    assert response.headers["Access-Control-Allow-Origin"] == FRONTEND


def test_a_500_for_the_frontend_is_readable_by_it(client: TestClient, auth: AuthHeaders) -> None:
    with failing_reads_of_tasks(client):
        response = client.get("/api/tasks", headers={**auth("alice"), "Origin": FRONTEND})

    assert_envelope(response, 500, "internal_error")
    # Without these the browser hides the body, and the request_id to quote with it.
    assert response.headers.get("Access-Control-Allow-Origin") == FRONTEND
    assert "x-request-id" in response.headers.get("Access-Control-Expose-Headers", "").lower()


def test_a_request_from_another_origin_gets_no_cors_headers(client: TestClient, auth: AuthHeaders) -> None:
    response = client.get("/api/tasks", headers={**auth("alice"), "Origin": "http://evil.example"})

    assert response.status_code == 200, response.text
    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_preflight_from_another_origin_is_refused(client: TestClient) -> None:
    response = client.options(
        "/api/tasks/1",
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "Authorization",
        },
    )

    assert response.status_code == 400
    assert "Access-Control-Allow-Origin" not in response.headers
