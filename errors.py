"""The errors TaskFlow answers with: each carries its HTTP status and a stable machine code.

Services and dependencies raise these; one handler in `main` turns them into the
`{"error", "status_code", "code"}` envelope. Agents branch on `code`, so codes never change.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TaskFlowError(Exception):
    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if headers is not None:
            self.headers = {**(self.headers or {}), **headers}


def envelope(status_code: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The body of every error response."""
    return {"error": message, "status_code": status_code, "code": code, **extra}


class BadRequest(TaskFlowError):
    status_code, code = 400, "bad_request"


class InvalidTransition(TaskFlowError):
    status_code, code = 400, "invalid_transition"


class Unauthorized(TaskFlowError):
    status_code, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(TaskFlowError):
    """The caller can see the thing but may not do this to it."""

    status_code, code = 403, "forbidden"


class NotFound(TaskFlowError):
    """Also what a caller gets for anything it may not see."""

    status_code, code = 404, "not_found"


class Conflict(TaskFlowError):
    status_code, code = 409, "conflict"


class UnfinishedDependencies(TaskFlowError):
    status_code, code = 400, "unfinished_dependencies"


class LeaseLost(TaskFlowError):
    status_code, code = 409, "lease_lost"


class IdempotencyInProgress(TaskFlowError):
    status_code, code = 409, "idempotency_in_progress"


class PreconditionFailed(TaskFlowError):
    status_code, code = 412, "precondition_failed"


class IdempotencyKeyReused(TaskFlowError):
    status_code, code = 422, "idempotency_key_reused"


class RateLimited(TaskFlowError):
    status_code, code = 429, "rate_limited"


# Seconds a client is told to wait when the database or the signing keys are away, and when the
# server is merely busy (its queue full, a lock or a statement timed out).
RETRY_AFTER_SECONDS = 5
BUSY_RETRY_AFTER_SECONDS = 1
# Headers a request may carry in all: generous for a bearer token and cookies (nginx's default
# buffers hold 32 KB).
MAX_HEADER_BYTES = 32 * 1024


class ServiceUnavailable(TaskFlowError):
    status_code, code = 503, "service_unavailable"
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}


# Every code a client can meet, for the README and the OpenAPI description.
ERROR_CODES: dict[str, str] = {
    "bad_request": "400: the request breaks a rule (an unknown worker, a parent in another project, a cycle, a task with subtasks, ...)",
    "invalid_transition": "400: the workflow does not allow this status change from the task's current status",
    "unfinished_dependencies": "400: the task waits for tasks that are not completed yet (they are named)",
    "unauthorized": "401: no token, or a token that is invalid, expired or not for this API",
    "forbidden": "403: the task is visible to you but this action is reserved (to its assignee, a project owner or an admin)",
    "not_found": "404: no such resource, or one you may not see",
    "method_not_allowed": "405: the path exists but not with this method",
    "conflict": "409: the request collides with existing state (a duplicate slug, worker or member, the last owner, ...)",
    "lease_lost": "409: your claim on the task expired and it was handed back; claim it again",
    "idempotency_in_progress": "409: a request with this Idempotency-Key is still running; retry shortly",
    "precondition_failed": "412: the task changed since you read it (If-Match no longer matches its ETag)",
    "payload_too_large": "413: the request body is larger than the server accepts (MAX_BODY_BYTES)",
    "idempotency_key_reused": "422: this Idempotency-Key was already used with a different request",
    "validation_error": "422: the body, a path or a query parameter is malformed; `detail` lists the field errors",
    "rate_limited": "429: you sent more requests than your rate limit allows; wait `Retry-After` seconds",
    "headers_too_large": f"431: the request headers are larger than the server accepts ({MAX_HEADER_BYTES // 1024} KiB in all)",
    "internal_error": "500: a bug; the response carries the `request_id` to quote",
    "service_unavailable": "503: the database is unreachable or overloaded, the signing keys cannot be fetched, or the server is shutting down; retry after `Retry-After` seconds",
}
