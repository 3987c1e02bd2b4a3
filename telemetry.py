"""What an operator sees of TaskFlow: the logs, one line per request, Prometheus metrics and traces.

`configure_logging` sets the format of every log line (text or JSON); `RequestTelemetry` logs
and counts each request; `install` adds it, `/metrics` and, when a collector is configured,
OpenTelemetry tracing; the `count_*` functions are the business counters services call.

Metrics live in this process, or, when the environment variable PROMETHEUS_MULTIPROC_DIR names
a directory, in memory-mapped files there that `/metrics` adds up across `uvicorn --workers N`.
prometheus-client chooses between the two when it is first imported, so the variable must be set,
and its directory emptied, before the server starts (a file left by an earlier run would be added
to this run's counts). Nothing here imports a TaskFlow module but `config`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO

import anyio.to_thread
from anyio import CapacityLimiter
from anyio.lowlevel import RunVar
from anyio.to_thread import current_default_thread_limiter
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import Engine, event
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config import VERSION

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.pool import ConnectionPoolEntry

    from config import Settings

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
METRICS_PATH = "/metrics"

# ---------------------------------------------------------------- logs

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# How configure_logging recognises the handler it added before, to replace it.
HANDLER_NAME = "taskflow"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

request_logger = logging.getLogger("taskflow.request")


class Throttle:
    """Log a warning at most once per `interval` seconds for each key, with the count of those held
    back meanwhile: an outage under load would otherwise write a line per request."""

    def __init__(self, interval: float, logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self.logger = logger or logging.getLogger("taskflow")
        self._logged_at: dict[str, float] = {}
        self._held_back: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._logged_at.get(key, -math.inf) < self.interval:
                self._held_back[key] = self._held_back.get(key, 0) + 1
                return
            self._logged_at[key] = now
            held_back = self._held_back.pop(key, 0)
        if held_back:
            message += f" (and {held_back} more like it since the last such line)"
        self.logger.warning(message, *args)


# Threads for readiness checks and for scrapes, apart from the request threads (anyio's default
# limiter) and from each other, so that each answers when every request thread is busy, and a
# scrape when readiness checks hang on a database that does not answer.
PROBE_THREADS = 2
_probe_limiters: RunVar[dict[str, CapacityLimiter]] = RunVar("taskflow_probe_limiters")


def probe_limiter(kind: str) -> CapacityLimiter:
    """The event loop's limiter for `kind` of probe (call it on the loop), made on first use like anyio's own."""
    try:
        limiters = _probe_limiters.get()
    except LookupError:
        limiters = {}
        _probe_limiters.set(limiters)
    if kind not in limiters:
        limiters[kind] = CapacityLimiter(PROBE_THREADS)
    return limiters[kind]


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is when a record comes, as `logging.lastResort` does.

    A handler that kept the stream it was built with would, under pytest, keep writing to a
    test's captured stream after that test closed it.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def json_formatter() -> JsonFormatter:
    """One JSON object per line: time, level, logger, message, then any `extra` fields and `exc_info`."""
    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        # uvicorn adds a copy of its message with terminal colours to each record.
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )
    # ISO 8601 in UTC with milliseconds: 2026-12-06T01:36:00.123Z.
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def configure_logging(level: str, log_format: Literal["text", "json"]) -> None:
    """Send every log line, TaskFlow's and uvicorn's, to stderr in one format. Safe to call again."""
    handler = _StderrHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(previous)
        previous.close()
    # Other handlers on the root (pytest's capture, say) are not ours to remove.
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn gave its loggers handlers of their own before the app was imported: without them
    # their records reach the root's handler, in the same format as the rest.
    for name in UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        for previous in list(uvicorn_logger.handlers):
            uvicorn_logger.removeHandler(previous)
        uvicorn_logger.propagate = True
    # RequestTelemetry logs each request itself, with more to say than the access log.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("taskflow").setLevel(level)
    # SQL statements only at DEBUG.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO if level == "DEBUG" else logging.WARNING)


# ---------------------------------------------------------------- metrics

# 5 ms to 10 s: a read takes a few milliseconds, and a request still running after 10 s has
# met a timeout (DB_POOL_TIMEOUT, DB_LOCK_TIMEOUT) or worse.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_LABELS = ("method", "route", "status")
# A `_created` series beside every counter and histogram would double what each scrape carries;
# Prometheus does not need them, and the multiprocess mode never exports them anyway.
disable_created_metrics()  # type: ignore[no-untyped-call]

REQUESTS = Counter("taskflow_http_requests", "HTTP requests answered", REQUEST_LABELS)
REQUEST_DURATION = Histogram(
    "taskflow_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response",
    REQUEST_LABELS,
    buckets=DURATION_BUCKETS,
)
# "livesum": the sum over the processes alive now; a process's share is dropped when it shuts
# down cleanly. A worker that crashes or is killed leaves its file, and its last values count
# until the directory is emptied at the next start.
CONNECTIONS_IN_USE = Gauge(
    "taskflow_db_connections_in_use", "Database connections checked out of the pool", multiprocess_mode="livesum"
)
CONNECTIONS_WAITING = Gauge(
    "taskflow_db_connections_waiting", "Requests waiting for a database connection", multiprocess_mode="livesum"
)
# The saturation signal: requests waiting for a request thread, as counted when a request last
# arrived or left (requests wait for a thread, never for a connection: see main).
REQUESTS_WAITING = Gauge(
    "taskflow_requests_waiting", "Requests waiting for a request thread", multiprocess_mode="livesum"
)
# Long-poll claims and feed reads, and open event streams: each holds a socket, nothing more.
WAITERS = Gauge(
    "taskflow_waiters", "Requests waiting for a commit, by what they wait for", ["topic"], multiprocess_mode="livesum"
)
VERSION_INFO = Gauge(
    "taskflow_info", "The running TaskFlow's version (always 1)", ["version"], multiprocess_mode="livemax"
)

CLAIMS = Counter(
    "taskflow_claims", "Claims of the next ready task (REST or MCP), by whether a task was claimed", ["outcome"]
)
# Every /mcp call is a POST to one route: this says which tool, and whether it answered an error.
TOOL_CALLS = Counter("taskflow_mcp_tool_calls", "Tool calls at /mcp, by tool and outcome", ["tool", "outcome"])
LEASE_EXPIRIES = Counter("taskflow_lease_expiries", "Tasks handed back because their lease ran out")
RATE_LIMITED = Counter("taskflow_rate_limited", "Requests refused by a rate limit", ["kind"])
UNAVAILABLE = Counter(
    "taskflow_db_unavailable",
    "Requests answered 503 because of the database, or because too many waited for it (queue_full)",
    ["reason"],
)

# Labelled children made once, so that counting costs a dict lookup; made at import so each
# series is exported (at 0) before its first event, which is what rate() needs.
_CLAIMED = CLAIMS.labels(outcome="claimed")
_EMPTY = CLAIMS.labels(outcome="empty")
_RATE_LIMITED = {kind: RATE_LIMITED.labels(kind=kind) for kind in ("read", "write")}
# A reason outside this set is counted as "other": a label value must come from a small set.
_UNAVAILABLE = {
    reason: UNAVAILABLE.labels(reason=reason)
    for reason in ("pool_timeout", "connection", "timeout", "busy", "queue_full")
}
_UNAVAILABLE_OTHER = UNAVAILABLE.labels(reason="other")

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# (method, route, status) -> the request counter's and the histogram's children for it.
_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def _request_series(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    key = (method, route, status)
    series = _series.get(key)
    if series is None:
        # Two threads may both get here; labels() hands both the same children.
        series = _series[key] = (REQUESTS.labels(method, route, status), REQUEST_DURATION.labels(method, route, status))
    return series


def count_claim(claimed: bool) -> None:
    (_CLAIMED if claimed else _EMPTY).inc()


def count_tool_call(tool: str, failed: bool) -> None:
    # `tool` is one of the registered tools' names (the SDK refuses any other): a small set.
    TOOL_CALLS.labels(tool, "error" if failed else "ok").inc()


def count_lease_expiries(count: int) -> None:
    LEASE_EXPIRIES.inc(count)


def count_rate_limited(kind: str) -> None:
    _RATE_LIMITED[kind].inc()


def count_unavailable(reason: str) -> None:
    _UNAVAILABLE.get(reason, _UNAVAILABLE_OTHER).inc()


def note_requests_waiting(count: int) -> None:
    REQUESTS_WAITING.set(count)


@contextmanager
def waiting_for_connection() -> Iterator[None]:
    """Count the caller among those waiting for a database connection while the block runs."""
    CONNECTIONS_WAITING.inc()
    try:
        yield
    finally:
        CONNECTIONS_WAITING.dec()


def metrics_registry() -> CollectorRegistry:
    """What /metrics exports: this process's metrics, or those of every worker sharing the directory."""
    if MULTIPROCESS_DIR is None:
        return REGISTRY
    # The default registry would add this one worker's process metrics to the sum of all.
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


async def serve_metrics() -> Response:
    # Off the request threads: a scrape must answer when they are all busy, which is when it
    # matters most. Reading the workers' files takes a few milliseconds.
    body = await anyio.to_thread.run_sync(generate_latest, metrics_registry(), limiter=probe_limiter("metrics"))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------- one log line and one observation per request


class _Caller(Protocol):
    id: str


class RequestTelemetry:
    """Log each HTTP request once, on `taskflow.request`, and observe it in the request metrics.

    The route is the template (`/api/tasks/{task_id}`), never the path, so a metric's series stay
    few; an unrouted request is "unmatched", and one to the docs, which are not API routes, "other". /metrics itself is neither logged nor counted. When
    tracing is on, the line also names the request's `trace_id`.
    """

    def __init__(self, app: ASGIApp, *, metrics: bool) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Stays 500 if the app fails, or ends without a response (uvicorn then answers 500).
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except BaseException:
            status = 500
            raise
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        method: str = scope["method"]
        if method not in KNOWN_METHODS:
            method = "OTHER"
        route = scope.get("route")
        template: str | None = getattr(route, "path_format", None) or getattr(route, "path", None)
        if template is None:
            # Only API routes name themselves in the scope; the docs and their files do not.
            template = "unmatched" if status == 404 else "other"
        if self.metrics:
            requests, durations = _request_series(method, template, status)
            requests.inc()
            durations.observe(seconds)
            # Also as a request leaves, so that the gauge falls back once a burst is served.
            note_requests_waiting(current_default_thread_limiter().statistics().tasks_waiting)
        if not request_logger.isEnabledFor(logging.INFO):
            return
        state = scope.get("state") or {}
        actor: _Caller | None = state.get("actor")
        actor_type = None
        if actor is not None:
            actor_type = scope["app"].state.known_workers.type_of(actor.id)
        milliseconds = seconds * 1000
        extra: dict[str, Any] = {
            "request_id": state.get("request_id"),
            "method": method,
            "route": template,
            "path": scope["path"],
            "status": status,
            "duration_ms": round(milliseconds, 3),
            "actor_id": actor.id if actor is not None else None,
            "actor_type": actor_type,
        }
        if _tracer_provider is not None:
            extra["trace_id"] = _current_trace_id()
        request_logger.info("%s %s %d %.1f ms", method, template, status, milliseconds, extra=extra)


# ---------------------------------------------------------------- the database pool

# Set on a pool entry while it is counted as in use, so that a checkout the pool retries (a dead
# connection replaced) is counted once, and a checkin only takes back what was counted.
_COUNTED = "taskflow_counted_in_use"


def _on_checkout(_dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
    # record_info, unlike info, outlives a reconnection of the entry.
    info = record.record_info
    if info is not None and not info.get(_COUNTED):
        info[_COUNTED] = True
        CONNECTIONS_IN_USE.inc()


def _on_checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    info = record.record_info
    if info is not None and info.pop(_COUNTED, False):
        CONNECTIONS_IN_USE.dec()


def instrument_engine(engine: Engine, settings: Settings) -> None:
    """Count the engine's connections in use, and trace its statements when tracing is on."""
    event.listen(engine, "checkout", _on_checkout)
    event.listen(engine, "checkin", _on_checkin)
    if settings.otel_exporter_otlp_endpoint and _tracer_provider is not None:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        instrumentor = SQLAlchemyInstrumentor()
        # It instruments one engine per process: a later app (in tests) takes it over.
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        # The instrumentation declares SQLAlchemy < 2.1 and, without skip_dep_check, logs an error
        # and instruments nothing on 2.1; the engine events it listens to are the same in 2.1, and
        # tests/test_telemetry.py sees its spans arrive.
        instrumentor.instrument(engine=engine, tracer_provider=_tracer_provider, skip_dep_check=True)


# ---------------------------------------------------------------- tracing

_tracer_provider: TracerProvider | None = None


def _current_trace_id() -> str | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _start_tracing(app: FastAPI, endpoint: str) -> None:
    # Imported here: a deployment without a collector pays nothing for the SDK.
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    global _tracer_provider
    if _tracer_provider is None:
        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; without either
        # the service would be "unknown_service".
        resource = Resource.create({SERVICE_VERSION: VERSION})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "taskflow"}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
        # The global provider can be set once per process; the instrumentations are given ours
        # explicitly, so a second app in one process (tests) traces all the same.
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)
        _tracer_provider = provider
    # A scrape or a load balancer's health checks every few seconds would bury the requests; and
    # a span per ASGI message sent or received would cost more than it tells.
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls="/metrics$,/health$,/api/health/db$",
        tracer_provider=_tracer_provider,
        exclude_spans=["receive", "send"],
    )


def install(app: FastAPI, settings: Settings) -> None:
    """Add request logging and metrics, /metrics, and tracing when a collector is configured."""
    app.add_middleware(RequestTelemetry, metrics=settings.metrics)
    if settings.metrics:
        VERSION_INFO.labels(version=VERSION).set(1)
        # No token: like the database's own port, it belongs on a network the public cannot reach.
        app.add_api_route(METRICS_PATH, serve_metrics, methods=["GET"], include_in_schema=False)
    if settings.otel_exporter_otlp_endpoint:
        _start_tracing(app, settings.otel_exporter_otlp_endpoint)


def shutdown() -> None:
    """Send the spans not yet sent, and take this process's live gauges out of the workers' sum."""
    global _tracer_provider
    if _tracer_provider is not None:
        _tracer_provider.shutdown()
        _tracer_provider = None
    if MULTIPROCESS_DIR is not None:
        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
