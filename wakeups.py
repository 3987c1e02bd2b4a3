"""Waking the requests that wait for a commit: a claim waiting for work, a feed reader waiting for events.

A waiting request holds no connection and no thread: it awaits a `Waiter` on the event loop and
checks again, in a short transaction, when woken. On PostgreSQL the audit log's trigger sends
`NOTIFY` at commit (migration 0006), from any process or instance, and one listening connection
per process wakes its waiters. On SQLite, the process that committed wakes its own waiters. A
notification that is missed (the listener reconnecting, a write from elsewhere) costs latency
only: waiters check again every `recheck_seconds` anyway.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

import telemetry

logger = logging.getLogger("taskflow.wakeups")

# How long the listener waits before it connects again after losing its connection.
RECONNECT_SECONDS = 2.0
# How soon a waiter that was told `NothingYet(soon=True)` looks again.
SOON_SECONDS = 0.05
# How long the listener may fail to connect before that is a warning rather than part of an outage.
WARN_AFTER_SECONDS = 60.0
# How often an idle listener checks that its connection is still there.
PING_SECONDS = 30.0


T = TypeVar("T")


class NothingYet(Exception):
    """Raised by an attempt of `Wakeups.wait_for` that found nothing and wants to wait on.

    `soon`: something is there but cannot be served yet (an event behind a transaction that is
    still running); its commit may notify no one, so look again shortly rather than wait.
    """

    def __init__(self, *, soon: bool = False) -> None:
        super().__init__()
        self.soon = soon


class Topic(enum.StrEnum):
    """What a waiter waits for; each is a channel the audit log's trigger notifies."""

    work = "taskflow_work"  # something changed that may make a task claimable
    events = "taskflow_events"  # a row was added to the event feed


class Waiter:
    """One wait of one request: set when its topic is notified. Made by `Wakeups.waiter`."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self.asleep = False
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def wait(self, timeout: float) -> bool:
        """Whether it was woken (rather than timing out)."""
        self.asleep = True
        try:
            await asyncio.wait_for(self._woken.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self.asleep = False
        return True


class Wakeups:
    """The waiters of one app and what wakes them.

    `listen_url`: a PostgreSQL URL to LISTEN on; None on SQLite, where `committed()` (called by
    this process after each write) is what wakes.
    """

    def __init__(
        self,
        listen_url: str | None,
        recheck_seconds: float,
        concurrent_checks: int,
    ) -> None:
        self.listen_url = listen_url
        self.recheck_seconds = recheck_seconds
        self.concurrent_checks = concurrent_checks
        self._checks: asyncio.Semaphore | None = None
        self.draining = False
        self._waiters: dict[Topic, set[Waiter]] = {topic: set() for topic in Topic}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        # Written to by `stop`, so that the listener's `select` returns at once rather than at its timeout.
        self._interrupt: socket.socket | None = None
        self._interrupter: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while the listener holds a connection

    # ------------------------------------------------------------ waiting

    @contextmanager
    def waiter(self, topic: Topic) -> Iterator[Waiter]:
        """Register a waiter for the block. Register before checking, then wait: a commit that
        lands between the check and the wait still wakes it."""
        waiter = Waiter(topic)
        self._waiters[topic].add(waiter)
        gauge = telemetry.WAITERS.labels(topic.name)
        gauge.inc()
        try:
            yield waiter
        finally:
            self._waiters[topic].discard(waiter)
            gauge.dec()

    async def wait_for(
        self,
        topic: Topic,
        seconds: float,
        attempt: Callable[[bool], Awaitable[T]],
        gone: Callable[[], Awaitable[bool]],
        left: T,
    ) -> T:
        """Call `attempt` until it returns, waiting for `topic` between calls, for up to `seconds`.

        `attempt(final)` raises `NothingYet` to wait on; when `final` is true (the time is up, or
        the server is stopping) it must answer. A client that is `gone()` gets `left` and nothing
        more is attempted for it: a claim must not take a task for no one. Checks after a wake-up
        take turns, at most `concurrent_checks` at once, so that a commit that wakes hundreds of
        waiters does not fill the request queue and turn other requests away.
        """
        if seconds <= 0:  # no wait asked for: one attempt, without registering as a waiter
            return await attempt(True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        first = True
        soon = SOON_SECONDS
        while True:
            remaining = deadline - loop.time()
            final = remaining <= 0 or self.draining
            with self.waiter(topic) as waiter:
                try:
                    if first:
                        return await attempt(final)
                    async with self.turn():
                        if await gone():
                            return left
                        return await attempt(final)
                except NothingYet as nothing:
                    # The attempt itself took time (a turn, a thread): wait only for what is left.
                    pause, soon = self.pause(nothing.soon, soon, deadline - loop.time())
                first = False
                await waiter.wait(pause)

    def pause(self, soon: bool, after_soon: float, remaining: float) -> tuple[float, float]:
        """How long to wait before looking again, and the next pause if it is `soon` again: a
        held-back event is looked for again quickly at first, then less and less often (a long
        transaction can hold the feed for a while), up to the recheck interval."""
        if soon:
            return min(after_soon, remaining), min(after_soon * 2, self.recheck_seconds)
        return self.recheck_in(remaining), SOON_SECONDS

    def turn(self) -> asyncio.Semaphore:
        """Held by a check that follows a wake-up (see `wait_for`)."""
        if self._checks is None:
            self._checks = asyncio.Semaphore(self.concurrent_checks)
        return self._checks

    def waiting(self, topic: Topic) -> int:
        """How many requests wait for `topic` right now, holding nothing (not those checking)."""
        return sum(waiter.asleep for waiter in self._waiters[topic])

    def recheck_in(self, remaining: float) -> float:
        """How long to wait before checking again: the recheck interval, jittered so that the
        waiters of a process do not all check at once, and never past `remaining`."""
        return max(0.0, min(remaining, self.recheck_seconds * random.uniform(0.8, 1.0)))

    def _wake(self, topics: frozenset[Topic]) -> None:
        for topic in topics:
            for waiter in self._waiters[topic]:
                waiter.wake()

    def _wake_from_any_thread(self, topics: frozenset[Topic]) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._wake, topics)
        except RuntimeError:  # the loop closed in between: nobody is waiting any more
            pass

    def committed(self) -> None:
        """This process committed a change: wake its waiters, unless the database does (PostgreSQL)."""
        if self.listen_url is None:
            self._wake_from_any_thread(frozenset(Topic))

    def drain(self) -> None:
        """The server is stopping: every waiter answers now rather than when its wait ends."""
        self.draining = True
        self._wake_from_any_thread(frozenset(Topic))

    # ------------------------------------------------------------ the listener

    def start(self) -> None:
        """Called on the event loop that serves the app."""
        self.loop = asyncio.get_running_loop()
        if self.listen_url is not None:
            self._interrupt, self._interrupter = socket.socketpair()
            self._thread = threading.Thread(target=self._listen, name="taskflow-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._interrupt is None or self._interrupter is None:
            return
        self._interrupter.send(b"\0")
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        self._interrupt.close()
        self._interrupter.close()

    def _listen(self) -> None:
        assert self.listen_url is not None
        # TCP keepalives: a peer that vanished without a word is noticed within a minute, not hours.
        engine = create_engine(
            self.listen_url,
            poolclass=NullPool,
            connect_args={
                "connect_timeout": 5,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        )
        failing_since: float | None = None
        warned_at = -math.inf
        while not self._stop.is_set():
            try:
                self._listen_once(engine)
            except Exception as error:
                now = time.monotonic()
                if self.listening.is_set():  # it was connected: this is a new failure
                    failing_since = None
                cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                # A database outage is logged by the requests it fails; a listener that stays away
                # while they succeed (a wrong LISTEN_DATABASE_URL) is worth a warning of its own.
                if failing_since is None:
                    failing_since = now
                    logger.info("The notification listener is away (%s); waiters re-check meanwhile", cause)
                elif now - failing_since >= WARN_AFTER_SECONDS and now - warned_at >= WARN_AFTER_SECONDS:
                    warned_at = now
                    logger.warning(
                        "The notification listener has not reached the database for %d s (%s): waiting claims"
                        " and feed reads notice changes only every WAIT_RECHECK_SECONDS",
                        now - failing_since,
                        cause,
                    )
            finally:
                self.listening.clear()
            self._stop.wait(RECONNECT_SECONDS)
        engine.dispose()

    def _listen_once(self, engine: Engine) -> None:
        assert self._interrupt is not None
        connection: Any = engine.raw_connection()
        try:
            raw = connection.dbapi_connection
            raw.autocommit = True
            with raw.cursor() as cursor:
                cursor.execute("".join(f"LISTEN {topic.value};" for topic in Topic))
            self.listening.set()
            # Whatever was committed while no one listened wakes everyone once.
            self._wake_from_any_thread(frozenset(Topic))
            while not self._stop.is_set():
                readable, _, _ = select.select([raw, self._interrupt], [], [], PING_SECONDS)
                if self._interrupt in readable:
                    return
                if not readable:  # a dead peer sends nothing: ask, so that it fails
                    with raw.cursor() as cursor:
                        cursor.execute("SELECT 1")
                # Notifications may have come with the ping's answer too.
                raw.poll()
                topics = frozenset(Topic(notice.channel) for notice in raw.notifies)
                raw.notifies.clear()
                if topics:
                    self._wake_from_any_thread(topics)
        finally:
            connection.close()
