"""The errors TaskFlow answers with: each carries its HTTP status and a stable machine code.

Services and dependencies raise these; `handlers` turns them into the
`{"error", "status_code", "code"}` envelope. Agents branch on `code`, so codes never change.
Each class's docstring says when it happens: the README's table and the OpenAPI description
are made from them (`error_table`, `ERROR_CODES`).
"""

from __future__ import annotations

from typing import ClassVar


class TaskFlowError(Exception):
    """The base of every error TaskFlow answers with; its docstring's first line is what the code means."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if headers is not None:
            self.headers = {**(self.headers or {}), **headers}


# Seconds a client is told to wait when the database or the signing keys are away, and when the
# server is merely busy (its queue full, a lock or a statement timed out).
RETRY_AFTER_SECONDS = 5
BUSY_RETRY_AFTER_SECONDS = 1
# Headers a request may carry in all: generous for a bearer token and cookies (nginx's default
# buffers hold 32 KB).
MAX_HEADER_BYTES = 32 * 1024

# In the order of their status: the README's table and the OpenAPI description list them so.


class BadRequest(TaskFlowError):
    """the request breaks a rule (assignee not a member, parent in another project, a cycle, a task with subtasks, …)"""

    status_code, code = 400, "bad_request"


class InvalidTransition(TaskFlowError):
    """the workflow does not allow this status change from the current status"""

    status_code, code = 400, "invalid_transition"


class UnfinishedDependencies(TaskFlowError):
    """the task waits for tasks that are not completed (they are named)"""

    status_code, code = 400, "unfinished_dependencies"


class Unauthorized(TaskFlowError):
    """no token, or an invalid, expired or foreign one (with `WWW-Authenticate: Bearer`)"""

    status_code, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(TaskFlowError):
    """you can see the task, but the action is its assignee's, a project owner's, a comment's author's or an admin's"""

    status_code, code = 403, "forbidden"


class InsufficientScope(TaskFlowError):
    """at `/mcp`: the OAuth token was not granted the scope the call needs (`WWW-Authenticate` names it)"""

    status_code, code = 403, "insufficient_scope"


class NotFound(TaskFlowError):
    """no such thing, or not yours to see"""

    status_code, code = 404, "not_found"


class MethodNotAllowed(TaskFlowError):
    """the path exists, the method does not"""

    status_code, code = 405, "method_not_allowed"


class Conflict(TaskFlowError):
    """a taken slug or worker id, an existing member, the last owner, a change made at the same time, …"""

    status_code, code = 409, "conflict"


class LeaseLost(TaskFlowError):
    """your claim expired and the task was handed back"""

    status_code, code = 409, "lease_lost"


class IdempotencyInProgress(TaskFlowError):
    """a request with this `Idempotency-Key` is still running"""

    status_code, code = 409, "idempotency_in_progress"


class PreconditionFailed(TaskFlowError):
    """the task changed since you read it (`If-Match`)"""

    status_code, code = 412, "precondition_failed"


class PayloadTooLarge(TaskFlowError):
    """the body is larger than `MAX_BODY_BYTES` (refused before or while it is read)"""

    status_code, code = 413, "payload_too_large"


class IdempotencyKeyReused(TaskFlowError):
    """this `Idempotency-Key` was used for a different request"""

    status_code, code = 422, "idempotency_key_reused"


class ValidationFailed(TaskFlowError):
    """malformed input; `detail` lists the field errors"""

    status_code, code = 422, "validation_error"


class RateLimited(TaskFlowError):
    """over your rate limit; with `Retry-After` and the `RateLimit` headers"""

    status_code, code = 429, "rate_limited"


class HeadersTooLarge(TaskFlowError):
    """the request's headers add up to more than 32 KiB"""

    status_code, code = 431, "headers_too_large"


class InternalError(TaskFlowError):
    """a bug: the body carries the `request_id`, the log has the traceback"""

    status_code, code = 500, "internal_error"


class ServiceUnavailable(TaskFlowError):
    """the database is unreachable or overloaded (no free connection within `DB_POOL_TIMEOUT`, a lock or statement timeout), the signing keys cannot be fetched, or the server is shutting down; with `Retry-After`"""

    status_code, code = 503, "service_unavailable"
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}


# The direct subclasses, in the order they are defined above: a new code is a new class here.
ERRORS: tuple[type[TaskFlowError], ...] = tuple(TaskFlowError.__subclasses__())
# Every code a client can meet, and what it means, for the OpenAPI description and the README.
ERROR_CODES: dict[str, str] = {error.code: f"{error.status_code}: {error.__doc__}" for error in ERRORS}


def error_table() -> str:
    """The README's table of error codes, as Markdown."""
    rows = [f"| `{error.code}` | {error.status_code} | {error.__doc__} |" for error in ERRORS]
    return "\n".join(["| code | status | meaning |", "|---|---|---|", *rows])
