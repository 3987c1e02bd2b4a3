"""Comments on tasks, where humans and agents talk, and the `@worker-id` mentions in them.

Plain functions `verb_noun(session, actor, ...)` like those of `services`, whose task lookup and
paging they use: whoever can see a task reads and posts its comments, and a comment is changed
or deleted by its author or an admin. Mentions are worked out when a comment is written and
stored with it, so that a reader of the audit log (the event feed) finds them in every row.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from sqlalchemy import Integer, String, bindparam
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

import audit
from access import Actor, require_author, visible_task_to
from errors import NotFound
from models import (
    TASK_TABLE,
    WORKER_ID_PATTERN,
    AuditAction,
    Comment,
    CommentCreate,
    CommentRead,
    CommentUpdate,
    Worker,
    utc_now,
)
from services import Page, get_task, paginate
from workflow import TaskRecord

# `@` and a worker id, unless the `@` follows a word character (`a@b.c` is an e-mail address) or
# another `@`.
MENTION = re.compile(r"(?<![\w@])@(" + WORKER_ID_PATTERN.removeprefix("^").removesuffix("$") + ")")
# Ids may end in these, and so may a sentence: `@bob.` mentions `bob` unless `bob.` is a worker.
TRAILING_PUNCTUATION = ".:|+-"

_WORKER = Worker.__table__  # type: ignore[attr-defined]
MAX_WORKER_ID: int = _WORKER.c.id.type.length
# The candidates that are registered workers who can see the task, by the task visibility rule.
# Worker and task side by side in one FROM (the task is one row, by its key), so that the rule's
# subqueries correlate with both.
_MENTIONABLE = sa_select(_WORKER.c.id).where(
    _WORKER.c.id.in_(bindparam("candidates", type_=String(), expanding=True)),
    TASK_TABLE.c.id == bindparam("task_id", type_=Integer()),
    visible_task_to(_WORKER.c.id),
)


def _candidates(name: str) -> list[str]:
    """The worker ids `@name` may stand for, most likely first. Agents' ids conventionally begin
    with `@`, and `@coder` is how people write the agent `@coder`."""
    trimmed = name.rstrip(TRAILING_PUNCTUATION)
    names = [name, f"@{name}"] + ([trimmed, f"@{trimmed}"] if trimmed and trimmed != name else [])
    return [candidate for candidate in names if len(candidate) <= MAX_WORKER_ID]


def find_mentions(session: Session, task_id: int, body: str) -> list[str]:
    """The workers `body` mentions who are registered and can see the task: sorted, each once."""
    names = dict.fromkeys(match.group(1) for match in MENTION.finditer(body))
    if not names:
        return []
    candidates = {name: _candidates(name) for name in names}
    every = sorted({candidate for options in candidates.values() for candidate in options})
    found = set(session.execute(_MENTIONABLE, {"candidates": every, "task_id": task_id}).scalars())
    mentioned = {next((c for c in options if c in found), None) for options in candidates.values()}
    return sorted(worker_id for worker_id in mentioned if worker_id is not None)


def _read(comment: Comment) -> CommentRead:
    return CommentRead.model_validate(comment, update={"edited": comment.updated_at != comment.created_at})


def _get_comment(session: Session, task: TaskRecord, comment_id: int) -> Comment:
    """The task's comment, locked: two edits at once must each see the body the other left."""
    query = select(Comment).where(Comment.id == comment_id, Comment.task_id == task.id).with_for_update()
    comment = session.exec(query).first()
    if comment is None:
        raise NotFound(f"Comment {comment_id} not found on task {task.id}")
    return comment


def _record(
    session: Session, actor: Actor, action: AuditAction, task: TaskRecord, comment_id: Any, diff: dict[str, Any]
) -> None:
    context = {"comment_id": comment_id, **diff}
    audit.record(session, actor, action, task_id=task.id, project_slug=task.project_slug, context=context)


def list_comments(session: Session, actor: Actor, task_id: int, limit: int, offset: int) -> Page:
    get_task(session, actor, task_id)
    page = paginate(session, select(Comment).where(Comment.task_id == task_id), limit, offset, col(Comment.id))
    return dataclasses.replace(page, rows=[_read(comment) for comment in page.rows])


def add_comment(session: Session, actor: Actor, task_id: int, data: CommentCreate) -> CommentRead:
    task = get_task(session, actor, task_id)
    mentions = find_mentions(session, task_id, data.body)
    now = utc_now()
    comment = Comment(
        task_id=task_id, author_id=actor.id, body=data.body, mentions=mentions, created_at=now, updated_at=now
    )
    session.add(comment)
    session.flush()
    _record(session, actor, AuditAction.comment_added, task, comment.id, audit.created(_content(comment)))
    return _read(comment)


def update_comment(session: Session, actor: Actor, task_id: int, comment_id: int, data: CommentUpdate) -> CommentRead:
    task = get_task(session, actor, task_id)
    comment = _get_comment(session, task, comment_id)
    require_author(actor, comment.author_id, "edit")
    before = _content(comment)
    mentions = find_mentions(session, task_id, data.body)
    after = {"body": data.body, "mentions": mentions}
    if after == before:
        return _read(comment)  # nothing changed: no audit row, and updated_at stays
    comment.body, comment.mentions, comment.updated_at = data.body, mentions, utc_now()
    session.add(comment)
    _record(session, actor, AuditAction.comment_edited, task, comment.id, audit.replaced(before, after))
    return _read(comment)


def delete_comment(session: Session, actor: Actor, task_id: int, comment_id: int) -> None:
    """Delete the comment itself; the audit row keeps what it said."""
    task = get_task(session, actor, task_id)
    comment = _get_comment(session, task, comment_id)
    require_author(actor, comment.author_id, "delete")
    content = _content(comment)
    session.delete(comment)
    _record(session, actor, AuditAction.comment_deleted, task, comment_id, audit.removed(content))


def _content(comment: Comment) -> dict[str, Any]:
    return {"body": comment.body, "mentions": list(comment.mentions)}
