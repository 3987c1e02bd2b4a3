"""The `taskflow` command line: the TaskFlow REST API for people and scripts.

It talks only to the API, through `taskflow_client`. The API's URL and token come from
`--url`/`--token`, else `TASKFLOW_URL`/`TASKFLOW_TOKEN`, else what `taskflow login` stored in
the user's config file. Rich tables for people; `--json` prints the API's JSON exactly.
Exit codes: 0 success, 1 an error from the API or the network, 2 wrong usage.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast, get_args

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from taskflow_client import (
    JSON,
    ApiError,
    Artifact,
    ClearableTaskField,
    ClientError,
    ConfigurationError,
    EventType,
    Page,
    ProjectRole,
    Reply,
    TaskFlowClient,
    TaskPriority,
    TaskSort,
    TaskStatus,
    WorkerType,
    normalize_url,
)


class Clearable(enum.StrEnum):
    """What `edit --clear` empties, named like `edit`'s own options."""

    description = "description"
    assign = "assign"
    project = "project"
    parent = "parent"
    due = "due"
    label = "label"


# Labels are a set, never null: `--clear label` sends the empty set instead.
CLEARED: dict[Clearable, ClearableTaskField] = {
    Clearable.description: "description",
    Clearable.assign: "assigned_to",
    Clearable.project: "project",
    Clearable.parent: "parent_id",
    Clearable.due: "due_date",
}

HELP = """Work the TaskFlow board from a terminal or a script.

Configure with --url/--token, TASKFLOW_URL/TASKFLOW_TOKEN, or `taskflow login`.
Global options go before the command: `taskflow --json list --ready`."""

app = typer.Typer(
    name="taskflow",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
deps_app = typer.Typer(help="A task's dependencies: the tasks that must be completed before it can start.")
projects_app = typer.Typer(help="Projects: list, show, create, edit, delete.")
members_app = typer.Typer(help="A project's members: list, add, rm, role.")
workers_app = typer.Typer(help="The worker directory, humans and agents: list, show, register, edit.")
for sub_app, sub_name in [
    (deps_app, "deps"),
    (projects_app, "projects"),
    (members_app, "members"),
    (workers_app, "workers"),
]:
    app.add_typer(sub_app, name=sub_name, no_args_is_help=True)

USAGE_ERROR = 2
API_ERROR = 1


# ---------------------------------------------------------------- configuration


@dataclass
class Options:
    url: str | None
    token: str | None
    json_output: bool


@dataclass
class StoredLogin:
    url: str | None = None
    token: str | None = None


def config_path() -> Path:
    """The user's config file: `$XDG_CONFIG_HOME/taskflow/config.json`, else `~/.config/taskflow/config.json`."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "taskflow" / "config.json"


def load_login() -> StoredLogin:
    path = config_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return StoredLogin()
    except (OSError, ValueError) as exc:
        fail(f"Cannot read the stored login in {path}: {exc}. Run `taskflow login` again.", USAGE_ERROR)
    if not isinstance(data, dict):
        fail(f"{path} is not a TaskFlow login file. Run `taskflow login` again.", USAGE_ERROR)
    url, token = data.get("url"), data.get("token")
    return StoredLogin(url if isinstance(url, str) else None, token if isinstance(token, str) else None)


def save_login(url: str, token: str) -> Path:
    """Write the login readable by its owner only (0600, in a 0700 directory), atomically."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump({"url": url, "token": token}, file, indent=2)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def resolve(options: Options) -> tuple[str, str]:
    """Flags and environment first, then the stored login. The stored token goes only to the stored URL."""
    stored = load_login() if not (options.url and options.token) else StoredLogin()
    url = options.url or stored.url
    if not url:
        fail(
            "No TaskFlow URL: pass --url, set TASKFLOW_URL, or run `taskflow login --url URL --token TOKEN`.",
            USAGE_ERROR,
        )
    token = options.token or (stored.token if stored.url and stored.url.rstrip("/") == url.rstrip("/") else None)
    if not token:
        fail(f"No token for {url}: pass --token, set TASKFLOW_TOKEN, or run `taskflow login`.", USAGE_ERROR)
    return url, token


# ---------------------------------------------------------------- output and errors


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def fail(message: str, exit_code: int) -> NoReturn:
    stderr().print(Text(f"Error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(exit_code)


@contextmanager
def api(ctx: typer.Context) -> Iterator[TaskFlowClient]:
    """A client for this invocation; an API error exits 1 with the API's own message, bad config exits 2."""
    options = options_of(ctx)
    url, token = resolve(options)
    try:
        with TaskFlowClient(url, token, user_agent="taskflow-cli") as client:
            yield client
    except ApiError as exc:
        if options.json_output and exc.text:
            sys.stderr.write(exc.text.rstrip("\n") + "\n")
            raise typer.Exit(API_ERROR) from None
        fail(f"{exc.message} ({exc.status_code} {exc.code})", API_ERROR)
    except ConfigurationError as exc:
        fail(exc.message, USAGE_ERROR)
    except ClientError as exc:
        fail(exc.message, API_ERROR)


def options_of(ctx: typer.Context) -> Options:
    options = ctx.find_root().obj
    assert isinstance(options, Options)
    return options


def show(ctx: typer.Context, reply: Reply, render: Callable[[Console, JSON], None]) -> None:
    """`--json`: the API's body exactly (`null` for an empty answer); else the human rendering."""
    if options_of(ctx).json_output:
        sys.stdout.write((reply.text or "null").rstrip("\n") + "\n")
    else:
        render(stdout(), reply.data)


def show_page(ctx: typer.Context, page: Page, render: Callable[[Console, JSON, int | None], None]) -> None:
    """`--json`: the API's array exactly; else the human rendering of the page and its total."""
    if options_of(ctx).json_output:
        sys.stdout.write(page.text.rstrip("\n") + "\n")
    else:
        render(stdout(), page.items, page.total)


def records(columns: list[str], empty: str) -> Callable[[Console, JSON, int | None], None]:
    """Render a page of plain records as a table (their total is not shown)."""
    render = render_records(columns, empty)
    return lambda console, items, _total: render(console, items)


def cell(value: Any) -> Text:
    # Text, never markup: a title like "[red]x" is shown as typed.
    return Text("" if value is None else str(value))


def when(value: str | None, seconds: bool = False) -> str:
    if not value:
        return ""
    return value[: 19 if seconds else 16].replace("T", " ")


def task_line(task: JSON) -> Text:
    line = f"Task {task['id']} “{task['title']}”: {task['status']}, {task['progress_percent']}%"
    if task.get("assigned_to"):
        line += f", assigned to {task['assigned_to']}"
    if task.get("lease_expires_at"):
        line += f", lease until {when(task['lease_expires_at'], seconds=True)}"
    return Text(line)


def render_task_line(console: Console, task: JSON) -> None:
    console.print(task_line(task), soft_wrap=True)


def render_task(console: Console, task: JSON) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, key in [
        ("id", "id"),
        ("title", "title"),
        ("status", "status"),
        ("priority", "priority"),
        ("progress", "progress_percent"),
        ("assigned to", "assigned_to"),
        ("project", "project_slug"),
        ("parent", "parent_id"),
        ("due", "due_date"),
        ("lease until", "lease_expires_at"),
        ("labels", "labels"),
        ("version", "version"),
        ("created by", "created_by"),
        ("created", "created_at"),
        ("updated", "updated_at"),
    ]:
        if key not in task:
            continue
        value = task[key]
        if key.endswith(("_at", "_date")):
            value = when(value, seconds=True)
        elif key == "labels":
            value = ", ".join(value or [])
        elif key == "progress_percent":
            value = f"{value}%"
        table.add_row(label, cell(value))
    if task.get("description"):
        table.add_row("description", cell(task["description"]))
    result = task.get("result") or {}
    if result.get("summary"):
        table.add_row("summary", cell(result["summary"]))
    for artifact in result.get("artifacts") or []:
        table.add_row("artifact", cell(f"{artifact['name']}: {artifact['url']}"))
    console.print(table)


def task_table(title: str | None = None) -> Table:
    table = Table(title=title)
    for name in ["id", "status", "priority", "title", "assignee", "project", "due", "%"]:
        table.add_column(name, justify="right" if name in {"id", "%"} else "left")
    return table


def add_task_row(table: Table, task: JSON) -> None:
    table.add_row(
        cell(task["id"]),
        cell(task["status"]),
        cell(task["priority"]),
        cell(task["title"]),
        cell(task.get("assigned_to")),
        cell(task.get("project_slug")),
        cell(when(task.get("due_date"))),
        cell(task.get("progress_percent")),
    )


def render_tasks(console: Console, tasks: JSON, total: int | None = None) -> None:
    if not tasks:
        console.print("No tasks.")
        return
    table = task_table()
    for task in tasks:
        add_task_row(table, task)
    console.print(table)
    if total is not None and total > len(tasks):
        console.print(f"{len(tasks)} of {total} shown; use --limit and --offset for more.")


def change(key: str, value: Any) -> str:
    """One entry of an audit row's context: `{"field": [old, new]}`, or a note or reason."""

    def shown(item: Any) -> str:
        if item is None:
            return "none"
        text = str(item)
        return when(text, seconds=True) if key.endswith(("_at", "_date")) else text

    if isinstance(value, list) and len(value) == 2:
        old, new = value
        return f"{key}: {shown(new)}" if old is None else f"{key}: {shown(old)} → {shown(new)}"
    return f"{key}: {shown(value)}"


def render_audit(console: Console, rows: JSON, total: int | None = None) -> None:
    if not rows:
        console.print("No history.")
        return
    table = Table()
    for name in ["when", "actor", "type", "action", "changes"]:
        table.add_column(name)
    for row in rows:
        changes = "; ".join(change(key, value) for key, value in (row.get("context") or {}).items())
        actor = row["actor_id"] + (f" (for {row['owner_id']})" if row.get("owner_id") else "")
        table.add_row(
            cell(when(row.get("timestamp"), seconds=True)),
            cell(actor),
            cell(row["actor_type"]),
            cell(row["action"]),
            cell(changes),
        )
    console.print(table)
    if total is not None and total > len(rows):
        console.print(f"{len(rows)} of {total} shown; use --limit and --offset for more.")


def render_record(console: Console, record: JSON) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in record.items():
        table.add_row(key.replace("_", " "), cell(when(value, seconds=True) if key.endswith("_at") else value))
    console.print(table)


def render_records(columns: list[str], empty: str) -> Callable[[Console, JSON], None]:
    def render(console: Console, records: JSON) -> None:
        if not records:
            console.print(empty)
            return
        table = Table()
        for column in columns:
            table.add_column(column.replace("_", " "))
        for record in records:
            table.add_row(*(cell(when(record.get(c)) if c.endswith("_at") else record.get(c)) for c in columns))
        console.print(table)

    return render


def say(message: str) -> Callable[[Console, JSON], None]:
    def render(console: Console, _data: JSON) -> None:
        console.print(Text(message), soft_wrap=True)

    return render


# ---------------------------------------------------------------- global options and login


@app.callback()
def global_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", envvar="TASKFLOW_URL", help="The API's base URL, e.g. http://127.0.0.1:8000.", show_default=False
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="TASKFLOW_TOKEN", help="A bearer token (JWT) for the API.", show_default=False),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the API's JSON exactly, for scripts.")] = False,
) -> None:
    ctx.obj = Options(url=url, token=token, json_output=json_output)


@app.command()
def login(
    url: Annotated[str, typer.Option("--url", prompt="TaskFlow URL", help="The API's base URL.")],
    token: Annotated[str, typer.Option("--token", prompt="Token", hide_input=True, help="Your bearer token.")],
) -> None:
    """Store a URL and token in your config file (readable only by you) for later commands."""
    try:
        url = normalize_url(url)
    except ConfigurationError as exc:
        fail(exc.message, USAGE_ERROR)
    if not token.strip():
        fail("The token is empty.", USAGE_ERROR)
    path = save_login(url, token.strip())
    stdout().print(Text(f"Saved the login for {url} in {path}"), soft_wrap=True)


@app.command()
def logout() -> None:
    """Forget the stored login."""
    path = config_path()
    path.unlink(missing_ok=True)
    stdout().print(Text(f"Removed {path}"), soft_wrap=True)


# ---------------------------------------------------------------- tasks


def label_option(help_text: str) -> Any:
    return typer.Option("--label", "-l", help=f"{help_text} Repeatable.", show_default=False)


@app.command("list")
def list_tasks(
    ctx: typer.Context,
    status: Annotated[TaskStatus | None, typer.Option(help="Only tasks with this status.")] = None,
    priority: Annotated[TaskPriority | None, typer.Option(help="Only tasks with this priority.")] = None,
    assigned_to: Annotated[
        str | None, typer.Option("--assigned-to", "--assignee", help="Only tasks assigned to this worker id.")
    ] = None,
    project: Annotated[str | None, typer.Option(help="Only tasks in this project (slug).")] = None,
    parent: Annotated[int | None, typer.Option(help="Only subtasks of this task id.", min=1)] = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="Title contains this (any case).")] = None,
    ready: Annotated[bool, typer.Option("--ready", help="Only tasks you could claim now.")] = False,
    label: Annotated[list[str] | None, label_option("Only tasks carrying this label (all of those given).")] = None,
    sort: Annotated[
        TaskSort, typer.Option(help="Sort key; a leading '-' sorts descending (use --sort=-priority).")
    ] = "created_at",
    limit: Annotated[int, typer.Option(min=1, max=100, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Tasks to skip.")] = 0,
) -> None:
    """List the tasks you can see."""
    with api(ctx) as client:
        page = client.list_tasks(
            status=status,
            priority=priority,
            assigned_to=assigned_to,
            project=project,
            parent_id=parent,
            search=search,
            ready=ready,
            label=label,
            sort=sort,
            limit=limit,
            offset=offset,
        )
    show_page(ctx, page, render_tasks)


@app.command("show")
def show_task(ctx: typer.Context, task_id: Annotated[int, typer.Argument(min=1, metavar="ID")]) -> None:
    """Show one task."""
    with api(ctx) as client:
        reply = client.get_task(task_id)
    show(ctx, reply, render_task)


@app.command()
def add(
    ctx: typer.Context,
    title: Annotated[str, typer.Argument(help="What is to be done.")],
    project: Annotated[str | None, typer.Option("--project", "-p", help="The project's slug.")] = None,
    priority: Annotated[TaskPriority | None, typer.Option(help="low, medium (the default), high or critical.")] = None,
    parent: Annotated[int | None, typer.Option(min=1, help="Make it a subtask of this task id.")] = None,
    assign: Annotated[str | None, typer.Option(help="Assign it to this worker id.")] = None,
    due: Annotated[str | None, typer.Option(help="Due date, ISO 8601: 2026-12-01 or 2026-12-01T17:00:00Z.")] = None,
    description: Annotated[str | None, typer.Option("--description", "-d", help="Details.")] = None,
    label: Annotated[list[str] | None, label_option("A label, for routing work (e.g. python, gpu).")] = None,
) -> None:
    """Create a task; it starts pending."""
    with api(ctx) as client:
        reply = client.create_task(
            title,
            description=description,
            priority=priority,
            project=project,
            assigned_to=assign,
            parent_id=parent,
            due_date=due,
            labels=label,
        )
    show(ctx, reply, render_task_line)


@app.command()
def edit(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(min=1, metavar="ID")],
    title: Annotated[str | None, typer.Option(help="A new title.")] = None,
    description: Annotated[str | None, typer.Option("--description", "-d", help="New details.")] = None,
    priority: Annotated[TaskPriority | None, typer.Option(help="A new priority.")] = None,
    status: Annotated[TaskStatus | None, typer.Option(help="A new status, by the workflow's rules.")] = None,
    assign: Annotated[str | None, typer.Option(help="Assign it to this worker id.")] = None,
    project: Annotated[str | None, typer.Option("--project", "-p", help="Move it to this project.")] = None,
    parent: Annotated[int | None, typer.Option(min=1, help="Make it a subtask of this task id.")] = None,
    due: Annotated[str | None, typer.Option(help="A new due date, ISO 8601.")] = None,
    label: Annotated[list[str] | None, label_option("The task's labels, replacing all it has.")] = None,
    clear: Annotated[
        list[Clearable] | None,
        typer.Option(help="Empty a field: description, assign, project, parent, due or label. Repeatable."),
    ] = None,
    if_version: Annotated[
        int | None, typer.Option("--if-version", min=1, help="Change it only if it is still at this version.")
    ] = None,
) -> None:
    """Change a task's fields: only those given change."""
    cleared = clear or []
    # By option name, as --clear names them.
    given: dict[str, object] = {
        "title": title,
        "description": description,
        "priority": priority,
        "status": status,
        "assign": assign,
        "project": project,
        "parent": parent,
        "due": due,
        "label": label,
    }
    for name in cleared:
        if given[name] is not None:
            fail(f"--{name} and --clear {name} contradict each other.", USAGE_ERROR)
    if not cleared and all(value is None for value in given.values()):
        fail("Nothing to change: give at least one option, e.g. --title or --clear due.", USAGE_ERROR)
    with api(ctx) as client:
        reply = client.update_task(
            task_id,
            title=title,
            description=description,
            priority=priority,
            status=status,
            assigned_to=assign,
            project=project,
            parent_id=parent,
            due_date=due,
            labels=[] if Clearable.label in cleared else label,
            clear=[CLEARED[name] for name in cleared if name in CLEARED],
            if_version=if_version,
        )
    show(ctx, reply, render_task_line)


@app.command()
def delete(ctx: typer.Context, task_id: Annotated[int, typer.Argument(min=1, metavar="ID")]) -> None:
    """Delete a task without subtasks (its creator, a project owner or an admin)."""
    with api(ctx) as client:
        reply = client.delete_task(task_id)
    show(ctx, reply, say(f"Deleted task {task_id}."))


@app.command()
def history(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(min=1, metavar="ID")],
    limit: Annotated[int, typer.Option(min=1, max=100, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Rows to skip.")] = 0,
) -> None:
    """A task's audit trail, oldest first: who did what, human or agent."""
    with api(ctx) as client:
        page = client.task_history(task_id, limit=limit, offset=offset)
    show_page(ctx, page, render_audit)


# ---------------------------------------------------------------- the workflow

LeaseOption = Annotated[
    int | None,
    typer.Option(
        "--lease", min=1, help="Seconds the claim lasts unless renewed (default: the server's LEASE_SECONDS)."
    ),
]
TaskIdArgument = Annotated[int, typer.Argument(min=1, metavar="ID", help="The task's id.")]


@app.command()
def start(ctx: typer.Context, task_id: TaskIdArgument, lease: LeaseOption = None) -> None:
    """Start a pending task (unassigned or yours): it becomes yours and in progress."""
    with api(ctx) as client:
        reply = client.start_task(task_id, lease_seconds=lease)
    show(ctx, reply, render_task_line)


@app.command()
def claim(
    ctx: typer.Context,
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only from this project.")] = None,
    lease: LeaseOption = None,
    min_priority: Annotated[TaskPriority | None, typer.Option(help="Only tasks of at least this priority.")] = None,
    label: Annotated[
        list[str] | None,
        label_option("Only a task carrying this label (all of those given): work you are equipped for."),
    ] = None,
    wait: Annotated[
        int,
        typer.Option(
            "--wait", "-w", min=0, max=60, metavar="SECONDS", help="If nothing is ready, wait this long for a task."
        ),
    ] = 0,
) -> None:
    """Claim the best ready task (highest priority, soonest due, oldest) and start it; --wait instead of polling."""
    with api(ctx) as client:
        reply = client.claim_next(
            project=project, min_priority=min_priority, lease_seconds=lease, labels=label, wait_seconds=wait or None
        )

    def render(console: Console, task: JSON) -> None:
        console.print(task_line(task) if task is not None else Text("Nothing is ready to claim."), soft_wrap=True)

    show(ctx, reply, render)


@app.command()
def heartbeat(ctx: typer.Context, task_id: TaskIdArgument, lease: LeaseOption = None) -> None:
    """Renew your lease on a task you are working on."""
    with api(ctx) as client:
        reply = client.heartbeat(task_id, lease_seconds=lease)
    show(ctx, reply, render_task_line)


@app.command()
def progress(
    ctx: typer.Context,
    task_id: TaskIdArgument,
    percent: Annotated[int, typer.Argument(min=0, max=100, help="0 to 100.")],
    note: Annotated[str | None, typer.Option("--note", "-n", help="What was done.")] = None,
) -> None:
    """Report progress on your task in progress (also renews its lease)."""
    with api(ctx) as client:
        reply = client.update_progress(task_id, percent, note)
    show(ctx, reply, render_task_line)


@app.command()
def review(ctx: typer.Context, task_id: TaskIdArgument) -> None:
    """Hand your task in progress over for review."""
    with api(ctx) as client:
        reply = client.submit_for_review(task_id)
    show(ctx, reply, render_task_line)


def artifact_of(value: str) -> Artifact:
    """`NAME=URL` as an artifact; the name ends at the first '=', since a URL may hold more."""
    name, equals, url = value.partition("=")
    if not equals or not name.strip() or not url.strip():
        fail(f"--artifact takes NAME=URL, e.g. --artifact 'Pull request=https://…'; got {value!r}.", USAGE_ERROR)
    return {"name": name.strip(), "url": url.strip()}


@app.command()
def done(
    ctx: typer.Context,
    task_id: TaskIdArgument,
    summary: Annotated[
        str | None, typer.Option("--summary", "-s", help="What was delivered (kept as the task's result).")
    ] = None,
    artifact: Annotated[
        list[str] | None,
        typer.Option("--artifact", "-a", metavar="NAME=URL", help="A deliverable and its http(s) link. Repeatable."),
    ] = None,
) -> None:
    """Complete a task in progress or in review (its assignee or a project owner), with what it delivered."""
    artifacts = [artifact_of(value) for value in artifact] if artifact else None
    with api(ctx) as client:
        reply = client.complete_task(task_id, summary=summary, artifacts=artifacts)
    show(ctx, reply, render_task_line)


@app.command()
def block(
    ctx: typer.Context,
    task_id: TaskIdArgument,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why it cannot go on.")],
) -> None:
    """Mark a task blocked, with a reason."""
    with api(ctx) as client:
        reply = client.block_task(task_id, reason)
    show(ctx, reply, render_task_line)


@app.command()
def unblock(ctx: typer.Context, task_id: TaskIdArgument) -> None:
    """Unblock a task: back to in progress if assigned, else pending."""
    with api(ctx) as client:
        reply = client.unblock_task(task_id)
    show(ctx, reply, render_task_line)


@app.command()
def release(ctx: typer.Context, task_id: TaskIdArgument) -> None:
    """Hand your task in progress back: pending and unassigned, for someone else to claim."""
    with api(ctx) as client:
        reply = client.release_task(task_id)
    show(ctx, reply, render_task_line)


# ---------------------------------------------------------------- dependencies


@deps_app.command("list")
def list_dependencies(ctx: typer.Context, task_id: TaskIdArgument) -> None:
    """The tasks this task depends on."""
    with api(ctx) as client:
        reply = client.list_dependencies(task_id)
    show(ctx, reply, render_tasks)


@deps_app.command("add")
def add_dependency(
    ctx: typer.Context,
    task_id: TaskIdArgument,
    depends_on: Annotated[
        int, typer.Argument(min=1, metavar="DEPENDS_ON", help="The task that must be completed first.")
    ],
) -> None:
    """Make a task wait for another (same project; no cycles)."""
    with api(ctx) as client:
        reply = client.add_dependency(task_id, depends_on)
    show(ctx, reply, say(f"Task {task_id} now depends on task {depends_on}."))


@deps_app.command("rm")
def remove_dependency(
    ctx: typer.Context,
    task_id: TaskIdArgument,
    depends_on: Annotated[int, typer.Argument(min=1, metavar="DEPENDS_ON", help="The task it no longer waits for.")],
) -> None:
    """Remove a dependency."""
    with api(ctx) as client:
        reply = client.remove_dependency(task_id, depends_on)
    show(ctx, reply, say(f"Task {task_id} no longer depends on task {depends_on}."))


# ---------------------------------------------------------------- comments


def comment_heading(comment: JSON) -> Text:
    line = f"#{comment['id']} {comment['author_id']}, {when(comment['created_at'])}"
    if comment.get("edited"):
        line += f" (edited {when(comment['updated_at'])})"
    if comment.get("mentions"):
        line += f", mentions {', '.join(comment['mentions'])}"
    return Text(line, style="bold")


def render_comments(console: Console, comments: JSON, total: int | None = None) -> None:
    if not comments:
        console.print("No comments.")
        return
    for number, comment in enumerate(comments):
        if number:
            console.print()
        console.print(comment_heading(comment), soft_wrap=True)
        # As written: Markdown stays plain text, and "[red]" is not markup.
        console.print(Text(comment["body"]), soft_wrap=True)
    if total is not None and total > len(comments):
        console.print(f"{len(comments)} of {total} shown; use --limit and --offset for more.")


@app.command("comment")
def add_comment(
    ctx: typer.Context,
    task_id: TaskIdArgument,
    text: Annotated[
        str,
        typer.Argument(metavar="TEXT", help="The comment (Markdown); '-' reads it from stdin. @worker-id mentions."),
    ],
) -> None:
    """Comment on a task; `@worker-id` mentions a worker who can see it (and wakes an agent waiting for it)."""
    body = sys.stdin.read() if text == "-" else text
    with api(ctx) as client:
        reply = client.add_comment(task_id, body)

    def render(console: Console, comment: JSON) -> None:
        line = f"Comment {comment['id']} added to task {comment['task_id']}"
        if comment.get("mentions"):
            line += f", mentioning {', '.join(comment['mentions'])}"
        console.print(Text(line + "."), soft_wrap=True)

    show(ctx, reply, render)


@app.command("comments")
def list_comments(
    ctx: typer.Context,
    task_id: TaskIdArgument,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Comments to skip.")] = 0,
) -> None:
    """A task's comments, oldest first."""
    with api(ctx) as client:
        page = client.list_comments(task_id, limit=limit, offset=offset)
    show_page(ctx, page, render_comments)


# ---------------------------------------------------------------- the event feed

EVENT_SUMMARY_WIDTH = 120


def shorten(text: str, width: int = EVENT_SUMMARY_WIDTH) -> str:
    """The first line of `text`, cut to `width` characters; "…" says something was left out."""
    lines = text.strip().splitlines() or [""]
    if len(lines) == 1 and len(lines[0]) <= width:
        return lines[0]
    return lines[0][: width - 1].rstrip() + "…"


def event_line(event: JSON) -> Text:
    """One event for people: when, who (human or agent), what, on which task, and what changed or was said."""
    actor = f"{event['actor_id']} ({event['actor_type']}"
    actor += f" for {event['owner_id']})" if event.get("owner_id") else ")"
    parts = [when(event["at"], seconds=True), actor, event["type"]]
    if event.get("task_id") is not None:
        parts.append(f"task {event['task_id']}")
    if event.get("project_slug"):
        parts.append(f"[{event['project_slug']}]")
    comment = event.get("comment")
    if comment is not None:
        said = "(deleted)" if comment.get("body") is None else f"“{shorten(comment['body'])}”"
        if comment.get("mentions"):
            said += f", mentions {', '.join(comment['mentions'])}"
        parts.append(said)
    elif event.get("changes"):
        parts.append(shorten("; ".join(change(key, value) for key, value in event["changes"].items())))
    return Text("  ".join(parts))


def print_event(json_output: bool, event: JSON) -> None:
    """One event on one line, written at once (a pipe would otherwise hold it back)."""
    if json_output:
        sys.stdout.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    else:
        stdout().print(event_line(event), soft_wrap=True)


# Typer takes a list of enum members, not of a Literal's words: the same words, as an enum.
EventTypeChoice = enum.StrEnum("EventTypeChoice", {word: word for word in get_args(EventType)})  # type: ignore[misc]
EventTypeOption = Annotated[
    list[EventTypeChoice] | None,
    typer.Option("--type", "-t", help="Only events of this type (an audit action, e.g. task.created). Repeatable."),
]


def event_types(choices: list[EventTypeChoice] | None) -> list[EventType] | None:
    return None if choices is None else [cast(EventType, choice.value) for choice in choices]


FeedProjectOption = Annotated[str | None, typer.Option("--project", "-p", help="Only this project's events.")]
FeedTaskOption = Annotated[int | None, typer.Option("--task", min=1, metavar="ID", help="Only this task's events.")]
MentioningOption = Annotated[
    str | None, typer.Option("--mentioning", metavar="WORKER", help="Only comments that mention this worker id.")
]


@app.command()
def events(
    ctx: typer.Context,
    after: Annotated[
        int | None,
        typer.Option(min=0, metavar="ID", help="After this event id (the last next_after); 0: from the start."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many events.")] = 100,
    project: FeedProjectOption = None,
    task: FeedTaskOption = None,
    type: EventTypeOption = None,
    mentioning: MentioningOption = None,
    wait: Annotated[
        int,
        typer.Option("--wait", "-w", min=0, max=60, metavar="SECONDS", help="If there is none yet, wait this long."),
    ] = 0,
) -> None:
    """One page of the event feed, oldest first, and the next_after to read on from (without --after: from now)."""
    with api(ctx) as client:
        reply = client.events(
            after=after,
            limit=limit,
            project=project,
            task_id=task,
            type=event_types(type),
            mentioning=mentioning,
            wait_seconds=wait or None,
        )

    def render(console: Console, page: JSON) -> None:
        if not page["events"]:
            console.print("No events.")
        for event in page["events"]:
            console.print(event_line(event), soft_wrap=True)
        console.print(f"next_after: {page['next_after']} (pass it as --after to read on)")

    show(ctx, reply, render)


@app.command()
def watch(
    ctx: typer.Context,
    project: FeedProjectOption = None,
    task: FeedTaskOption = None,
    type: EventTypeOption = None,
    mentioning: MentioningOption = None,
    after: Annotated[
        int | None,
        typer.Option(min=0, metavar="ID", help="Start after this event id (0: from the start); default: from now."),
    ] = None,
) -> None:
    """Follow the board live: print each event as it happens, until Ctrl-C (reconnects by itself)."""
    json_output = options_of(ctx).json_output
    try:
        with api(ctx) as client:
            for event in client.stream_events(
                after=after, project=project, task_id=task, type=event_types(type), mentioning=mentioning
            ):
                print_event(json_output, event)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


# ---------------------------------------------------------------- projects and members

SlugArgument = Annotated[str, typer.Argument(metavar="SLUG", help="The project's slug.")]
PROJECT_COLUMNS = ["slug", "name", "description", "created_by", "created_at"]


@projects_app.command("list")
def list_projects(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Projects to skip.")] = 0,
) -> None:
    """The projects you are a member of."""
    with api(ctx) as client:
        page = client.list_projects(limit=limit, offset=offset)
    show_page(ctx, page, records(PROJECT_COLUMNS, "No projects."))


@projects_app.command("show")
def show_project(ctx: typer.Context, slug: SlugArgument) -> None:
    """Show one project."""
    with api(ctx) as client:
        reply = client.get_project(slug)
    show(ctx, reply, render_record)


@projects_app.command("create")
def create_project(
    ctx: typer.Context,
    slug: SlugArgument,
    name: Annotated[str, typer.Argument(help="Its display name.")],
    description: Annotated[str | None, typer.Option("--description", "-d", help="What it is for.")] = None,
) -> None:
    """Create a project; you become its owner."""
    with api(ctx) as client:
        reply = client.create_project(slug, name, description=description)
    show(ctx, reply, say(f"Created project {slug}."))


@projects_app.command("edit")
def edit_project(
    ctx: typer.Context,
    slug: SlugArgument,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    description: Annotated[str | None, typer.Option("--description", "-d", help="A new description.")] = None,
    clear_description: Annotated[bool, typer.Option("--clear-description", help="Empty the description.")] = False,
) -> None:
    """Rename or describe a project (an owner)."""
    if name is None and description is None and not clear_description:
        fail("Nothing to change: give --name, --description or --clear-description.", USAGE_ERROR)
    with api(ctx) as client:
        reply = client.update_project(slug, name=name, description=description, clear_description=clear_description)
    show(ctx, reply, say(f"Updated project {slug}."))


@projects_app.command("delete")
def delete_project(ctx: typer.Context, slug: SlugArgument) -> None:
    """Delete a project that has no tasks (an owner)."""
    with api(ctx) as client:
        reply = client.delete_project(slug)
    show(ctx, reply, say(f"Deleted project {slug}."))


WorkerArgument = Annotated[str, typer.Argument(metavar="WORKER", help="The worker's id.")]


@members_app.command("list")
def list_members(
    ctx: typer.Context,
    slug: SlugArgument,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Members to skip.")] = 0,
) -> None:
    """A project's members and their roles."""
    with api(ctx) as client:
        page = client.list_members(slug, limit=limit, offset=offset)
    show_page(ctx, page, records(["worker_id", "role", "added_at"], "No members."))


@members_app.command("add")
def add_member(
    ctx: typer.Context,
    slug: SlugArgument,
    worker: WorkerArgument,
    role: Annotated[ProjectRole | None, typer.Option(help="member (the default) or owner.")] = None,
) -> None:
    """Add a registered worker to a project (an owner)."""
    with api(ctx) as client:
        reply = client.add_member(slug, worker, role=role)
    show(ctx, reply, say(f"Added {worker} to {slug} as {role or 'member'}."))


@members_app.command("rm")
def remove_member(ctx: typer.Context, slug: SlugArgument, worker: WorkerArgument) -> None:
    """Remove a member (an owner), or leave (yourself)."""
    with api(ctx) as client:
        reply = client.remove_member(slug, worker)
    show(ctx, reply, say(f"Removed {worker} from {slug}."))


@members_app.command("role")
def change_role(
    ctx: typer.Context,
    slug: SlugArgument,
    worker: WorkerArgument,
    role: Annotated[ProjectRole, typer.Argument(metavar="ROLE", help="owner or member.")],
) -> None:
    """Change a member's role (an owner)."""
    with api(ctx) as client:
        reply = client.update_member(slug, worker, role)
    show(ctx, reply, say(f"{worker} is now {role} of {slug}."))


# ---------------------------------------------------------------- workers

WORKER_COLUMNS = ["id", "type", "name", "owner_id", "created_at"]


@workers_app.command("list")
def list_workers(
    ctx: typer.Context,
    type: Annotated[WorkerType | None, typer.Option("--type", help="Only humans or only agents.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Workers to skip.")] = 0,
) -> None:
    """Registered workers, humans and agents."""
    with api(ctx) as client:
        page = client.list_workers(type=type, limit=limit, offset=offset)
    show_page(ctx, page, records(WORKER_COLUMNS, "No workers."))


@workers_app.command("show")
def show_worker(ctx: typer.Context, worker: WorkerArgument) -> None:
    """Show one worker."""
    with api(ctx) as client:
        reply = client.get_worker(worker)
    show(ctx, reply, render_record)


@workers_app.command("register")
def register_worker(
    ctx: typer.Context,
    worker: WorkerArgument,
    type: Annotated[WorkerType, typer.Option("--type", help="human or agent.")] = "human",
    name: Annotated[str | None, typer.Option(help="Display name (default: the id).")] = None,
    owner: Annotated[str | None, typer.Option(help="For an agent: the human accountable for it.")] = None,
) -> None:
    """Register a worker: yourself, or (an admin) any id, such as an agent's."""
    with api(ctx) as client:
        # An empty --name or --owner counts as not given: named after the id, with no owner.
        reply = client.register_worker(worker, type=type, name=name or None, owner_id=owner or None)
    show(ctx, reply, say(f"Registered {type} {worker}."))


@workers_app.command("edit")
def edit_worker(
    ctx: typer.Context,
    worker: WorkerArgument,
    name: Annotated[str | None, typer.Option(help="A new display name.")] = None,
    type: Annotated[WorkerType | None, typer.Option("--type", help="human or agent (an admin).")] = None,
    owner: Annotated[str | None, typer.Option(help="For an agent: the human accountable for it.")] = None,
) -> None:
    """Rename yourself; an admin may change any worker, its type and its owner."""
    if name is None and type is None and owner is None:
        fail("Nothing to change: give --name, --type or --owner.", USAGE_ERROR)
    with api(ctx) as client:
        reply = client.update_worker(worker, name=name, type=type, owner_id=owner)
    show(ctx, reply, say(f"Updated {worker}."))


def main() -> None:
    """The `taskflow` console script."""
    app(prog_name="taskflow")


if __name__ == "__main__":
    main()
