"""The `taskflow-mcp` server: TaskFlow's workflow as MCP tools, for AI agents.

Every tool is one call to the REST API through `taskflow_client`, with the agent's own token
(`TASKFLOW_URL`, `TASKFLOW_TOKEN`), never the database: an agent can do exactly what its token
may do over HTTP, and the audit log names it. stdio by default; `--http` serves streamable HTTP.

A tool is a plain function of a `Board` and its arguments: its docstring is what the model
reads, its annotated parameters (all but the board) its input schema. `TOOLS` lists them with
their hints, and `create_server` registers each one bound to the server's client. The API serves
the same `TOOLS` at its own `/mcp` (`remote_mcp`), each call made in-process as its caller.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Protocol, TypeVar

from mcp.server import MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

import taskflow_client
from taskflow_client import (
    ApiError,
    ClearableTaskField,
    ClientError,
    ConfigurationError,
    EventType,
    TaskFlowClient,
    TaskPriority,
    TaskSort,
    TaskStatus,
)

INSTRUCTIONS = """\
TaskFlow is a task board shared by humans and AI agents; you act as the worker your token names,
and every change you make is written to an audit log under that name.

The usual loop: claim_next_task (or claim_task for a specific id) -> do the work, calling
heartbeat or update_progress before the lease expires -> submit_for_review or complete_task.
If you cannot go on, block_task with the reason, or release_task to hand the task back.
Talk on a task with add_comment (read what others said with list_comments); @worker-id in a
comment mentions that worker.

Never poll in a loop. When nothing is ready, call claim_next_task with wait_seconds (e.g. 60): it
returns as soon as a task becomes ready for you. To wait for what happens on the board (a reply,
an @mention of you, a task changing), call wait_for_events, each time with the previous call's
next_after.

A failed call returns an error whose `code` says what happened: not_found (no such task, or you
may not see it), forbidden (the action belongs to someone else), invalid_transition (the task's
status does not allow it), lease_lost (your claim expired: stop working on that task),
precondition_failed (the task changed since you read it: get_task again), unfinished_dependencies
(it waits for other tasks), validation_error (an argument is malformed)."""

# Hints appended to an error for the model: what to do next, not just what went wrong.
NEXT_STEP = {
    "lease_lost": "Your claim on this task expired and it went back to the pool: stop working on it, "
    "and call claim_next_task for new work.",
    "precondition_failed": "Someone changed the task since you read it: call get_task, then retry with its new version.",
    "unfinished_dependencies": "The task waits for other tasks to be completed: pick another task.",
    "unauthorized": "The server's TASKFLOW_TOKEN is missing, expired or invalid: a human must give it a fresh one.",
}

TaskId = Annotated[int, Field(ge=1, description="The task's numeric id, e.g. 42.")]
LeaseSeconds = Annotated[
    int | None,
    Field(
        ge=1,
        description="How many seconds your claim lasts unless renewed by heartbeat or update_progress. "
        "Omit to use the server's default (which may be no expiry).",
    ),
]
ProjectSlug = Annotated[str | None, Field(description="A project's slug (its short lowercase id, e.g. 'launch').")]
WorkerId = Annotated[str | None, Field(description="A worker's id: a person's user id, or an agent id like '@coder'.")]
Labels = Annotated[
    list[str] | None,
    Field(
        max_length=20,
        description="Labels that say what kind of work a task is, used to route it to workers equipped for it: "
        "lowercase letters, digits and . _ : - (e.g. 'python', 'gpu', 'lang:de'), at most 20.",
    ),
]
DueDate = Annotated[
    str | None,
    Field(description="Due date in ISO 8601, e.g. '2026-12-01' or '2026-12-01T17:00:00Z' (UTC if no offset)."),
]

Task = dict[str, Any]
R = TypeVar("R")


class Answer(Protocol):
    """A call's result: `Reply` over HTTP, or what the API computed in-process."""

    @property
    def data(self) -> Any: ...


class Listing(Protocol):
    """A page of a list and the number of all matches: `Page` over HTTP."""

    @property
    def items(self) -> list[Any]: ...

    @property
    def total(self) -> int: ...


class Board(Protocol):
    """What the tools call: `TaskFlowClient` here (HTTP, one token), or the API itself (`remote_mcp.Board`,
    in-process, as each caller). Both give the same data, so a tool's result does not depend on where it runs."""

    def list_tasks(
        self,
        *,
        status: TaskStatus | None = None,
        priority: TaskPriority | None = None,
        assigned_to: str | None = None,
        project: str | None = None,
        parent_id: int | None = None,
        search: str | None = None,
        ready: bool = False,
        label: Iterable[str] | None = None,
        sort: TaskSort | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Listing: ...

    def get_task(self, task_id: int) -> Answer: ...

    def task_history(self, task_id: int, *, limit: int | None = None, offset: int | None = None) -> Listing: ...

    def create_task(
        self,
        title: str,
        *,
        description: str | None = None,
        priority: TaskPriority | None = None,
        project: str | None = None,
        assigned_to: str | None = None,
        parent_id: int | None = None,
        due_date: str | None = None,
        labels: Iterable[str] | None = None,
    ) -> Answer: ...

    def update_task(
        self,
        task_id: int,
        *,
        title: str | None = None,
        description: str | None = None,
        priority: TaskPriority | None = None,
        status: TaskStatus | None = None,
        assigned_to: str | None = None,
        project: str | None = None,
        parent_id: int | None = None,
        due_date: str | None = None,
        labels: Iterable[str] | None = None,
        clear: Iterable[ClearableTaskField] = (),
        if_version: int | None = None,
    ) -> Answer: ...

    def claim_next(
        self,
        *,
        project: str | None = None,
        min_priority: TaskPriority | None = None,
        lease_seconds: int | None = None,
        labels: Iterable[str] | None = None,
        wait_seconds: int | None = None,
    ) -> Answer: ...

    def start_task(self, task_id: int, *, lease_seconds: int | None = None) -> Answer: ...

    def heartbeat(self, task_id: int, *, lease_seconds: int | None = None) -> Answer: ...

    def update_progress(self, task_id: int, percent: int, note: str | None = None) -> Answer: ...

    def submit_for_review(self, task_id: int) -> Answer: ...

    def complete_task(
        self, task_id: int, *, summary: str | None = None, artifacts: Iterable[taskflow_client.Artifact] | None = None
    ) -> Answer: ...

    def block_task(self, task_id: int, reason: str) -> Answer: ...

    def release_task(self, task_id: int) -> Answer: ...

    def list_comments(self, task_id: int, *, limit: int | None = None, offset: int | None = None) -> Listing: ...

    def add_comment(self, task_id: int, body: str) -> Answer: ...

    def events(
        self,
        *,
        after: int | None = None,
        limit: int | None = None,
        project: str | None = None,
        task_id: int | None = None,
        type: Iterable[EventType] | None = None,
        mentioning: str | None = None,
        wait_seconds: int | None = None,
    ) -> Answer: ...


class Artifact(BaseModel):
    """Something the task delivered."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200, description="What it is, e.g. 'Pull request'.")]
    url: Annotated[str, Field(description="Where it is: an http(s) URL.")]


def task(reply: Answer) -> Task:
    data: Task = reply.data
    return data


# ---------------------------------------------------------------- reading


def list_tasks(
    client: Board,
    status: Annotated[TaskStatus | None, Field(description="Only tasks with this status.")] = None,
    priority: Annotated[TaskPriority | None, Field(description="Only tasks with this priority.")] = None,
    assigned_to: Annotated[str | None, Field(description="Only tasks assigned to this worker id.")] = None,
    project: ProjectSlug = None,
    parent_id: Annotated[int | None, Field(ge=1, description="Only subtasks of this task id.")] = None,
    search: Annotated[str | None, Field(description="Only tasks whose title contains this text (any case).")] = None,
    ready: Annotated[
        bool,
        Field(
            description="True: only tasks you could claim right now (pending, unassigned or yours, no unfinished dependency)."
        ),
    ] = False,
    labels: Annotated[
        list[str] | None, Field(max_length=20, description="Only tasks carrying every one of these labels.")
    ] = None,
    sort: Annotated[
        TaskSort, Field(description="Sort key; a leading '-' means descending, e.g. '-priority'.")
    ] = "created_at",
    limit: Annotated[int, Field(ge=1, le=100, description="At most this many tasks (1-100).")] = 20,
    offset: Annotated[int, Field(ge=0, description="Skip this many, to page through results.")] = 0,
) -> dict[str, Any]:
    """List the tasks you can see on the TaskFlow board, with filters.

    Use it to survey work (e.g. ready=true for what you could claim, or assigned_to=<your id> for
    what you hold). Returns {"tasks": [...], "total": <number of matches>}; each task has id, title,
    description, status, priority, progress_percent, assigned_to, project_slug, due_date, labels,
    result (what a completed task delivered, or null) and version.
    """
    page = client.list_tasks(
        status=status,
        priority=priority,
        assigned_to=assigned_to,
        project=project,
        parent_id=parent_id,
        search=search,
        ready=ready,
        label=labels,
        sort=sort,
        limit=limit,
        offset=offset,
    )
    return {"tasks": page.items, "total": page.total}


def get_task(client: Board, task_id: TaskId) -> Task:
    """Get one task by id: its title, description, status, priority, progress, assignee, due date,
    labels, lease expiry, version, and for a completed task its result (summary and artifacts). Use it before acting on a task whose state you are unsure of.
    """
    return task(client.get_task(task_id))


def get_task_history(
    client: Board,
    task_id: TaskId,
    limit: Annotated[int, Field(ge=1, le=100, description="At most this many entries.")] = 50,
    offset: Annotated[int, Field(ge=0, description="Skip this many, to page through.")] = 0,
) -> dict[str, Any]:
    """A task's audit trail, oldest first: every change, who made it (actor_id, actor_type human,
    agent or system) and what changed (context). Use it to learn what others did before you, or why
    a task is in its state. Returns {"entries": [...], "total": <number of entries>}.
    """
    page = client.task_history(task_id, limit=limit, offset=offset)
    return {"entries": page.items, "total": page.total}


# ---------------------------------------------------------------- writing


def create_task(
    client: Board,
    title: Annotated[str, Field(min_length=1, max_length=200, description="A short imperative summary.")],
    description: Annotated[str | None, Field(description="Details: what done looks like, links, context.")] = None,
    priority: Annotated[TaskPriority, Field(description="How urgent it is.")] = "medium",
    project: ProjectSlug = None,
    assigned_to: WorkerId = None,
    parent_id: Annotated[
        int | None, Field(ge=1, description="Make it a subtask of this task id (same project).")
    ] = None,
    due_date: DueDate = None,
    labels: Labels = None,
) -> Task:
    """Create a new task (status pending). Use it to record follow-up work you discover, or to split
    a task into subtasks (parent_id). In a project you must be a member; an assignee must be one too.
    Returns the created task.
    """
    reply = client.create_task(
        title,
        description=description,
        priority=priority,
        project=project,
        assigned_to=assigned_to,
        parent_id=parent_id,
        due_date=due_date,
        labels=labels,
    )
    return task(reply)


def update_task(
    client: Board,
    task_id: TaskId,
    title: Annotated[str | None, Field(min_length=1, max_length=200, description="A new title.")] = None,
    description: Annotated[str | None, Field(description="A new description.")] = None,
    priority: Annotated[TaskPriority | None, Field(description="A new priority.")] = None,
    status: Annotated[
        TaskStatus | None,
        Field(
            description="A new status, by the workflow's rules (e.g. 'in_progress' to reopen or to take back "
            "a task from review). Prefer the dedicated tools for claiming, review, completion and blocking."
        ),
    ] = None,
    assigned_to: WorkerId = None,
    project: ProjectSlug = None,
    parent_id: Annotated[int | None, Field(ge=1, description="A new parent task id.")] = None,
    due_date: DueDate = None,
    labels: Annotated[
        list[str] | None,
        Field(
            max_length=20,
            description="The task's new labels, replacing all it has ([] removes them all); "
            "lowercase letters, digits and . _ : -.",
        ),
    ] = None,
    clear: Annotated[
        list[ClearableTaskField] | None,
        Field(description="Fields to empty, e.g. ['due_date', 'assigned_to']."),
    ] = None,
    expected_version: Annotated[
        int | None,
        Field(
            ge=1,
            description="The task's version as you last read it: the change is refused (precondition_failed) "
            "if someone changed it since. Recommended, so you never overwrite a human's edit.",
        ),
    ] = None,
) -> Task:
    """Change some fields of a task; only the arguments you give change. Use it to correct a title,
    add details, re-prioritise, reassign or set a due date. Returns the updated task.
    """
    reply = client.update_task(
        task_id,
        title=title,
        description=description,
        priority=priority,
        status=status,
        assigned_to=assigned_to,
        project=project,
        parent_id=parent_id,
        due_date=due_date,
        labels=labels,
        clear=clear or (),
        if_version=expected_version,
    )
    return task(reply)


def claim_next_task(
    client: Board,
    project: ProjectSlug = None,
    min_priority: Annotated[
        TaskPriority | None, Field(description="Only consider tasks of at least this priority.")
    ] = None,
    lease_seconds: LeaseSeconds = None,
    labels: Annotated[
        list[str] | None,
        Field(
            max_length=20,
            description="Only claim a task carrying every one of these labels: name the kinds of work you are "
            "equipped for (e.g. ['python']), so you are not handed work you cannot do.",
        ),
    ] = None,
    wait_seconds: Annotated[
        int,
        Field(
            ge=0,
            le=60,
            description="If nothing is ready, wait up to this many seconds (0-60) for a task to become ready "
            "and claim it then. Pass 30-60 when you are idle instead of calling again in a loop.",
        ),
    ] = 0,
) -> dict[str, Any]:
    """Claim the best task that is ready for you and start it, atomically: no other worker can get
    the same task. Picks the highest priority, then the soonest due, then the oldest, among pending
    tasks that are unassigned or assigned to you and wait for no unfinished dependency.

    Use it when you are free for new work. When nothing is ready, do not poll: pass wait_seconds
    (e.g. 30-60) and the call returns as soon as a task becomes ready (created, released, unblocked,
    assigned to you), already claimed for you. Returns {"claimed": true, "task": {...}} with the task
    now in_progress and assigned to you, or {"claimed": false, "task": null} when nothing is ready
    (within wait_seconds). Keep the claim alive with heartbeat or update_progress until you finish.
    """
    claimed = client.claim_next(
        project=project,
        min_priority=min_priority,
        lease_seconds=lease_seconds,
        labels=labels,
        wait_seconds=wait_seconds or None,
    ).data
    if claimed is None:
        waited = f" (waited {wait_seconds} s)" if wait_seconds else ""
        return {"claimed": False, "task": None, "message": f"Nothing is ready to claim right now{waited}."}
    return {"claimed": True, "task": claimed}


def claim_task(client: Board, task_id: TaskId, lease_seconds: LeaseSeconds = None) -> Task:
    """Claim and start one specific pending task (unassigned, or assigned to you): it becomes
    in_progress and yours. Use it when told to work on a given task; otherwise prefer claim_next_task.
    Fails if someone else holds it, or (unfinished_dependencies) if it waits for other tasks.
    """
    return task(client.start_task(task_id, lease_seconds=lease_seconds))


def heartbeat(client: Board, task_id: TaskId, lease_seconds: LeaseSeconds = None) -> Task:
    """Renew your lease on a task you hold, to show you are still working on it. Call it well before
    lease_expires_at when a step takes long and you have no progress to report. If it fails with
    lease_lost, the claim expired: stop working on that task.
    """
    return task(client.heartbeat(task_id, lease_seconds=lease_seconds))


def update_progress(
    client: Board,
    task_id: TaskId,
    percent: Annotated[int, Field(ge=0, le=100, description="How far along the task is, 0 to 100.")],
    note: Annotated[
        str | None, Field(max_length=2000, description="What was done since the last update, for the humans.")
    ] = None,
) -> Task:
    """Report progress on a task you hold (in_progress); it also renews your lease. Use it after each
    meaningful step, with a short note of what was done.
    """
    return task(client.update_progress(task_id, percent, note))


def submit_for_review(client: Board, task_id: TaskId) -> Task:
    """Hand a task you hold (in_progress) over for review by a human: status becomes review. Use it
    when the work is done but should be checked before it counts as completed.
    """
    return task(client.submit_for_review(task_id))


def complete_task(
    client: Board,
    task_id: TaskId,
    summary: Annotated[
        str | None,
        Field(
            max_length=10_000,
            description="What you delivered, for the humans who read the task: the outcome, decisions, caveats.",
        ),
    ] = None,
    artifacts: Annotated[
        list[Artifact] | None,
        Field(
            max_length=20,
            description="Links to what you produced (a pull request, a report, a build), each {name, url}; "
            "http(s) URLs only, at most 20.",
        ),
    ] = None,
) -> Task:
    """Mark a task you hold completed (from in_progress or review); progress becomes 100. Use it when
    the work is finished and needs no review. Give a summary and artifacts so the task records what
    was delivered (its `result`); it is kept in the audit trail even if the task is reopened later.
    """
    given: list[taskflow_client.Artifact] | None = (
        None if artifacts is None else [{"name": artifact.name, "url": artifact.url} for artifact in artifacts]
    )
    return task(client.complete_task(task_id, summary=summary, artifacts=given))


def block_task(
    client: Board,
    task_id: TaskId,
    reason: Annotated[
        str,
        Field(min_length=1, max_length=2000, description="Why work cannot go on, and what would unblock it."),
    ],
) -> Task:
    """Mark a task blocked (from pending, in_progress or review), with the reason. Use it when you
    cannot go on without something outside your control, such as a human's decision or access.
    """
    return task(client.block_task(task_id, reason))


def release_task(client: Board, task_id: TaskId) -> Task:
    """Give a task you hold back: it returns to pending and unassigned, for another worker to claim.
    Use it when you cannot or should not finish it (wrong skills, out of time) and it is not blocked.
    """
    return task(client.release_task(task_id))


# ---------------------------------------------------------------- talking


def list_comments(
    client: Board,
    task_id: TaskId,
    limit: Annotated[int, Field(ge=1, le=100, description="At most this many comments.")] = 50,
    offset: Annotated[int, Field(ge=0, description="Skip this many, to page through.")] = 0,
) -> dict[str, Any]:
    """A task's comments, oldest first: what humans and agents said about it (questions, decisions,
    review remarks). Read them before starting or resuming a task. Each has id, author_id, body
    (Markdown), mentions (the worker ids it @mentions), created_at and edited. Returns
    {"comments": [...], "total": <number of comments>}.
    """
    page = client.list_comments(task_id, limit=limit, offset=offset)
    return {"comments": page.items, "total": page.total}


def add_comment(
    client: Board,
    task_id: TaskId,
    body: Annotated[
        str,
        Field(
            min_length=1,
            max_length=10_000,
            description="The comment, in Markdown. Write @worker-id (e.g. @alice, @coder) to mention a worker.",
        ),
    ],
) -> dict[str, Any]:
    """Comment on a task: ask a question, report a finding, hand over, or answer someone. Writing
    @worker-id in the body mentions that worker, which wakes them: a human is notified, and an agent
    waiting for its mentions on the event feed receives the comment at once, so there is no need to
    poll for an answer. Only workers who can see the task count as mentioned (returned in
    `mentions`). Returns the comment.
    """
    comment: dict[str, Any] = client.add_comment(task_id, body).data
    return comment


# ---------------------------------------------------------------- waiting for what happens


def wait_for_events(
    client: Board,
    after: Annotated[
        int | None,
        Field(
            ge=0,
            description="The next_after of your previous call, to get each event exactly once. Omit it on your "
            "first call to start from now; 0 starts from the oldest event.",
        ),
    ] = None,
    project: ProjectSlug = None,
    task_id: Annotated[int | None, Field(ge=1, description="Only events about this task.")] = None,
    types: Annotated[
        list[EventType] | None,
        Field(description="Only events of these types, e.g. ['comment.added', 'task.created']."),
    ] = None,
    mentioning: Annotated[
        str | None,
        Field(
            description="Only comments that @mention this worker id: pass your own id to wait until someone asks you."
        ),
    ] = None,
    wait_seconds: Annotated[
        int,
        Field(ge=0, le=60, description="If there is no event yet, wait up to this many seconds (0-60) for one."),
    ] = 30,
    limit: Annotated[int, Field(ge=1, le=500, description="At most this many events.")] = 100,
) -> dict[str, Any]:
    """Wait for what happens on the board: the events you may see (tasks created, claimed, changed,
    completed; comments added; ...), oldest first. It returns as soon as there is at least one, or
    after wait_seconds with none, so do not poll: call it again, each time with after set to the
    next_after it returned, to get every event exactly once. Use mentioning=<your worker id> to wait
    until someone @mentions you in a comment, or task_id to follow one task. Each event has id, type,
    at, actor_id, actor_type (human or agent), task_id, project_slug, changes (what changed) and, for
    comments, comment {id, body, mentions}. Returns {"events": [...], "next_after": <cursor>}.
    """
    page: dict[str, Any] = client.events(
        after=after,
        limit=limit,
        project=project,
        task_id=task_id,
        type=types,
        mentioning=mentioning,
        wait_seconds=wait_seconds or None,
    ).data
    return page


# ---------------------------------------------------------------- the server

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)

# In the order an MCP client lists them.
TOOLS: list[tuple[Callable[..., Any], ToolAnnotations]] = [
    (list_tasks, READ_ONLY),
    (get_task, READ_ONLY),
    (get_task_history, READ_ONLY),
    (list_comments, READ_ONLY),
    (wait_for_events, READ_ONLY),
    (create_task, WRITES),
    (update_task, WRITES),
    (claim_next_task, WRITES),
    (claim_task, WRITES),
    (heartbeat, WRITES),
    (update_progress, WRITES),
    (submit_for_review, WRITES),
    (complete_task, WRITES),
    (block_task, WRITES),
    (release_task, WRITES),
    (add_comment, WRITES),
]


def error_result(exc: ClientError) -> CallToolResult:
    """A tool error carrying the API's message and code, as text for the model and as structured content."""
    if isinstance(exc, ApiError):
        body = (
            exc.body
            if isinstance(exc.body, dict)
            else {"error": exc.message, "status_code": exc.status_code, "code": exc.code}
        )
        text = f"TaskFlow API error {exc.status_code} ({exc.code}): {exc.message}"
        if exc.code in NEXT_STEP:
            text += f"\n{NEXT_STEP[exc.code]}"
    else:
        body = {"error": exc.message, "code": "connection_failed"}
        text = exc.message
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=body, is_error=True)


def bind(tool: Callable[..., R], client: Board) -> Callable[..., R | CallToolResult]:
    """`tool` with its client given, and an API or network failure returned as an error result."""
    signature = inspect.signature(tool, eval_str=True)
    client_parameter, *parameters = signature.parameters.values()
    if client_parameter.annotation is not Board:
        raise TypeError(f"The tool {tool.__name__} must take the Board as its first parameter")

    @functools.wraps(tool)
    def call(*args: Any, **kwargs: Any) -> R | CallToolResult:
        try:
            return tool(client, *args, **kwargs)
        except ClientError as exc:
            return error_result(exc)

    # The SDK builds the input schema from this signature: the client is not the model's to give.
    call.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return call


def package_version() -> str:
    try:
        return importlib.metadata.version("taskflow")
    except importlib.metadata.PackageNotFoundError:
        return ""


def create_server(client: TaskFlowClient) -> MCPServer:
    """The MCP server with every tool in `TOOLS`, each calling the API through `client`."""
    server = MCPServer("taskflow", version=package_version(), instructions=INSTRUCTIONS, log_level="WARNING")
    for tool, hints in TOOLS:
        server.add_tool(bind(tool, client), description=inspect.getdoc(tool), annotations=hints)
    return server


def main(argv: list[str] | None = None) -> None:
    """The `taskflow-mcp` console script."""
    parser = argparse.ArgumentParser(
        prog="taskflow-mcp",
        description="TaskFlow's tools for AI agents over MCP. Needs TASKFLOW_URL and TASKFLOW_TOKEN in the environment.",
    )
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1", help="with --http: the address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="with --http: the port (default 8765)")
    args = parser.parse_args(argv)

    url, token = os.environ.get("TASKFLOW_URL", "").strip(), os.environ.get("TASKFLOW_TOKEN", "").strip()
    missing = [name for name, value in [("TASKFLOW_URL", url), ("TASKFLOW_TOKEN", token)] if not value]
    if missing:
        parser.exit(2, f"taskflow-mcp: set {' and '.join(missing)} (the API's base URL and the agent's token)\n")
    try:
        client = TaskFlowClient(url, token, user_agent="taskflow-mcp")
    except ConfigurationError as exc:
        parser.exit(2, f"taskflow-mcp: {exc.message}\n")
    try:
        server = create_server(client)
        if args.http:
            server.run("streamable-http", host=args.host, port=args.port)
        else:
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


if __name__ == "__main__":
    main(sys.argv[1:])
