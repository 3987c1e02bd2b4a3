"""The lease sweeper: a background thread that hands back tasks whose lease ran out.

Reads already report such a task as pending (`workflow.as_read`) and claims take it at once,
so the sweeper only makes the database agree, with the `lease_expired` audit row. Every process
runs one; on PostgreSQL each sweep takes an advisory lock first, so across a deployment one
sweeps at a time and the others skip that turn.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import Engine

import workflow
from database import advisory_lock, transaction

logger = logging.getLogger("taskflow.sweeper")
# Tasks handed back per transaction; a sweep takes as many batches as there are.
BATCH = 200


class LeaseSweeper:
    def __init__(self, engine: Engine, interval: float, swept: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        self.interval = interval
        # Told after a sweep handed tasks back: they are claimable again, and claims may be waiting.
        self.swept = swept
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="taskflow-lease-sweeper", daemon=True)

    def sweep(self) -> int:
        """Hand back every task whose lease ran out, if no other process is sweeping; how many."""
        swept = 0
        while True:
            with transaction(self.engine) as session:
                if not advisory_lock(session, "lease-sweeper", wait=False):
                    return swept
                batch = workflow.expire_leases(session, limit=BATCH)
            swept += batch
            if batch < BATCH:
                return swept

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                swept = self.sweep()
            except Exception:
                # The database may be away for a while; the next turn tries again.
                logger.exception("The lease sweep failed")
                continue
            if swept:
                self.swept()
                logger.info("Handed back %d task(s) whose lease ran out", swept)
