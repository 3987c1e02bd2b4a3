"""The TaskFlow REST API over HTTP: what the `taskflow` CLI and the `taskflow-mcp` server call.

Both clients speak only to the API, never to the database, and only through this module, so
the base URL, the token, error handling, retries, the API's vocabulary (statuses, priorities,
sort keys, worker types, roles) and the mapping of keyword arguments to JSON fields live in one
place. Every method is one endpoint, takes its fields as keywords (None means "not given") and
returns the API's JSON as it came; an error answer raises `ApiError` carrying the API's own
message and code, and an unreachable server raises `ConnectionFailed` naming the URL.

It imports nothing from the server: `tests/test_client_vocabulary.py` pins the words below to
the server's enums instead.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Generator, Iterable
from types import TracebackType
from typing import Any, Literal, NamedTuple, TypedDict
from urllib.parse import quote, urlsplit

import httpx
from httpx_sse import EventSource

DEFAULT_TIMEOUT = 30.0
# Failures after which a POST may or may not have reached the server: resent with the same
# Idempotency-Key, so the API does it at most once. A refused connection sent nothing.
RESENDABLE = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
RESEND_DELAYS = (0.2, 1.0)
# The server sends a keep-alive comment at least every 15 s: a stream silent for three times
# that is a dead connection (a peer gone without a word), and is reconnected.
STREAM_READ_TIMEOUT = 45.0
# Before reconnecting a dropped stream: the server's `retry:` (2 s) once it has said it, this
# until then; doubled after each reconnection that fails, up to the cap.
RECONNECT_DELAY = 1.0
RECONNECT_DELAY_CAP = 30.0
# Answers to a reconnection that say "not now" rather than "never": a proxy or a server that is
# restarting. Any other error answer ends the stream.
RETRYABLE_STATUS = frozenset({502, 503, 504})

JSON = Any

# ---------------------------------------------------------------- the API's vocabulary
# Literal types rather than enums: Typer offers them as choices and the MCP SDK writes them
# into a tool's JSON schema as a plain `enum`, and both show the values the API itself uses.

TaskStatus = Literal["pending", "in_progress", "review", "completed", "blocked"]
TaskPriority = Literal["low", "medium", "high", "critical"]
# A leading '-' sorts descending.
TaskSort = Literal[
    "created_at", "-created_at", "updated_at", "-updated_at", "priority", "-priority", "due_date", "-due_date"
]
# The server also knows `system` (TaskFlow itself, e.g. when a lease runs out): no client registers it.
WorkerType = Literal["human", "agent"]
ProjectRole = Literal["owner", "member"]
# An event's `type`: the audit action it is (lease_expired has no dot: it is stored as it always was).
EventType = Literal[
    "task.created",
    "task.updated",
    "task.deleted",
    "task.started",
    "task.claimed",
    "task.progress",
    "task.review",
    "task.completed",
    "task.blocked",
    "task.unblocked",
    "task.released",
    "lease_expired",
    "dependency.added",
    "dependency.removed",
    "project.created",
    "project.updated",
    "project.deleted",
    "member.added",
    "member.updated",
    "member.removed",
    "worker.registered",
    "worker.updated",
    "comment.added",
    "comment.edited",
    "comment.deleted",
]
# The keywords of `update_task` whose field may be emptied.
ClearableTaskField = Literal["description", "assigned_to", "project", "parent_id", "due_date"]


class Artifact(TypedDict):
    """Something a completed task delivered: a name, and an http(s) link to it."""

    name: str
    url: str


# A task's keyword arguments that are not its JSON field names: a task's project is its slug.
TASK_FIELD = {"project": "project_slug"}


class ClientError(Exception):
    """Something a client should show its user as it is, then stop."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(ClientError):
    """No URL or no token to talk to the API with, or a URL that is not one."""


class ConnectionFailed(ClientError):
    """The API could not be reached at all (refused, unresolvable, timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"Could not reach TaskFlow at {url}: {reason}")
        self.url = url


class ApiError(ClientError):
    """The API answered with an error: its `{"error", "status_code", "code"}` envelope."""

    def __init__(self, status_code: int, code: str, message: str, body: JSON, text: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.body = body
        self.text = text

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return cls(response.status_code, str(body.get("code", "error")), body["error"], body, response.text)
        # Not TaskFlow's envelope: a proxy's page, or something else listening on that port.
        message = f"HTTP {response.status_code} {response.reason_phrase} from {response.request.url}"
        return cls(response.status_code, "http_error", message, body, response.text)


class Page(NamedTuple):
    """One page of a list endpoint, with the total number of matches from `X-Total-Count`."""

    items: list[JSON]
    total: int
    text: str


class Reply(NamedTuple):
    """A successful answer: its parsed JSON (None when empty) and its exact text."""

    data: JSON
    text: str
    response: httpx.Response


def normalize_url(url: str) -> str:
    """The API's base URL without a trailing slash; refuses what is not an http(s) URL."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigurationError(f"TaskFlow URL must be an http(s) URL such as http://127.0.0.1:8000, got {url!r}")
    return url


def segment(value: str | int) -> str:
    """One path segment, escaped: worker ids may hold '@', ':' or '+'."""
    return quote(str(value), safe="")


def _given(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields that were given: None means "leave it out", never "set it to null"."""
    return {name: value for name, value in fields.items() if value is not None}


def _query(params: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if params is None else _given(params)


def _task_body(fields: dict[str, Any], clear: Iterable[ClearableTaskField] = ()) -> dict[str, Any]:
    """A task's JSON body from keyword arguments: the given ones, renamed to their fields, then the cleared ones as null."""
    body = {TASK_FIELD.get(name, name): value for name, value in _given(fields).items()}
    for name in clear:
        body[TASK_FIELD.get(name, name)] = None
    return body


class TaskFlowClient:
    """A synchronous client of one TaskFlow API, with one caller's token. Thread-safe; close it."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        user_agent: str = "taskflow-client",
        transport: httpx.BaseTransport | None = None,
        resend_delays: tuple[float, ...] = RESEND_DELAYS,
    ) -> None:
        self.url = normalize_url(url)
        self.timeout = timeout
        self.resend_delays = resend_delays
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token.strip()}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TaskFlowClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------ the one place requests are made

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: JSON = None,
        headers: dict[str, str] | None = None,
        wait_seconds: int | None = None,
    ) -> Reply:
        """Send one request; return the reply on 2xx, else raise `ApiError` or `ConnectionFailed`.

        Every POST carries an `Idempotency-Key`, so resending it after a failure that may have
        happened after the server acted (a timeout, a dropped connection) never does a thing twice.
        A request that may wait on the server (`wait_seconds`) gets that much more time to answer.
        """
        headers = dict(headers or {})
        content = None if json_body is None else json.dumps(json_body)
        if content is not None:
            headers["Content-Type"] = "application/json"
        delays = iter(self.resend_delays if method == "POST" else ())
        if method == "POST":
            headers.setdefault("Idempotency-Key", uuid.uuid4().hex)
        resent = False
        timeout = httpx.Timeout(self.timeout, read=self.timeout + wait_seconds) if wait_seconds else None
        while True:
            try:
                response = self._http.request(
                    method,
                    path,
                    params=_query(params),
                    content=content,
                    headers=headers,
                    timeout=timeout or httpx.USE_CLIENT_DEFAULT,
                )
            except RESENDABLE as exc:
                delay = next(delays, None)
                if delay is None:
                    raise ConnectionFailed(self.url, _reason(exc)) from None
                time.sleep(delay)
                resent = True
                continue
            except httpx.TransportError as exc:
                raise ConnectionFailed(self.url, _reason(exc)) from None
            if resent and response.status_code == 409 and _code(response) == "idempotency_in_progress":
                # The first attempt is still running on the server: its answer is worth waiting for.
                delay = next(delays, None)
                if delay is not None:
                    time.sleep(delay)
                    continue
            break
        if response.is_error:
            raise ApiError.from_response(response)
        if not response.content:
            return Reply(None, "", response)
        try:
            data = response.json()
        except ValueError:
            raise ApiError(
                response.status_code,
                "http_error",
                f"Expected JSON from {response.request.url}, got {response.headers.get('content-type', 'nothing')}",
                None,
                response.text,
            ) from None
        return Reply(data, response.text, response)

    def get(self, path: str, **params: Any) -> Reply:
        return self.request("GET", path, params=params)

    def post(self, path: str, json_body: JSON = None, *, wait_seconds: int | None = None, **params: Any) -> Reply:
        return self.request("POST", path, params=params, json_body=json_body, wait_seconds=wait_seconds)

    def page(self, path: str, **params: Any) -> Page:
        reply = self.get(path, **params)
        items = reply.data if isinstance(reply.data, list) else []
        total = reply.response.headers.get("X-Total-Count")
        return Page(items, int(total) if total and total.isdigit() else len(items), reply.text)

    # ------------------------------------------------------------ tasks

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
    ) -> Page:
        """`GET /api/tasks`. `search` matches titles; `ready=True` keeps what the caller could claim now (False: no
        filter); `label` keeps the tasks carrying every label given."""
        return self.page(
            "/api/tasks",
            status=status,
            priority=priority,
            assigned_to=assigned_to,
            project=project,
            parent_id=parent_id,
            q=search,
            ready=True if ready else None,
            label=list(label) if label else None,
            sort=sort,
            limit=limit,
            offset=offset,
        )

    def get_task(self, task_id: int) -> Reply:
        return self.get(f"/api/tasks/{task_id}")

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
    ) -> Reply:
        """`POST /api/tasks`; what is not given takes the API's default. `due_date` is ISO 8601."""
        fields = {
            "title": title,
            "description": description,
            "priority": priority,
            "project": project,
            "assigned_to": assigned_to,
            "parent_id": parent_id,
            "due_date": due_date,
            "labels": None if labels is None else list(labels),
        }
        return self.post("/api/tasks", _task_body(fields))

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
    ) -> Reply:
        """`PATCH` the fields given, and empty those named in `clear` (which wins over a value given for
        the same field); with `if_version`, only if the task is still at that version. `labels`
        replaces the whole set (`[]` removes every label)."""
        fields = {
            "title": title,
            "description": description,
            "priority": priority,
            "status": status,
            "assigned_to": assigned_to,
            "project": project,
            "parent_id": parent_id,
            "due_date": due_date,
            "labels": None if labels is None else list(labels),
        }
        headers = {"If-Match": f'"{if_version}"'} if if_version is not None else None
        return self.request("PATCH", f"/api/tasks/{task_id}", json_body=_task_body(fields, clear), headers=headers)

    def delete_task(self, task_id: int) -> Reply:
        return self.request("DELETE", f"/api/tasks/{task_id}")

    def task_history(self, task_id: int, *, limit: int | None = None, offset: int | None = None) -> Page:
        return self.page(f"/api/tasks/{task_id}/audit", limit=limit, offset=offset)

    # ------------------------------------------------------------ the workflow

    def claim_next(
        self,
        *,
        project: str | None = None,
        min_priority: TaskPriority | None = None,
        lease_seconds: int | None = None,
        labels: Iterable[str] | None = None,
        wait_seconds: int | None = None,
    ) -> Reply:
        """`POST /api/tasks/claim`: the claimed task, or a reply whose data is None when nothing is ready (204).
        With `labels`, only a task carrying every one of them. With `wait_seconds` (0-60), when nothing is
        ready the server waits that long for a task to become ready and claims it: wait instead of polling."""
        body = {
            "project": project,
            "min_priority": min_priority,
            "lease_seconds": lease_seconds,
            "labels": list(labels) if labels else None,
            "wait_seconds": wait_seconds,
        }
        return self.post("/api/tasks/claim", _given(body), wait_seconds=wait_seconds)

    def start_task(self, task_id: int, *, lease_seconds: int | None = None) -> Reply:
        return self.post(f"/api/tasks/{task_id}/start", lease_seconds=lease_seconds)

    def heartbeat(self, task_id: int, *, lease_seconds: int | None = None) -> Reply:
        return self.post(f"/api/tasks/{task_id}/heartbeat", lease_seconds=lease_seconds)

    def update_progress(self, task_id: int, percent: int, note: str | None = None) -> Reply:
        return self.post(f"/api/tasks/{task_id}/progress", percent=percent, note=note)

    def submit_for_review(self, task_id: int) -> Reply:
        return self.post(f"/api/tasks/{task_id}/review")

    def complete_task(
        self, task_id: int, *, summary: str | None = None, artifacts: Iterable[Artifact] | None = None
    ) -> Reply:
        """Complete a task; `summary` and `artifacts` (each `{"name", "url"}`, an http(s) URL) become its result.
        With neither, no body is sent, and the task has no result."""
        body = _given({"summary": summary, "artifacts": None if artifacts is None else [dict(a) for a in artifacts]})
        return self.post(f"/api/tasks/{task_id}/complete", body or None)

    def block_task(self, task_id: int, reason: str) -> Reply:
        return self.post(f"/api/tasks/{task_id}/block", reason=reason)

    def unblock_task(self, task_id: int) -> Reply:
        return self.post(f"/api/tasks/{task_id}/unblock")

    def release_task(self, task_id: int) -> Reply:
        return self.post(f"/api/tasks/{task_id}/release")

    # ------------------------------------------------------------ dependencies

    def list_dependencies(self, task_id: int) -> Reply:
        return self.get(f"/api/tasks/{task_id}/dependencies")

    def add_dependency(self, task_id: int, depends_on: int) -> Reply:
        return self.post(f"/api/tasks/{task_id}/dependencies", {"depends_on": depends_on})

    def remove_dependency(self, task_id: int, depends_on: int) -> Reply:
        return self.request("DELETE", f"/api/tasks/{task_id}/dependencies/{depends_on}")

    # ------------------------------------------------------------ comments

    def list_comments(self, task_id: int, *, limit: int | None = None, offset: int | None = None) -> Page:
        """A task's comments, oldest first."""
        return self.page(f"/api/tasks/{task_id}/comments", limit=limit, offset=offset)

    def add_comment(self, task_id: int, body: str) -> Reply:
        """Comment on a task; `@worker-id` in `body` mentions a worker who can see the task."""
        return self.post(f"/api/tasks/{task_id}/comments", {"body": body})

    def update_comment(self, task_id: int, comment_id: int, body: str) -> Reply:
        return self.request("PATCH", f"/api/tasks/{task_id}/comments/{comment_id}", json_body={"body": body})

    def delete_comment(self, task_id: int, comment_id: int) -> Reply:
        return self.request("DELETE", f"/api/tasks/{task_id}/comments/{comment_id}")

    # ------------------------------------------------------------ the event feed

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
    ) -> Reply:
        """`GET /api/events`: `{"events": [...], "next_after": N}`, the events after `after` that you may see,
        oldest first (`after` None: from now; 0: from the start). Read on with `after=next_after`, which
        gets every event once. With `wait_seconds` (0-60), an empty page waits that long for an event."""
        params = {
            "after": after,
            "limit": limit,
            "project": project,
            "task_id": task_id,
            "type": list(type) if type else None,
            "mentioning": mentioning,
            "wait_seconds": wait_seconds,
        }
        return self.request("GET", "/api/events", params=params, wait_seconds=wait_seconds)

    def stream_events(
        self,
        *,
        after: int | None = None,
        limit: int | None = None,
        project: str | None = None,
        task_id: int | None = None,
        type: Iterable[EventType] | None = None,
        mentioning: str | None = None,
        max_reconnects: int | None = None,
        read_timeout: float = STREAM_READ_TIMEOUT,
    ) -> Generator[JSON, None, None]:
        """Follow `GET /api/events/stream` live: yield each event (a dict, as `events()` has them) as it arrives.

        It never ends by itself. When the connection drops (a network error, a silence longer than
        `read_timeout`, the server closing it as it stops), it reconnects after a short backoff (the
        server's `retry:`, doubled after each failed attempt, at most 30 s) with
        `Last-Event-ID` set to the last event yielded, so nothing is missed or repeated. `after=None`
        (from now) is pinned first with one `events()` read, whose events are yielded too, so even
        a drop before the first event resumes from where the stream began. A first connection that
        fails raises `ConnectionFailed`; after that, `max_reconnects` bounds the reconnections in a
        row without a stream opening (None: forever), past which `ConnectionFailed` is raised. An
        error answer other than 502/503/504 raises `ApiError` (a cursor the server does not know, a
        token that expired). Close the generator to stop.
        """
        filters: dict[str, Any] = {"limit": limit, "project": project, "task_id": task_id, "mentioning": mentioning}
        types = list(type) if type else None
        if after is None:
            page = self.events(**filters, type=types).data
            yield from page["events"]
            after = page["next_after"]
        params = _given(filters | {"type": types})
        delay, failures, opened = RECONNECT_DELAY, 0, False
        timeout = httpx.Timeout(self.timeout, read=read_timeout)
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-store", "Last-Event-ID": str(after)}
            try:
                with self._http.stream(
                    "GET", "/api/events/stream", params=params, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code in RETRYABLE_STATUS:
                        raise _Unavailable(f"HTTP {response.status_code} {response.reason_phrase}")
                    _check_stream(response)
                    failures, opened = 0, True
                    for sse in EventSource(response).iter_sse():
                        if sse.retry is not None:
                            delay = sse.retry / 1000
                        if not sse.data:  # `retry:` or `id:` alone: no event, but the cursor may move on
                            if sse.id.isdigit():
                                after = int(sse.id)
                            continue
                        event = _event_of(response, sse.data)
                        after = int(sse.id) if sse.id.isdigit() else event["id"]
                        yield event
            except (httpx.TransportError, _Unavailable) as exc:
                reason = _reason(exc) if isinstance(exc, httpx.TransportError) else str(exc)
            else:
                reason = "the server ended the stream"
            if not opened:  # never connected at all: a wrong URL or a server that is down, not a drop
                raise ConnectionFailed(self.url, reason)
            failures += 1
            if max_reconnects is not None and failures > max_reconnects:
                raise ConnectionFailed(self.url, f"{reason}; gave up after {max_reconnects} reconnections")
            time.sleep(min(delay * 2 ** (failures - 1), RECONNECT_DELAY_CAP))

    # ------------------------------------------------------------ projects and members

    def list_projects(self, *, limit: int | None = None, offset: int | None = None) -> Page:
        return self.page("/api/projects", limit=limit, offset=offset)

    def get_project(self, slug: str) -> Reply:
        return self.get(f"/api/projects/{segment(slug)}")

    def create_project(self, slug: str, name: str, *, description: str | None = None) -> Reply:
        return self.post("/api/projects", _given({"slug": slug, "name": name, "description": description}))

    def update_project(
        self, slug: str, *, name: str | None = None, description: str | None = None, clear_description: bool = False
    ) -> Reply:
        """`PATCH` the fields given; `clear_description` empties the description (whatever `description` says)."""
        fields = _given({"name": name, "description": description})
        if clear_description:
            fields["description"] = None
        return self.request("PATCH", f"/api/projects/{segment(slug)}", json_body=fields)

    def delete_project(self, slug: str) -> Reply:
        return self.request("DELETE", f"/api/projects/{segment(slug)}")

    def list_members(self, slug: str, *, limit: int | None = None, offset: int | None = None) -> Page:
        return self.page(f"/api/projects/{segment(slug)}/members", limit=limit, offset=offset)

    def add_member(self, slug: str, worker_id: str, *, role: ProjectRole | None = None) -> Reply:
        """Add a worker to a project, as a member unless `role` says otherwise."""
        return self.post(f"/api/projects/{segment(slug)}/members", _given({"worker_id": worker_id, "role": role}))

    def update_member(self, slug: str, worker_id: str, role: ProjectRole) -> Reply:
        path = f"/api/projects/{segment(slug)}/members/{segment(worker_id)}"
        return self.request("PATCH", path, json_body={"role": role})

    def remove_member(self, slug: str, worker_id: str) -> Reply:
        return self.request("DELETE", f"/api/projects/{segment(slug)}/members/{segment(worker_id)}")

    # ------------------------------------------------------------ workers and the audit log

    def list_workers(
        self, *, type: WorkerType | None = None, limit: int | None = None, offset: int | None = None
    ) -> Page:
        return self.page("/api/workers", type=type, limit=limit, offset=offset)

    def get_worker(self, worker_id: str) -> Reply:
        return self.get(f"/api/workers/{segment(worker_id)}")

    def register_worker(
        self, worker_id: str, *, type: WorkerType = "human", name: str | None = None, owner_id: str | None = None
    ) -> Reply:
        """Register a worker, named after its id unless `name` is given; `owner_id`: an agent's accountable human."""
        body = {"id": worker_id, "type": type, "name": worker_id if name is None else name, "owner_id": owner_id}
        return self.post("/api/workers", _given(body))

    def update_worker(
        self,
        worker_id: str,
        *,
        name: str | None = None,
        type: WorkerType | None = None,
        owner_id: str | None = None,
    ) -> Reply:
        body = _given({"name": name, "type": type, "owner_id": owner_id})
        return self.request("PATCH", f"/api/workers/{segment(worker_id)}", json_body=body)

    def list_audit(
        self,
        *,
        task_id: int | None = None,
        project: str | None = None,
        actor_id: str | None = None,
        owner_id: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Page:
        """`GET /api/audit`, newest first: `since` (inclusive) and `until` (exclusive) are ISO 8601."""
        return self.page(
            "/api/audit",
            task_id=task_id,
            project=project,
            actor_id=actor_id,
            owner_id=owner_id,
            action=action,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )


class _Unavailable(Exception):
    """A stream could not be opened for now (502, 503, 504): try again after a while."""


def _check_stream(response: httpx.Response) -> None:
    """Raise `ApiError` unless the response is an event stream: an error answer, or a page from something else."""
    if response.is_error:
        response.read()
        raise ApiError.from_response(response)
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type != "text/event-stream":
        message = f"Expected an event stream from {response.request.url}, got {content_type or 'nothing'}"
        raise ApiError(response.status_code, "http_error", message, None, "")


def _event_of(response: httpx.Response, data: str) -> JSON:
    try:
        event = json.loads(data)
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("id"), int):
        message = f"Expected an event's JSON from {response.request.url}, got {data[:200]!r}"
        raise ApiError(response.status_code, "http_error", message, None, data)
    return event


def _code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    text = str(exc).strip()
    return text or type(exc).__name__
