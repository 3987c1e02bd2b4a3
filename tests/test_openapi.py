"""The OpenAPI document tells the truth: every status a route can answer is declared on it.

Two views of the same promise. The first walks the routes and works out, from what each one
depends on and from the errors the service functions it calls can raise (read from their source),
which statuses it can answer; each must be declared. The second is schemathesis: it generates
requests from the document, sends them as a signed-in user, and checks each response against
what the document declares (status, content type, body schema) and that none is a 5xx.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from conftest import AuthHeaders
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import app_of

import access
import comments
import errors
import main
import services
import workflow
from config import Settings
from dependencies import get_current_user, get_session
from idempotency import check_idempotency_key
from main import create_app
from wakeups import Wakeups

# ---------------------------------------------------------------- what a route can answer


SERVICE_MODULES = (services, comments, workflow, access)


@functools.cache
def _service_functions() -> dict[str, ast.FunctionDef]:
    trees = [ast.parse(inspect.getsource(module)) for module in SERVICE_MODULES]
    return {node.name: node for tree in trees for node in tree.body if isinstance(node, ast.FunctionDef)}


def _error_status(name: str) -> int | None:
    error = getattr(errors, name, None)
    if isinstance(error, type) and issubclass(error, errors.TaskFlowError):
        return error.status_code
    return None


def _raised_and_called(node: ast.AST) -> tuple[set[int], set[str]]:
    """The statuses of the TaskFlow errors `node` raises, and the names of the functions it calls."""
    statuses: set[int] = set()
    called: set[str] = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call) and isinstance(child.exc.func, ast.Name):
            status = _error_status(child.exc.func.id)
            # A 412 needs an If-Match to fail, which only the routes that take one can send.
            if status is not None and status != 412:
                statuses.add(status)
        elif isinstance(child, ast.Call):
            function = child.func
            if isinstance(function, ast.Name):
                called.add(function.id)
            elif isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name):
                if function.value.id in {module.__name__ for module in SERVICE_MODULES}:
                    called.add(function.attr)
        elif isinstance(child, ast.Name):
            # A service function passed along (to functools.partial, a helper) may run too.
            called.add(child.id)
    return statuses, called


def _statuses_raised(function: Callable[..., Any]) -> set[int]:
    """Every status a route's endpoint can raise through the service functions it reaches."""
    functions = _service_functions()
    source = textwrap.dedent(inspect.getsource(inspect.unwrap(function)))
    statuses, pending = _raised_and_called(ast.parse(source))
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        raised, called = _raised_and_called(functions[name])
        statuses |= raised
        pending |= called - seen
    return statuses


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for dependency in dependant.dependencies:
        yield dependency
        yield from _dependencies(dependency)


def _statuses_answerable(route: APIRoute) -> set[int]:
    statuses = {413, 431, 500} | _statuses_raised(route.endpoint)
    calls = {dependency.call for dependency in _dependencies(route.dependant)}
    # Parameters a dependency declares (If-Match, a claim's body) are the route's as much as its own.
    dependants = [route.dependant, *_dependencies(route.dependant)]
    header_params = [param for dependant in dependants for param in dependant.header_params]
    if any(dependant.query_params or dependant.path_params or dependant.body_params for dependant in dependants):
        statuses.add(422)
    if header_params or check_idempotency_key in calls:
        statuses.add(422)
    if get_current_user in calls:
        statuses |= {401, 503}  # no token or a bad one; no signing key to be had
    if get_session in calls:
        statuses |= {429, 503}  # over the caller's rate limit; the database away or overloaded
        if check_idempotency_key in calls:
            statuses |= {409, 422}  # the same key still running; the same key, another request
    if any(param.alias == "If-Match" for param in header_params):
        statuses.add(412)
    if route.path == "/api/health/db":
        statuses.add(503)
    return statuses


def _api_routes(app: FastAPI) -> Iterator[tuple[str, str, APIRoute]]:
    """(method, path, route) for every operation in the document; included routers are walked too."""
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.include_in_schema and context.path_format is not None:
            assert route.methods is not None
            for method in sorted(route.methods):
                yield method.lower(), context.path_format, route


def test_every_status_a_route_can_answer_is_declared(settings: Settings) -> None:
    app = create_app(settings)
    document = app.openapi()
    undeclared = {}
    operations = 0
    for method, path, route in _api_routes(app):
        operations += 1
        declared = {int(code) for code in document["paths"][path][method]["responses"]}
        missing = _statuses_answerable(route) - declared
        if missing:
            undeclared[f"{method.upper()} {path}"] = sorted(missing)
    assert operations == sum(len(methods) for methods in document["paths"].values())
    assert undeclared == {}


def test_the_walk_finds_what_services_raise(settings: Settings) -> None:
    # Guards the guard: the walk must see through services into the errors they raise.
    routes = {route.name: route for _, _, route in _api_routes(create_app(settings))}
    assert {400, 403, 404} <= _statuses_raised(routes["update_task"].endpoint)
    assert 409 in _statuses_raised(routes["remove_member"].endpoint)  # never the last owner
    assert {412} <= _statuses_answerable(routes["complete_task"])
    assert 412 not in _statuses_answerable(routes["get_task"])


@pytest.mark.parametrize("status_code", ["412", "413", "429", "503"])
def test_pressure_statuses_are_declared_with_the_error_body(settings: Settings, status_code: str) -> None:
    document = create_app(settings).openapi()
    response = document["paths"]["/api/tasks/{task_id}/complete"]["post"]["responses"][status_code]
    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_throttling_and_outages_declare_retry_after(settings: Settings) -> None:
    responses = create_app(settings).openapi()["paths"]["/api/tasks"]["get"]["responses"]
    assert "Retry-After" in responses["503"]["headers"]
    assert {"Retry-After", "RateLimit", "RateLimit-Policy"} <= set(responses["429"]["headers"])


# ---------------------------------------------------------------- schemathesis

# The document does not depend on the database, so the operations can be listed at collection.
OPERATIONS = [
    f"{method.upper()} {path}"
    for path, methods in create_app(Settings(_env_file=None)).openapi()["paths"].items()
    for method in methods
]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def board(client: TestClient, auth: AuthHeaders, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The app with something to act on: a project the caller owns, with a few tasks.

    Its waits end at once, as when the server stops: a long-poll answers after one look, and the
    event stream after its first line, so that each generated request gets a whole response.
    """
    headers = auth("alice", role="admin")
    assert client.post("/api/projects", json={"slug": "demo", "name": "Demo"}, headers=headers).status_code == 201
    for title in ("one", "two", "three"):
        created = client.post("/api/tasks", json={"title": title, "project_slug": "demo"}, headers=headers)
        assert created.status_code == 201
    app = app_of(client)

    # Schemathesis runs the app's lifespan again, which makes new wakeups: set on whichever serves.
    def draining(request: Request) -> Wakeups:
        wakeups: Wakeups = request.app.state.wakeups
        wakeups.draining = True
        return wakeups

    monkeypatch.setattr(main, "wakeups_of", draining)
    return app


@pytest.mark.parametrize("label", OPERATIONS)
def test_responses_conform_to_the_document(label: str, board: FastAPI, auth: AuthHeaders) -> None:
    """Valid and invalid requests alike get a declared status, content type and body; never a 5xx."""
    operation = schemathesis.openapi.from_asgi("/openapi.json", board).find_operation_by_label(label)
    assert operation is not None
    headers = auth("alice", role="admin")

    @given(
        case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    )
    @hypothesis_settings(
        max_examples=10, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def conforms(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    conforms()
