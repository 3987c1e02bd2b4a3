"""Per-caller rate limits: a budget per worker id for reads and one for writes, counted by `limits`.

In memory for one process, and in the real Redis server on the machine for several instances
sharing one budget. Over the limit: 429 `rate_limited` with Retry-After and the IETF
`RateLimit-Policy` / `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers); a refused
write changes nothing. With the Redis unreachable, requests are let through (fail open).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import uuid
from collections.abc import Iterator

import anyio
import httpx2
import pytest
import redis
from conftest import AuthHeaders, TokenFactory, captured_warnings
from fastapi.testclient import TestClient
from limits import parse_many
from limits.strategies import MovingWindowRateLimiter
from pydantic import ValidationError
from sqlalchemy import Engine, text

from config import Settings, load_settings
from database import mark_read_only
from errors import RateLimited
from main import create_app
from ratelimit import RateLimiter

REDIS_URL = "redis://127.0.0.1:6379"
RATE_LIMIT = re.compile(r'^"(?P<name>[a-z]+-\d+s)";r=(?P<remaining>\d+);t=(?P<reset>\d+)$')


def limited(settings: Settings, **limits: str) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=limits)))


def remaining(response: httpx2.Response, name: str) -> int:
    """The `r` of the RateLimit header, checked against its draft's structured format."""
    match = RATE_LIMIT.match(response.headers["RateLimit"])
    assert match is not None, response.headers["RateLimit"]
    assert match["name"] == name
    assert int(match["reset"]) >= 1
    return int(match["remaining"])


def assert_rate_limited(response: httpx2.Response, name: str, policy: str) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert (body["code"], body["status_code"]) == ("rate_limited", 429)
    assert body["error"]
    retry_after = int(response.headers["Retry-After"])  # an integer, as HTTP requires
    window = int(name.removeprefix("read-").removeprefix("write-").removesuffix("s"))
    assert 1 <= retry_after <= window
    assert response.headers["RateLimit-Policy"] == policy
    assert remaining(response, name) == 0


def task_counts(db: Engine) -> tuple[int, int]:
    """(task rows, audit rows about tasks)."""
    with db.connect() as connection:
        mark_read_only(connection)
        tasks = connection.execute(text("SELECT count(*) FROM task")).scalar_one()
        audits = connection.execute(text("SELECT count(*) FROM audit_log WHERE task_id IS NOT NULL")).scalar_one()
    return tasks, audits


# ---------------------------------------------------------------- settings


def test_limits_are_off_by_default(client: TestClient, auth: AuthHeaders) -> None:
    defaults = Settings(_env_file=None)
    assert defaults.rate_limit_read is None
    assert defaults.rate_limit_write is None
    assert defaults.rate_limit_storage == "memory://"
    headers = auth("alice")
    for _ in range(3):
        response = client.get("/api/tasks", headers=headers)
        assert response.status_code == 200
        assert not {"ratelimit", "ratelimit-policy"} & response.headers.keys()
    created = client.post("/api/tasks", json={"title": "Unlimited"}, headers=headers)
    assert created.status_code == 201
    assert "RateLimit" not in created.headers


@pytest.mark.parametrize("value", ["lots", "5/fortnight", "five/minute", "5 per"])
def test_a_malformed_limit_is_refused_at_start_up(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match=r"is not a rate limit such as '600/minute'"):
        Settings(_env_file=None, rate_limit_read=value)
    monkeypatch.setenv("RATE_LIMIT_WRITE", value)
    with pytest.raises(SystemExit, match=rf"RATE_LIMIT_WRITE: '{re.escape(value)}' is not a rate limit"):
        load_settings()


def test_an_unknown_storage_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="RATE_LIMIT_STORAGE must be memory:// or redis://"):
        Settings(_env_file=None, rate_limit_storage="memcached://127.0.0.1:11211")


# ---------------------------------------------------------------- in memory


def test_reads_over_the_limit_answer_429_with_the_ietf_headers(settings: Settings, auth: AuthHeaders) -> None:
    policy = '"read-60s";q=5;w=60'
    with limited(settings, rate_limit_read="5/minute", rate_limit_write="2/minute") as client:
        headers = auth("alice")
        left = []
        for _ in range(5):
            response = client.get("/api/tasks", headers=headers)
            assert response.status_code == 200, response.text
            assert response.headers["RateLimit-Policy"] == policy
            left.append(remaining(response, "read-60s"))
        assert left == [4, 3, 2, 1, 0]
        assert_rate_limited(client.get("/api/tasks", headers=headers), "read-60s", policy)
        assert_rate_limited(client.get("/api/projects", headers=headers), "read-60s", policy)


def test_reads_and_writes_have_separate_budgets_and_a_refused_write_changes_nothing(
    settings: Settings, auth: AuthHeaders, db: Engine
) -> None:
    policy = '"write-60s";q=2;w=60'
    with limited(settings, rate_limit_read="5/minute", rate_limit_write="2/minute") as client:
        headers = auth("alice")
        for _ in range(5):
            assert client.get("/api/tasks", headers=headers).status_code == 200
        assert client.get("/api/tasks", headers=headers).status_code == 429
        task = client.post("/api/tasks", json={"title": "First"}, headers=headers)
        assert task.status_code == 201, task.text
        assert task.headers["RateLimit-Policy"] == policy
        assert remaining(task, "write-60s") == 1
        patched = client.patch(f"/api/tasks/{task.json()['id']}", json={"title": "Renamed"}, headers=headers)
        assert patched.status_code == 200, patched.text
        assert remaining(patched, "write-60s") == 0
        assert task_counts(db) == (1, 2)

        refused_create = client.post("/api/tasks", json={"title": "Refused"}, headers=headers)
        assert_rate_limited(refused_create, "write-60s", policy)
        refused_change = client.patch(f"/api/tasks/{task.json()['id']}", json={"title": "No"}, headers=headers)
        assert_rate_limited(refused_change, "write-60s", policy)
    assert task_counts(db) == (1, 2)
    with db.connect() as connection:
        mark_read_only(connection)
        assert connection.execute(text("SELECT title, version FROM task")).one() == ("Renamed", 2)


def test_a_budget_belongs_to_the_worker_id_not_the_token(settings: Settings, auth: AuthHeaders) -> None:
    policy = '"read-60s";q=5;w=60'
    with limited(settings, rate_limit_read="5/minute") as client:
        alice, alice_again = auth("alice"), auth("alice", key="ES256")
        assert alice != alice_again  # two tokens, one worker
        for _ in range(3):
            assert client.get("/api/tasks", headers=alice).status_code == 200
        assert remaining(client.get("/api/tasks", headers=alice_again), "read-60s") == 1
        assert remaining(client.get("/api/tasks", headers=alice_again), "read-60s") == 0
        assert_rate_limited(client.get("/api/tasks", headers=alice), "read-60s", policy)
        assert_rate_limited(client.get("/api/tasks", headers=alice_again), "read-60s", policy)
        bob = client.get("/api/tasks", headers=auth("bob"))
        assert bob.status_code == 200, bob.text
        assert remaining(bob, "read-60s") == 4


def test_several_limits_in_one_setting(settings: Settings, auth: AuthHeaders) -> None:
    policy = '"read-1s";q=3;w=1, "read-60s";q=100;w=60'
    with limited(settings, rate_limit_read="3/second;100/minute") as client:
        headers = auth("alice")
        # A second may pass between two requests on a loaded machine: read until refused, boundedly.
        for _ in range(30):
            response = client.get("/api/tasks", headers=headers)
            assert response.headers["RateLimit-Policy"] == policy
            if response.status_code == 429:
                break
            assert response.status_code == 200, response.text
            # The header reports the limit closest to running out: the per-second one.
            assert remaining(response, "read-1s") <= 2
        assert_rate_limited(response, "read-1s", policy)


def test_a_refused_request_uses_up_no_budget_and_names_the_longest_wait(settings: Settings, auth: AuthHeaders) -> None:
    policy = '"read-60s";q=10;w=60, "read-3600s";q=2;w=3600'
    with limited(settings, rate_limit_read="10/minute;2/hour") as client:
        headers = auth("alice")
        assert remaining(client.get("/api/tasks", headers=headers), "read-3600s") == 1
        assert remaining(client.get("/api/tasks", headers=headers), "read-3600s") == 0
        for _ in range(3):
            refused = client.get("/api/tasks", headers=headers)
            assert_rate_limited(refused, "read-3600s", policy)
            # The hour is what the caller must wait for, not the minute that still has room.
            assert int(refused.headers["Retry-After"]) > 60
    limiter = RateLimiter("2/minute;5/hour", None, "memory://")

    async def refused_twice_then_counted() -> int:
        for _ in range(2):
            await limiter.check("bob", writing=False)
        for _ in range(2):
            with pytest.raises(RateLimited):
                await limiter.check("bob", writing=False)
        hour = parse_many("5/hour")[0]
        strategy = limiter.strategy
        assert isinstance(strategy, MovingWindowRateLimiter)  # in memory: the synchronous strategy, a plain call
        stats = strategy.get_window_stats(hour, "read", "bob")
        return stats.remaining

    assert anyio.run(refused_twice_then_counted) == 3  # the two refusals took nothing from the hour


def test_error_answers_say_where_the_caller_stands_too(settings: Settings, auth: AuthHeaders) -> None:
    with limited(settings, rate_limit_read="5/minute") as client:
        headers = auth("alice")
        missing = client.get("/api/tasks/12345", headers=headers)
        assert missing.status_code == 404
        assert remaining(missing, "read-60s") == 4
        invalid = client.get("/api/tasks", params={"limit": "many"}, headers=headers)
        assert invalid.status_code == 422
        assert remaining(invalid, "read-60s") == 3


# ---------------------------------------------------------------- in Redis


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The Redis server on the machine; the keys of this test's callers are deleted afterwards."""
    connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        connection.ping()
    except redis.ConnectionError as error:
        connection.close()
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not reachable at {REDIS_URL} in CI: {error}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {error}")
    try:
        yield REDIS_URL
    finally:
        # The callers' ids are unique to the test (see below); nobody else's keys are touched.
        for key in connection.scan_iter(match="*redis-caller-*"):
            connection.delete(key)
        connection.close()


def test_instances_sharing_redis_share_one_budget(settings: Settings, make_token: TokenFactory, redis_url: str) -> None:
    # A caller id of this run only: no other run, nor the same test run earlier, shares its budget.
    caller = f"redis-caller-{uuid.uuid4().hex[:12]}"
    policy = '"read-60s";q=5;w=60'
    limits = {"rate_limit_read": "5/minute", "rate_limit_storage": redis_url}
    headers = {"Authorization": f"Bearer {make_token(caller)}"}
    with limited(settings, **limits) as first, limited(settings, **limits) as second:
        left = [remaining(first.get("/api/tasks", headers=headers), "read-60s") for _ in range(3)]
        left += [remaining(second.get("/api/tasks", headers=headers), "read-60s") for _ in range(2)]
        assert left == [4, 3, 2, 1, 0]
        assert_rate_limited(first.get("/api/tasks", headers=headers), "read-60s", policy)
        assert_rate_limited(second.get("/api/tasks", headers=headers), "read-60s", policy)


def test_many_requests_at_once_get_only_the_budget_through_redis(redis_url: str) -> None:
    caller = f"redis-caller-{uuid.uuid4().hex}"

    async def twenty_at_once() -> tuple[int, int]:
        limiter = RateLimiter("5/minute", None, redis_url)
        try:
            results = await asyncio.gather(
                *(limiter.check(caller, writing=False) for _ in range(20)), return_exceptions=True
            )
        finally:
            await limiter.close()
        allowed = sum(1 for result in results if isinstance(result, dict) and result)
        refused = sum(1 for result in results if isinstance(result, RateLimited))
        return allowed, refused

    assert anyio.run(twenty_at_once) == (5, 15)


def test_a_redis_that_hangs_is_given_up_on_and_requests_go_through(settings: Settings, auth: AuthHeaders) -> None:
    # A port that accepts connections (the kernel's backlog) and never answers, like a paused Redis.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hung = f"redis://127.0.0.1:{silent.getsockname()[1]}"
        with (
            limited(settings, rate_limit_read="2/minute", rate_limit_storage=hung) as client,
            captured_warnings("taskflow.ratelimit") as records,
        ):
            headers = auth("alice")
            # Each would wait forever without the storage's own timeout.
            for _ in range(4):
                response = client.get("/api/tasks", headers=headers)
                assert response.status_code == 200, response.text
                assert "RateLimit" not in response.headers
    assert len(records) == 1
    assert "Timeout" in records[0].getMessage()


def test_an_unreachable_redis_lets_requests_through_and_warns_once(settings: Settings, auth: AuthHeaders) -> None:
    # The documented choice: a rate limiter whose storage is away must not take the board down with it.
    away = {"rate_limit_read": "2/minute", "rate_limit_write": "1/minute", "rate_limit_storage": "redis://127.0.0.1:1"}
    with limited(settings, **away) as client, captured_warnings("taskflow") as records:
        headers = auth("alice")
        for _ in range(5):
            response = client.get("/api/tasks", headers=headers)
            assert response.status_code == 200, response.text
            assert not {"ratelimit", "ratelimit-policy"} & response.headers.keys()
        for number in range(3):
            assert client.post("/api/tasks", json={"title": f"Task {number}"}, headers=headers).status_code == 201
    messages = [record.getMessage() for record in records]
    assert len(messages) == 1, messages
    assert records[0].name == "taskflow.ratelimit"
    assert "Rate limits are not enforced" in messages[0]
    assert "127.0.0.1:1" in messages[0]  # with its cause
