"""Telemetry an operator expects: one log line per request (text or JSON), Prometheus metrics
that add up across workers, and traces that join a request to its SQL.

Where it matters the app runs as a real `uvicorn` subprocess and is read from the outside: its
stderr, its /metrics, and the spans a small OTLP/HTTP receiver in this file is sent. Those
servers use a SQLite file of their own, whichever database the rest of the run uses.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import AuthHeaders, TokenFactory, serving_http
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pythonjsonlogger.json import JsonFormatter
from support import CreateTask, app_engine, free_port

import telemetry
from config import VERSION, Settings
from database import create_db_engine, migrate
from main import create_app

REPO = Path(__file__).resolve().parent.parent
TASK_ROUTE = "/api/tasks/{task_id}"
# Variables the server must not inherit from whoever runs the tests.
INHERITED_NOT = {"TEST_DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"}
STARTUP_SECONDS = 60.0


# ---------------------------------------------------------------- a real server in a subprocess


@dataclass
class Server:
    url: str
    stderr: Path
    stdout: Path

    def log_records(self) -> list[dict[str, Any]]:
        """Every line of stderr, each parsed as JSON (so any line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.stderr.read_text().splitlines() if line.strip()]


def server_env(database_url: str, auth_server_url: str, **settings: str) -> dict[str, str]:
    """This environment without TaskFlow's settings, Prometheus' or OpenTelemetry's, then `settings`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in Settings.model_fields and name not in INHERITED_NOT and not name.startswith("OTEL_")
    }
    env.update(
        DATABASE_URL=database_url,
        AUTH_SERVER_URL=auth_server_url,
        AUTO_MIGRATE="true",
        LEASE_SWEEP_SECONDS="0",
    )
    env.update({name.upper(): value for name, value in settings.items()})
    return env


@contextlib.contextmanager
def serve(tmp_path: Path, env: dict[str, str], *, workers: int = 1) -> Iterator[Server]:
    """`uvicorn main:app` on a free port until the block ends; stopped (SIGTERM) even if it fails."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    server = Server(f"http://127.0.0.1:{port}", tmp_path / f"stderr-{port}.log", tmp_path / f"stdout-{port}.log")
    with server.stderr.open("wb") as stderr, server.stdout.open("wb") as stdout:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while True:
                if process.poll() is not None:
                    pytest.fail(f"uvicorn exited with {process.returncode}:\n{server.stderr.read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"uvicorn did not answer /health in {STARTUP_SECONDS} s:\n{server.stderr.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                        break
                time.sleep(0.1)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def migrated_sqlite(path: Path) -> str:
    """A migrated SQLite file: two workers starting at once would both migrate it, and SQLite has no advisory lock."""
    url = f"sqlite:///{path}"
    engine = create_db_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    return url


# ---------------------------------------------------------------- scraping /metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    names = [family.name for family in text_string_to_metric_families(text)]
    assert len(names) == len(set(names)), f"a metric is exported twice: {sorted(names)}"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse_metrics(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def task_reads(status: str, route: str = TASK_ROUTE) -> dict[str, str]:
    return {"method": "GET", "route": route, "status": status}


# ---------------------------------------------------------------- logs


def test_json_logs_one_line_per_request_naming_its_route_caller_and_request_id_and_never_the_token(
    tmp_path: Path, make_token: TokenFactory, jwks: Any
) -> None:
    token = make_token("alice")
    headers = {"Authorization": f"Bearer {token}"}
    database = tmp_path / "taskflow.db"
    env = server_env(f"sqlite:///{database}", jwks.base_url, log_format="json")

    with serve(tmp_path, env) as server:
        created = httpx.post(f"{server.url}/api/tasks", json={"title": "Logged"}, headers=headers)
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        read = httpx.get(f"{server.url}/api/tasks/{task_id}", headers=headers)
        assert read.status_code == 200, read.text
        # A real fault: the schema changes under the running server, and its next read of a task
        # is a bug's 500 (a table it needs is missing), not an outage's 503.
        with contextlib.closing(sqlite3.connect(database)) as connection:
            connection.execute("ALTER TABLE task RENAME TO task_moved_away")
            connection.commit()
        broken = httpx.get(f"{server.url}/api/tasks/{task_id}", headers=headers)
        assert broken.status_code == 500, broken.text

    records = server.log_records()
    assert server.stdout.read_text() == ""
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), record
    # uvicorn's own lines come through the same handler, and its access log is silent.
    assert any(record["logger"] == "uvicorn.error" for record in records)
    assert not [record for record in records if record["logger"] == "uvicorn.access"]
    requests = [record for record in records if record["logger"] == "taskflow.request"]
    for response in (created, read, broken):
        assert [r["request_id"] for r in requests].count(response.headers["X-Request-ID"]) == 1

    line = next(r for r in requests if r["request_id"] == read.headers["X-Request-ID"])
    assert line["level"] == "INFO"
    assert line["method"] == "GET"
    assert line["route"] == TASK_ROUTE
    assert line["path"] == f"/api/tasks/{task_id}"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] > 0
    assert (line["actor_id"], line["actor_type"]) == ("alice", "human")
    assert re.fullmatch(r"GET /api/tasks/\{task_id\} 200 \d+\.\d ms", line["message"]), line["message"]

    failed = next(r for r in requests if r["request_id"] == broken.headers["X-Request-ID"])
    assert (failed["route"], failed["status"]) == (TASK_ROUTE, 500)
    errors = [r for r in records if r["level"] == "ERROR" and broken.headers["X-Request-ID"] in r["message"]]
    assert len(errors) == 1, errors
    assert errors[0]["exc_info"].startswith("Traceback (most recent call last)")
    assert "no such table: task" in errors[0]["exc_info"]

    text = server.stderr.read_text()
    assert token not in text
    assert token.rsplit(".", 1)[-1] not in text  # not even its signature
    assert "Bearer" not in text


def test_an_unauthenticated_request_is_logged_without_a_caller(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    telemetry.configure_logging("INFO", "json")
    try:
        capsys.readouterr()
        response = client.get("/api/tasks/1")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    finally:
        telemetry.configure_logging("INFO", "text")

    assert response.status_code == 401, response.text
    (line,) = [line for line in lines if line["logger"] == "taskflow.request"]
    assert (line["route"], line["status"], line["actor_id"], line["actor_type"]) == (TASK_ROUTE, 401, None, None)
    assert line["request_id"] == response.headers["X-Request-ID"]


def test_logs_are_plain_text_lines_by_default(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask, capsys: pytest.CaptureFixture[str]
) -> None:
    task = create_task("Plain")
    capsys.readouterr()

    response = client.get(f"/api/tasks/{task['id']}", headers=auth("alice"))

    assert response.status_code == 200, response.text
    lines = [line for line in capsys.readouterr().err.splitlines() if " taskflow.request: " in line]
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO taskflow\.request: GET /api/tasks/\{task_id\} 200 \d+\.\d ms",
        lines[0],
    ), lines[0]


def test_configuring_logging_again_replaces_its_handler_and_takes_over_uvicorns() -> None:
    # uvicorn's own set-up, as it runs before the app is imported: handlers on its three loggers.
    uvicorn.Config("main:app")
    root = logging.getLogger()
    try:
        telemetry.configure_logging("INFO", "json")
        telemetry.configure_logging("WARNING", "json")

        ours = [handler for handler in root.handlers if handler.get_name() == telemetry.HANDLER_NAME]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, JsonFormatter)
        assert root.level == logging.WARNING
        for name in telemetry.UVICORN_LOGGERS:
            assert logging.getLogger(name).handlers == []
            assert logging.getLogger(name).propagate
        assert logging.getLogger("uvicorn.access").level == logging.WARNING
        assert logging.getLogger("sqlalchemy.engine").level == logging.WARNING
        telemetry.configure_logging("DEBUG", "text")
        assert logging.getLogger("sqlalchemy.engine").level == logging.INFO
    finally:
        telemetry.configure_logging("INFO", "text")


# ---------------------------------------------------------------- metrics


def test_requests_are_counted_by_route_template_and_status(
    client: TestClient, auth: AuthHeaders, create_task: CreateTask
) -> None:
    task = create_task("Counted")
    before = scrape(client)

    for _ in range(7):
        response = client.get(f"/api/tasks/{task['id']}", headers=auth("alice"))
        assert response.status_code == 200, response.text
    after = scrape(client)

    assert grew(before, after, "taskflow_http_requests_total", **task_reads("200")) == 7
    assert grew(before, after, "taskflow_http_request_duration_seconds_count", **task_reads("200")) == 7
    assert grew(before, after, "taskflow_http_request_duration_seconds_bucket", **task_reads("200"), le="+Inf") == 7
    assert grew(before, after, "taskflow_http_request_duration_seconds_sum", **task_reads("200")) > 0
    # Scrapes are neither counted nor timed.
    assert not [key for key in after if ("route", "/metrics") in key[1]]


def test_a_404_is_labelled_with_its_route_template_and_an_unrouted_path_as_unmatched(
    client: TestClient, auth: AuthHeaders
) -> None:
    before = scrape(client)

    assert client.get("/api/tasks/987654", headers=auth("alice")).status_code == 404
    assert client.get("/api/no-such-thing/987654").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    after = scrape(client)

    assert grew(before, after, "taskflow_http_requests_total", **task_reads("404")) == 1
    assert grew(before, after, "taskflow_http_requests_total", **task_reads("404", route="unmatched")) == 1
    # The docs are not API routes and do not name themselves: one label for all of them.
    assert grew(before, after, "taskflow_http_requests_total", **task_reads("200", route="other")) == 1
    assert not [key for key in after if any("987654" in label_value for _, label_value in key[1])]


def test_claims_are_counted_as_claimed_or_empty(client: TestClient, auth: AuthHeaders, create_task: CreateTask) -> None:
    before = scrape(client)

    nothing = client.post("/api/tasks/claim", headers=auth("alice"))
    create_task("Ready", assigned_to="alice")
    claimed = client.post("/api/tasks/claim", headers=auth("alice"))
    after = scrape(client)

    assert nothing.status_code == 204, nothing.text
    assert claimed.status_code == 200, claimed.text
    assert grew(before, after, "taskflow_claims_total", outcome="empty") == 1
    assert grew(before, after, "taskflow_claims_total", outcome="claimed") == 1


def test_the_pool_gauges_follow_connections_checked_out_and_waited_for(client: TestClient, auth: AuthHeaders) -> None:
    engine = app_engine(client)
    before = scrape(client)

    with engine.connect():
        holding = scrape(client)
    with telemetry.waiting_for_connection():
        waiting = scrape(client)
    for _ in range(3):
        assert client.get("/api/tasks", headers=auth("alice")).status_code == 200
    after = scrape(client)

    in_use, queued = "taskflow_db_connections_in_use", "taskflow_db_connections_waiting"
    assert grew(before, holding, in_use) == 1
    assert grew(before, waiting, queued) == 1
    # Every connection the requests took went back, and nobody is counted as still waiting.
    assert (value(after, in_use), value(after, queued)) == (value(before, in_use), value(before, queued))


def test_the_version_is_exported(client: TestClient) -> None:
    assert value(scrape(client), "taskflow_info", version=VERSION) == 1


def test_without_metrics_there_is_no_endpoint_and_nothing_is_counted(settings: Settings, auth: AuthHeaders) -> None:
    registry = telemetry.metrics_registry()
    labels = {"method": "GET", "route": "/api/tasks", "status": "200"}
    before = registry.get_sample_value("taskflow_http_requests_total", labels) or 0.0

    with TestClient(create_app(settings.model_copy(update={"metrics": False}))) as client:
        assert client.get("/api/tasks", headers=auth("alice")).status_code == 200
        response = client.get("/metrics")

    assert response.status_code == 404, response.text
    assert (registry.get_sample_value("taskflow_http_requests_total", labels) or 0.0) == before


def worker_reads(path: Path) -> float:
    """The task reads one worker counted, from its own file."""
    metrics = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]  # prometheus_client leaves merge() unannotated
    samples = {(s.name, frozenset(s.labels.items())): s.value for metric in metrics for s in metric.samples}
    return value(samples, "taskflow_http_requests_total", **task_reads("200"))


def test_metrics_add_up_every_worker(tmp_path: Path, make_token: TokenFactory, jwks: Any) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = server_env(migrated_sqlite(tmp_path / "taskflow.db"), jwks.base_url, prometheus_multiproc_dir=str(directory))
    headers = {"Authorization": f"Bearer {make_token('alice')}", "Connection": "close"}

    with serve(tmp_path, env, workers=2) as server:
        created = httpx.post(f"{server.url}/api/tasks", json={"title": "Shared"}, headers=headers)
        assert created.status_code == 201, created.text
        url = f"{server.url}/api/tasks/{created.json()['id']}"

        def read(_: int) -> int:
            # A connection of its own each time, so that either worker may accept it.
            return httpx.get(url, headers=headers).status_code

        # The kernel hands each connection to either worker: read until both have served some.
        sent = 0
        with ThreadPoolExecutor(max_workers=4) as pool:
            while sent < 400:
                assert list(pool.map(read, range(20))) == [200] * 20
                sent += 20
                if all(worker_reads(path) > 0 for path in directory.glob("counter_*.db")):
                    break

        # A worker counts a request just after its response is sent: wait, boundedly, for the last.
        deadline = time.monotonic() + 10
        while True:
            response = httpx.get(f"{server.url}/metrics")
            assert response.status_code == 200, response.text
            samples = parse_metrics(response.text)
            if (
                value(samples, "taskflow_http_requests_total", **task_reads("200")) >= sent
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.05)
        # Whichever worker answered the scrape, it reports what both counted.
        assert value(samples, "taskflow_http_requests_total", **task_reads("200")) == sent
        assert value(samples, "taskflow_http_request_duration_seconds_count", **task_reads("200")) == sent
        assert value(samples, "taskflow_db_connections_in_use") == 0
        assert value(samples, "taskflow_info", version=VERSION) == 1
        per_worker = [worker_reads(path) for path in sorted(directory.glob("counter_*.db"))]
        assert len(per_worker) == 2
        assert all(count > 0 for count in per_worker), per_worker
        assert sum(per_worker) == sent

    # Each worker, stopping, took its live gauges out of the sum.
    assert list(directory.glob("gauge_livesum_*.db")) == []


# ---------------------------------------------------------------- traces


@dataclass
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: what the app's exporter sent, decoded."""

    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)


def _attributes(values: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for item in values:
        assert isinstance(item, KeyValue)
        kind = item.value.WhichOneof("value")
        decoded[item.key] = getattr(item.value, kind) if kind else None
    return decoded


@pytest.fixture
def collector() -> Iterator[Collector]:
    state = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with state.lock:
                for resource_spans in request.resource_spans:
                    resource = _attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            state.spans.append(
                                ReceivedSpan(
                                    span.name, span.kind, span.trace_id.hex(), _attributes(span.attributes), resource
                                )
                            )
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving_http(Handler) as url:
        state.url = url
        yield state


def is_sql(span: ReceivedSpan) -> bool:
    return "db.system" in span.attributes or "db.system.name" in span.attributes


def test_a_request_is_traced_with_its_sql_in_one_trace(
    tmp_path: Path, make_token: TokenFactory, jwks: Any, collector: Collector
) -> None:
    headers = {"Authorization": f"Bearer {make_token('alice')}"}
    env = server_env(
        f"sqlite:///{tmp_path / 'taskflow.db'}",
        jwks.base_url,
        otel_exporter_otlp_endpoint=collector.url,
        otel_bsp_schedule_delay="100",
        log_format="json",
    )

    with serve(tmp_path, env) as server:
        created = httpx.post(f"{server.url}/api/tasks", json={"title": "Traced"}, headers=headers)
        assert created.status_code == 201, created.text
        response = httpx.get(f"{server.url}/api/tasks/{created.json()['id']}", headers=headers)
        assert response.status_code == 200, response.text

        deadline = time.monotonic() + 20
        while True:
            spans = collector.received()
            servers = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER and s.name == f"GET {TASK_ROUTE}"]
            if servers and any(is_sql(s) and s.trace_id == servers[0].trace_id for s in spans):
                break
            assert time.monotonic() < deadline, f"no server span with SQL in its trace: {spans}"
            time.sleep(0.1)

    (request_span,) = servers
    sql = [s for s in spans if is_sql(s) and s.trace_id == request_span.trace_id]
    assert any(s.name.startswith("SELECT") for s in sql), [s.name for s in sql]
    assert request_span.resource["service.name"] == "taskflow"
    assert request_span.resource["service.version"] == VERSION
    # The health checks that waited for the server to start were not traced.
    assert not [s for s in spans if "/health" in str(s.attributes.get("http.route", s.attributes.get("url.path")))]
    # The request's log line names its trace, so one leads to the other.
    (line,) = [
        r
        for r in server.log_records()
        if r["logger"] == "taskflow.request" and r["request_id"] == response.headers["X-Request-ID"]
    ]
    assert line["trace_id"] == request_span.trace_id


def test_without_a_collector_nothing_is_traced(settings: Settings) -> None:
    app = create_app(settings)

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)


def test_without_a_collector_the_tracing_sdk_is_not_even_imported(tmp_path: Path, jwks: Any) -> None:
    script = (
        "import sys, main; "
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter', "
        "'opentelemetry.instrumentation'))))"
    )
    env = server_env(f"sqlite:///{tmp_path / 'taskflow.db'}", jwks.base_url)

    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
