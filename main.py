"""The TaskFlow app: settings wiring, `create_app()` and the routes.

Routes are thin: each declares its HTTP contract, takes its dependencies and calls one
service function. `app = create_app()` is what `uvicorn main:app` serves.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Body, FastAPI, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic_core import to_json
from sqlalchemy import make_url

import comments
import devtoken
import handlers
import remote_mcp
import services
import swagger_ui
import telemetry
from access import Actor
from auth import JWKSVerifier, Resource
from config import VERSION, Settings, load_settings
from database import Timeouts, check_connection, create_db_engine, migrate, normalize_database_url, outage
from dependencies import (
    Claim,
    CommentId,
    CurrentUser,
    DefaultLease,
    ExpectedVersion,
    KnownWorkers,
    LeaseSeconds,
    Limit,
    Offset,
    OtherTaskId,
    ProjectSlug,
    RequestSession,
    SessionDep,
    StartLease,
    TaskFlowRoute,
    TaskId,
    WorkerIdPath,
    etag,
    get_engine,
    in_transaction,
    still_signed_in,
)
from errors import (
    ERROR_CODES,
    MAX_HEADER_BYTES,
    ServiceUnavailable,
)
from events import EventReader
from models import (
    MAX_ID,
    AuditQuery,
    AuditRead,
    CommentCreate,
    CommentRead,
    CommentUpdate,
    DatabaseHealth,
    DependencyCreate,
    ErrorBody,
    EventPage,
    EventQuery,
    Health,
    IdPage,
    MemberCreate,
    MemberRead,
    MemberUpdate,
    Note,
    ProgressNote,
    Project,
    ProjectCreate,
    ProjectMember,
    ProjectRead,
    ProjectUpdate,
    TaskCreate,
    TaskQuery,
    TaskRead,
    TaskResult,
    TaskUpdate,
    Worker,
    WorkerCreate,
    WorkerRead,
    WorkerType,
    WorkerUpdate,
    utc_now,
)
from ratelimit import RateLimiter
from sweeper import LeaseSweeper
from wakeups import NothingYet, Topic, Wakeups
from workflow import TaskRecord, as_read

logger = logging.getLogger("taskflow")
GC_YOUNG_THRESHOLD = 20_000
# A database outage is logged at most this often per cause, with the count of requests it failed.
OUTAGE_LOG_SECONDS = 10.0

DESCRIPTION = (
    "Task management where humans and AI agents work the same board. Every change is "
    "written to an audit log naming its actor and whether that actor is a human or an agent.\n\n"
    "Click **Authorize** and paste a Better Auth JWT. Errors are "
    '`{"error": "...", "status_code": 404, "code": "not_found"}`; the codes:\n\n'
    + "\n".join(f"- `{code}`: {meaning}" for code, meaning in ERROR_CODES.items())
)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
# What any route may answer, whatever it does.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    413: _error("The request body is larger than MAX_BODY_BYTES"),
    431: _error(f"The request headers are larger than {MAX_HEADER_BYTES // 1024} KiB in all"),
    500: _error("A bug: quote the `request_id`"),
    503: {
        **_error(
            "The database is unreachable or overloaded, the signing keys cannot be fetched, or the server is draining"
        ),
        "headers": RETRY_AFTER,
    },
}
API_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("Missing or invalid token"),
    404: _error("Not found, or not yours to see"),
    422: _error("Malformed request: `detail` lists the field errors"),
    429: {
        **_error("Over your rate limit (RATE_LIMIT_READ or RATE_LIMIT_WRITE)"),
        "headers": {
            **RETRY_AFTER,
            "RateLimit": {"description": "The limit closest to running out", "schema": {"type": "string"}},
            "RateLimit-Policy": {"description": "Your limits", "schema": {"type": "string"}},
        },
    },
    **COMMON_ERRORS,
}
RULE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("The request breaks a rule, or the workflow forbids this transition"),
    403: _error("Visible to you, but this action is reserved"),
    409: _error("Collides with existing state"),
}
# What the routes that take a body and break no rule answer to one that is not JSON.
UNPARSABLE_BODY = _error("The body is not valid JSON")
# The routes that take If-Match.
GUARDED_ERRORS = {**RULE_ERRORS, 412: _error("The task changed since you read it: If-Match no longer matches")}

public = APIRouter(responses=COMMON_ERRORS, route_class=TaskFlowRoute)
api = APIRouter(prefix="/api", responses=API_ERRORS, route_class=TaskFlowRoute)


# ---------------------------------------------------------------- health


# Both are async and keep off the request threads, so that they answer when every one is busy:
# a liveness probe that waited behind the load would get a busy worker restarted.


@public.get("/health", response_model=Health, tags=["health"])
async def health() -> Health:
    """Liveness: the process is up. Needs no token."""
    return Health(status="healthy", version=VERSION)


@public.get(
    "/api/health/db",
    response_model=DatabaseHealth,
    tags=["health"],
    responses={503: {**COMMON_ERRORS[503], "description": "The database cannot be reached, or the server is draining"}},
)
async def database_health(request: Request) -> DatabaseHealth:
    """Readiness: the database answers, and the process is not shutting down. Needs no token."""
    if request.app.state.draining:
        raise ServiceUnavailable("Shutting down")
    try:
        await anyio.to_thread.run_sync(
            check_connection, get_engine(request), limiter=telemetry.probe_limiter("readiness")
        )
    except Exception as error:
        found = outage(error)
        if found is None:
            logger.exception("The readiness check failed")
        else:
            handlers.report_outage(request, found)
        raise ServiceUnavailable("Database unavailable") from None
    return DatabaseHealth(database="connected")


# ---------------------------------------------------------------- tasks


COUNT_DESCRIPTION = (
    f"The number of all matching rows is in `X-Total-Count`, counted exactly up to {services.COUNT_CAP:,}; "
    f"past that it says {services.COUNT_CAP:,} and `X-Total-Count-Exact: false` is sent. When more rows "
    'follow, `Link: <…>; rel="next"` gives the next page (keyset: as fast on page 1,000 as on page 1).'
)


def counted(request: Request, response: Response, page: services.Page) -> list[Any]:
    """Send a page of rows, with the count of all matching rows and a link to the next page."""
    response.headers["X-Total-Count"] = str(page.total)
    if not page.exact:
        response.headers["X-Total-Count-Exact"] = "false"
    if page.next_cursor is not None:
        url = request.url.remove_query_params("offset").include_query_params(after=page.next_cursor)
        response.headers["Link"] = f'<{url}>; rel="next"'
    return page.rows


def tagged(response: Response, task: TaskRecord | dict[str, Any]) -> dict[str, Any]:
    """The task as every read shows it, with its version as the ETag, for a later If-Match."""
    read = task if isinstance(task, dict) else as_read(task, utc_now())
    response.headers["ETag"] = etag(read["version"])
    return read


@api.post("/tasks", response_model=TaskRead, status_code=status.HTTP_201_CREATED, tags=["tasks"], responses=RULE_ERRORS)
def create_task(data: TaskCreate, response: Response, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """Create a task; it starts `pending`."""
    return tagged(response, services.create_task(session, user, data))


@api.get(
    "/tasks",
    response_model=list[TaskRead],
    tags=["tasks"],
    description=COUNT_DESCRIPTION,
    responses={400: _error("An `after` cursor that is malformed or for another sort")},
)
def list_tasks(
    filters: Annotated[TaskQuery, Query()], request: Request, response: Response, session: SessionDep, user: CurrentUser
) -> list[Any]:
    """List the tasks you can see, one page at a time."""
    return counted(request, response, services.list_tasks(session, user, filters))


@api.post(
    "/tasks/claim",
    response_model=TaskRead,
    tags=["workflow"],
    responses={204: {"description": "Nothing is ready for you (within `wait_seconds`)"}, **RULE_ERRORS},
)
async def claim_task(request: Request, session: SessionDep, user: CurrentUser, claim: Claim) -> Response:
    """Start the best task that is ready for you (priority, then due date, then age); 204 if there is none.

    With `wait_seconds`, a claim that finds nothing waits, holding no connection, until a task
    becomes ready for you (created, released, unblocked, a lease running out, a dependency done,
    assigned to you) and claims it, or answers 204 when the time is up. Wait instead of polling.
    """

    def attempt(final: bool) -> Response:
        task = services.claim_task(session, user, claim)
        if task is None and not final:
            raise NothingYet
        telemetry.count_claim(task is not None)
        if task is None:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        read = as_read(task, utc_now())
        return Response(to_json(read), media_type="application/json", headers={"ETag": etag(read["version"])})

    return await until_answered(request, session, user, Topic.work, claim.wait_seconds, attempt)


@api.get("/tasks/{task_id}", response_model=TaskRead, tags=["tasks"])
def get_task(task_id: TaskId, response: Response, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """Get one task, with its version in the `ETag` header."""
    return tagged(response, services.read_task(session, user, task_id))


# ---------------------------------------------------------------- the workflow
# Declared right after the task reads they act on: a request's route is found by trying the
# routes in order, so the busiest come first.


@api.post("/tasks/{task_id}/start", response_model=TaskRead, tags=["workflow"], responses=GUARDED_ERRORS)
def start_task(
    task_id: TaskId,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    lease: StartLease,
    expected_version: ExpectedVersion,
) -> dict[str, Any]:
    """Claim a pending task (unassigned, or assigned to you) whose dependencies are done, and begin work on it."""
    task = services.start_task(session, user, task_id, lease_seconds=lease, expected_version=expected_version)
    return tagged(response, task)


@api.post("/tasks/{task_id}/heartbeat", response_model=TaskRead, tags=["workflow"], responses=RULE_ERRORS)
def heartbeat(
    task_id: TaskId, response: Response, session: SessionDep, user: CurrentUser, lease_seconds: LeaseSeconds = None
) -> dict[str, Any]:
    """Renew your lease on a task in progress. Not audited; the task's ETag does not change."""
    return tagged(response, services.heartbeat(session, user, task_id, lease_seconds=lease_seconds))


@api.post("/tasks/{task_id}/progress", response_model=TaskRead, tags=["workflow"], responses=GUARDED_ERRORS)
def update_progress(
    task_id: TaskId,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    percent: Annotated[int, Query(ge=0, le=100, description="Progress, 0 to 100")],
    expected_version: ExpectedVersion,
    note: Annotated[ProgressNote | None, Query(description="What was done")] = None,
) -> dict[str, Any]:
    """Report progress on a task in progress (its assignee); this also renews the lease."""
    task = services.update_progress(session, user, task_id, percent, note, expected_version=expected_version)
    return tagged(response, task)


@api.post("/tasks/{task_id}/review", response_model=TaskRead, tags=["workflow"], responses=GUARDED_ERRORS)
def submit_for_review(
    task_id: TaskId, response: Response, session: SessionDep, user: CurrentUser, expected_version: ExpectedVersion
) -> dict[str, Any]:
    """Hand a task in progress over for review (its assignee)."""
    return tagged(response, services.submit_for_review(session, user, task_id, expected_version=expected_version))


@api.post("/tasks/{task_id}/complete", response_model=TaskRead, tags=["workflow"], responses=GUARDED_ERRORS)
def complete_task(
    task_id: TaskId,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    expected_version: ExpectedVersion,
    result: Annotated[
        TaskResult | None, Body(description="What was delivered: kept as the task's `result` (optional)")
    ] = None,
) -> dict[str, Any]:
    """Complete a task in progress or in review (its assignee or a project owner); progress becomes 100."""
    task = services.complete_task(session, user, task_id, result, expected_version=expected_version)
    return tagged(response, task)


@api.post("/tasks/{task_id}/block", response_model=TaskRead, tags=["workflow"], responses=GUARDED_ERRORS)
def block_task(
    task_id: TaskId,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    reason: Annotated[Note, Query(description="Why it is blocked")],
    expected_version: ExpectedVersion,
) -> dict[str, Any]:
    """Mark a pending, in-progress or in-review task as blocked, with a reason."""
    return tagged(response, services.block_task(session, user, task_id, reason, expected_version=expected_version))


@api.post("/tasks/{task_id}/unblock", response_model=TaskRead, tags=["workflow"], responses=GUARDED_ERRORS)
def unblock_task(
    task_id: TaskId, response: Response, session: SessionDep, user: CurrentUser, expected_version: ExpectedVersion
) -> dict[str, Any]:
    """Unblock a task: back to in_progress if it has an assignee, else to pending."""
    return tagged(response, services.unblock_task(session, user, task_id, expected_version=expected_version))


@api.post("/tasks/{task_id}/release", response_model=TaskRead, tags=["workflow"], responses=GUARDED_ERRORS)
def release_task(
    task_id: TaskId, response: Response, session: SessionDep, user: CurrentUser, expected_version: ExpectedVersion
) -> dict[str, Any]:
    """Hand a task you are working on back: pending and unassigned, for someone else to claim."""
    return tagged(response, services.release_task(session, user, task_id, expected_version=expected_version))


# ---------------------------------------------------------------- tasks: changes, history, dependencies


@api.patch("/tasks/{task_id}", response_model=TaskRead, tags=["tasks"], responses=GUARDED_ERRORS)
def update_task(
    task_id: TaskId,
    data: TaskUpdate,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    default_lease: DefaultLease,
    expected_version: ExpectedVersion,
) -> dict[str, Any]:
    """Change the fields sent; a `status` change follows the same state machine as the actions."""
    task = services.update_task(
        session, user, task_id, data, lease_seconds=default_lease, expected_version=expected_version
    )
    return tagged(response, task)


@api.delete("/tasks/{task_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["tasks"], responses=RULE_ERRORS)
def delete_task(task_id: TaskId, session: SessionDep, user: CurrentUser) -> None:
    """Delete a task that has no subtasks and that no task depends on (its creator, a project owner or an admin)."""
    services.delete_task(session, user, task_id)


@api.get("/tasks/{task_id}/audit", response_model=list[AuditRead], tags=["audit"], description=COUNT_DESCRIPTION)
def task_history(
    task_id: TaskId,
    page: Annotated[IdPage, Query()],
    request: Request,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
) -> list[Any]:
    """A task's audit trail, oldest first, one page at a time."""
    return counted(request, response, services.task_history(session, user, task_id, page))


@api.get("/tasks/{task_id}/dependencies", response_model=list[TaskRead], tags=["dependencies"])
def list_dependencies(task_id: TaskId, session: SessionDep, user: CurrentUser) -> list[dict[str, Any]]:
    """The tasks this task waits for."""
    return services.list_dependencies(session, user, task_id)


@api.post(
    "/tasks/{task_id}/dependencies",
    response_model=TaskRead,
    status_code=status.HTTP_201_CREATED,
    tags=["dependencies"],
    responses=RULE_ERRORS,
)
def add_dependency(task_id: TaskId, data: DependencyCreate, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """Make this task wait for another task of the same project; answers the task waited for."""
    return services.add_dependency(session, user, task_id, data)


@api.delete(
    "/tasks/{task_id}/dependencies/{other_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["dependencies"],
    responses=RULE_ERRORS,
)
def remove_dependency(task_id: TaskId, other_id: OtherTaskId, session: SessionDep, user: CurrentUser) -> None:
    """Stop this task waiting for another."""
    services.remove_dependency(session, user, task_id, other_id)


# ---------------------------------------------------------------- comments


@api.get("/tasks/{task_id}/comments", response_model=list[CommentRead], tags=["comments"])
def list_comments(
    task_id: TaskId,
    request: Request,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[Any]:
    """A task's comments, oldest first; the total is in `X-Total-Count`."""
    return counted(request, response, comments.list_comments(session, user, task_id, limit, offset))


@api.post(
    "/tasks/{task_id}/comments",
    response_model=CommentRead,
    status_code=status.HTTP_201_CREATED,
    tags=["comments"],
    responses={400: UNPARSABLE_BODY, 409: RULE_ERRORS[409]},
)
def add_comment(task_id: TaskId, data: CommentCreate, session: SessionDep, user: CurrentUser) -> CommentRead:
    """Comment on a task you can see; `@worker-id` mentions a worker who can see it too."""
    return comments.add_comment(session, user, task_id, data)


@api.patch(
    "/tasks/{task_id}/comments/{comment_id}",
    response_model=CommentRead,
    tags=["comments"],
    responses={400: UNPARSABLE_BODY, 403: RULE_ERRORS[403]},
)
def update_comment(
    task_id: TaskId, comment_id: CommentId, data: CommentUpdate, session: SessionDep, user: CurrentUser
) -> CommentRead:
    """Change a comment's body (its author or an admin); its mentions are worked out again."""
    return comments.update_comment(session, user, task_id, comment_id, data)


@api.delete(
    "/tasks/{task_id}/comments/{comment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["comments"],
    responses={403: RULE_ERRORS[403]},
)
def delete_comment(task_id: TaskId, comment_id: CommentId, session: SessionDep, user: CurrentUser) -> None:
    """Delete a comment (its author or an admin); the audit log keeps what it said."""
    comments.delete_comment(session, user, task_id, comment_id)


# ---------------------------------------------------------------- projects


@api.post(
    "/projects",
    response_model=ProjectRead,
    status_code=status.HTTP_201_CREATED,
    tags=["projects"],
    responses=RULE_ERRORS,
)
def create_project(data: ProjectCreate, session: SessionDep, user: CurrentUser) -> Project:
    """Create a project; you become its owner."""
    return services.create_project(session, user, data)


@api.get("/projects", response_model=list[ProjectRead], tags=["projects"])
def list_projects(
    request: Request, response: Response, session: SessionDep, user: CurrentUser, limit: Limit = 50, offset: Offset = 0
) -> list[Any]:
    """List the projects you are a member of; the total is in `X-Total-Count`."""
    return counted(request, response, services.list_projects(session, user, limit, offset))


@api.get("/projects/{slug}", response_model=ProjectRead, tags=["projects"])
def get_project(slug: ProjectSlug, session: SessionDep, user: CurrentUser) -> Project:
    """Get one project."""
    return services.get_project(session, user, slug)


@api.patch("/projects/{slug}", response_model=ProjectRead, tags=["projects"], responses=RULE_ERRORS)
def update_project(slug: ProjectSlug, data: ProjectUpdate, session: SessionDep, user: CurrentUser) -> Project:
    """Rename or describe a project (an owner)."""
    return services.update_project(session, user, slug, data)


@api.delete("/projects/{slug}", status_code=status.HTTP_204_NO_CONTENT, tags=["projects"], responses=RULE_ERRORS)
def delete_project(slug: ProjectSlug, session: SessionDep, user: CurrentUser) -> None:
    """Delete a project that has no tasks (an owner)."""
    services.delete_project(session, user, slug)


@api.get("/projects/{slug}/members", response_model=list[MemberRead], tags=["projects"])
def list_members(
    slug: ProjectSlug,
    request: Request,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[Any]:
    """List a project's members; the total is in `X-Total-Count`."""
    return counted(request, response, services.list_members(session, user, slug, limit, offset))


@api.post(
    "/projects/{slug}/members",
    response_model=MemberRead,
    status_code=status.HTTP_201_CREATED,
    tags=["projects"],
    responses=RULE_ERRORS,
)
def add_member(slug: ProjectSlug, data: MemberCreate, session: SessionDep, user: CurrentUser) -> ProjectMember:
    """Add a registered worker to a project (an owner)."""
    return services.add_member(session, user, slug, data)


@api.patch("/projects/{slug}/members/{worker_id}", response_model=MemberRead, tags=["projects"], responses=RULE_ERRORS)
def update_member(
    slug: ProjectSlug, worker_id: WorkerIdPath, data: MemberUpdate, session: SessionDep, user: CurrentUser
) -> ProjectMember:
    """Change a member's role (an owner); a project always keeps one owner."""
    return services.update_member(session, user, slug, worker_id, data)


@api.delete(
    "/projects/{slug}/members/{worker_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["projects"],
    responses=RULE_ERRORS,
)
def remove_member(slug: ProjectSlug, worker_id: WorkerIdPath, session: SessionDep, user: CurrentUser) -> None:
    """Remove a member (an owner), or leave (yourself); never the last owner."""
    services.remove_member(session, user, slug, worker_id)


# ---------------------------------------------------------------- workers


@api.get("/workers", response_model=list[WorkerRead], tags=["workers"])
def list_workers(
    request: Request,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    type: WorkerType | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[Any]:
    """List registered workers, humans and agents; the total is in `X-Total-Count`."""
    return counted(request, response, services.list_workers(session, user, limit, offset, type))


@api.get("/workers/{worker_id}", response_model=WorkerRead, tags=["workers"])
def get_worker(worker_id: WorkerIdPath, session: SessionDep, user: CurrentUser) -> Worker:
    """Get one worker."""
    return services.get_worker(session, user, worker_id)


@api.post(
    "/workers", response_model=WorkerRead, status_code=status.HTTP_201_CREATED, tags=["workers"], responses=RULE_ERRORS
)
def register_worker(data: WorkerCreate, session: SessionDep, user: CurrentUser) -> Worker:
    """Register a worker: yourself, or (an admin) any id, such as an agent's."""
    return services.register_worker(session, user, data)


@api.patch("/workers/{worker_id}", response_model=WorkerRead, tags=["workers"], responses=RULE_ERRORS)
def update_worker(worker_id: WorkerIdPath, data: WorkerUpdate, session: SessionDep, user: CurrentUser) -> Worker:
    """Rename yourself; an admin may change any worker, and its type."""
    return services.update_worker(session, user, worker_id, data)


# ---------------------------------------------------------------- audit


@api.get("/audit", response_model=list[AuditRead], tags=["audit"], description=COUNT_DESCRIPTION)
def list_audit(
    filters: Annotated[AuditQuery, Query()],
    request: Request,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
) -> list[Any]:
    """Audit rows about the tasks and projects you can see, newest first, one page at a time."""
    return counted(request, response, services.list_audit(session, user, filters))


# ---------------------------------------------------------------- the event feed

EVENTS_DESCRIPTION = (
    "The audit rows you may see, as events, oldest first: every one exactly once, in feed order, "
    "however many writers commit at once. Follow it with `after=<next_after>`. With `wait_seconds`, "
    "an empty answer waits (holding no connection) until an event arrives or the time is up."
)
SSE_CONTENT = {"text/event-stream": {"schema": {"type": "string"}}}
LastEventId = Annotated[
    int | None,
    Header(alias="Last-Event-ID", ge=0, le=MAX_ID, description="The `id` of the last event received: resume after it"),
]


@api.get(
    "/events",
    response_model=EventPage,
    tags=["events"],
    description=EVENTS_DESCRIPTION,
    responses={400: _error("`after` is not the id of an event")},
)
async def list_events(
    query: Annotated[EventQuery, Query()], request: Request, session: SessionDep, user: CurrentUser
) -> Response:
    """The event feed after a cursor, one page at a time; long-polls with `wait_seconds`."""
    feed = EventReader(session, user, query)

    def attempt(final: bool) -> Response:
        page = feed.read()
        if not page["events"] and not final:
            raise NothingYet(soon=feed.held_back)
        return Response(to_json(page), media_type="application/json")

    return await until_answered(request, session, user, Topic.events, query.wait_seconds, attempt)


@api.get(
    "/events/stream",
    response_class=StreamingResponse,
    tags=["events"],
    responses={
        200: {"content": SSE_CONTENT, "description": "Server-Sent Events"},
        400: _error("`after` is not the id of an event"),
    },
)
async def stream_events(
    query: Annotated[EventQuery, Query()],
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """The event feed as Server-Sent Events, live: `id:` is the cursor, `event:` the type, `data:` the event.

    Reconnect with `Last-Event-ID` (browsers do) to resume exactly where it stopped. A comment line
    keeps the connection alive at least every 15 seconds. The stream ends when your token expires
    or the server stops: reconnect. `wait_seconds` does not apply.
    """
    if last_event_id is not None:
        query = query.model_copy(update={"after": last_event_id})
    feed = EventReader(session, user, query)
    await in_transaction(session, user, feed.start)  # a bad cursor is a 400 before the stream begins
    return StreamingResponse(
        feed.stream(
            wakeups_of(request), lambda read: in_transaction(session, user, read), lambda: still_signed_in(request)
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"},
    )


# ---------------------------------------------------------------- the app


def listen_url(settings: Settings) -> str | None:
    """Where to LISTEN for commits, on PostgreSQL; None on SQLite, where this process wakes its own waiters."""
    if make_url(settings.database_url).get_backend_name() not in {"postgresql", "postgres"}:
        return None
    return normalize_database_url(settings.listen_database_url or settings.database_url)


def wakeups_of(request: Request) -> Wakeups:
    wakeups: Wakeups = request.app.state.wakeups
    return wakeups


async def until_answered(
    request: Request,
    session: RequestSession,
    user: Actor,
    topic: Topic,
    seconds: int,
    attempt: Callable[[bool], Response],
) -> Response:
    """`attempt(final)` in one transaction at a time until it answers, waiting for `topic` in
    between, for up to `seconds` (`Wakeups.wait_for`); a client that left gets a 204 no one reads."""
    return await wakeups_of(request).wait_for(
        topic,
        seconds,
        lambda final: in_transaction(session, user, lambda: attempt(final)),
        request.is_disconnected,
        Response(status_code=status.HTTP_204_NO_CONTENT),
    )


def build_verifier(settings: Settings) -> JWKSVerifier:
    static_keys = {}
    if settings.dev_auth:
        key = devtoken.load_or_create_key(settings.dev_key_file)
        static_keys[devtoken.key_id(key)] = devtoken.public_jwk(key)
        logger.warning(
            "DEV_AUTH is on: tokens signed by the local development key %s are trusted. Never do this in production.",
            settings.dev_key_file,
        )
    return JWKSVerifier(
        settings.jwks_url,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        # OAuth access tokens for /mcp, from the same Better Auth, signed with the same keys.
        resource=Resource(audience=settings.mcp_resource, issuer=settings.mcp_issuer),
        cache_ttl=settings.jwks_cache_ttl,
        static_keys=static_keys,
    )


def drain_on_signals(app: FastAPI) -> Callable[[], None]:
    """Mark the app as draining as soon as the server is told to stop, so that readiness answers 503.

    uvicorn's own handlers stay in charge (they stop accepting and let in-flight requests finish,
    for up to --timeout-graceful-shutdown seconds); this runs first and hands over to them. Only
    the main thread may set handlers: an app served from another thread (tests) is left alone.
    Returns what puts the previous handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def mark_draining(signum: int, frame: FrameType | None) -> None:
        app.state.draining = True
        # Waiting claims and event reads answer now, and streams end, so that the server's
        # graceful shutdown is not spent waiting for them.
        wakeups: Wakeups | None = getattr(app.state, "wakeups", None)
        if wakeups is not None:
            wakeups.drain()
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        else:  # nobody else handles it: act as if this hook were not here
            signal.signal(signum, handler)
            signal.raise_signal(signum)

    for signum in previous:
        signal.signal(signum, mark_draining)

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    telemetry.configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_db_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout,
            timeouts=Timeouts(
                statement=settings.db_statement_timeout,
                lock=settings.db_lock_timeout,
                idle_in_transaction=settings.db_idle_in_transaction_timeout,
            ),
        )
        telemetry.instrument_engine(engine, settings)
        verifier = build_verifier(settings)
        wakeups = Wakeups(
            listen_url(settings),
            settings.wait_recheck_seconds,
            # Checks after a wake-up use at most half the request threads: the rest stay for everyone else.
            concurrent_checks=max(1, settings.db_pool_size // 2),
        )
        sweeper = LeaseSweeper(engine, settings.lease_sweep_seconds, swept=wakeups.committed)
        # Made anew for each run of the app: the SDK's session manager runs once.
        mcp_server = remote_mcp.create_server()
        app.state.mcp = remote_mcp.transport(mcp_server, settings)
        # As many request threads as pooled connections: a thread never waits for one, and
        # requests beyond that wait on the event loop, holding nothing but their socket.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.db_pool_size
        restore_signals = drain_on_signals(app)
        if settings.rate_limit_read or settings.rate_limit_write:
            app.state.rate_limiter = RateLimiter(
                settings.rate_limit_read, settings.rate_limit_write, settings.rate_limit_storage
            )
        try:
            if settings.auto_migrate:
                migrate(engine)
            app.state.engine = engine
            app.state.verifier = verifier
            app.state.wakeups = wakeups
            wakeups.start()
            app.state.known_workers = KnownWorkers()
            if settings.lease_sweep_seconds:
                sweeper.start()
            # What start-up built lives as long as the process: keep the cyclic GC from rescanning it.
            gc.collect()
            gc.freeze()
            # A request allocates a few thousand objects, nearly all freed by reference counting; a
            # young generation of 700 (the default) ran the collector every few requests and cost
            # GET one a fifth of its throughput in the benchmark. Cycles still get collected.
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
            async with mcp_server.session_manager.run():
                yield
        finally:
            app.state.draining = True
            wakeups.drain()
            restore_signals()
            wakeups.stop()
            sweeper.stop()
            verifier.close()
            engine.dispose()
            if app.state.rate_limiter is not None:
                await app.state.rate_limiter.close()
                app.state.rate_limiter = None
            telemetry.shutdown()

    app = FastAPI(
        title="TaskFlow",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    app.state.settings = settings
    app.state.draining = False
    app.state.outage_log = telemetry.Throttle(OUTAGE_LOG_SECONDS, logger)
    app.state.rate_limiter = None  # made by the lifespan, on the loop that serves
    app.include_router(api)  # the API first: a request is matched against the routes in order
    app.include_router(public)
    app.router.routes.extend(remote_mcp.routes(settings))
    swagger_ui.install_docs(app)
    handlers.install(app)
    # Innermost first: each add_middleware wraps what was added before it.
    app.add_middleware(handlers.SizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(handlers.UnexpectedErrorMiddleware)
    app.add_middleware(handlers.CORSByPath, settings=settings)
    telemetry.install(app, settings)
    app.add_middleware(handlers.RequestIdMiddleware)
    return app


app = create_app()
