"""Per-caller rate limits, one budget for reads and one for writes, counted by the `limits` library.

The budget belongs to the worker id, not the address: agents share hosts. `memory://` counts in
each process; `redis://…` shares one count across workers and instances. Counting happens on the
event loop as soon as the caller is known (in memory it is a dict under a lock; Redis is asked
asynchronously), so a refused request never waits for a request thread. Every response to a
limited caller carries the IETF `RateLimit-Policy` and `RateLimit` headers
(draft-ietf-httpapi-ratelimit-headers), so a well-behaved agent can pace itself before it is refused.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

import telemetry
from errors import RateLimited

logger = logging.getLogger("taskflow.ratelimit")
# Seconds a Redis call may take before it counts as a failure: a hung Redis must not hang requests.
STORAGE_TIMEOUT_SECONDS = 0.25
# After a failure the storage is left alone this long: requests go through unlimited meanwhile
# (a rate limiter must not take the board down with it), without each one waiting for a timeout.
STORAGE_RETRY_SECONDS = 5.0
# The failure is logged at most this often.
STORAGE_WARNING_SECONDS = 60.0


@dataclass(frozen=True)
class Policy:
    kind: str  # "read" or "write"
    items: tuple[RateLimitItem, ...]

    def name(self, item: RateLimitItem) -> str:
        return f"{self.kind}-{item.get_expiry()}s"

    @property
    def header(self) -> str:
        return ", ".join(f'"{self.name(item)}";q={item.amount};w={item.get_expiry()}' for item in self.items)


class RateLimiter:
    """Made when the app starts, on its event loop (an async Redis client belongs to one), and closed when it stops."""

    def __init__(self, read: str | None, write: str | None, storage_uri: str) -> None:
        self.policies = {
            kind: Policy(kind, tuple(parse_many(spec))) for kind, spec in (("read", read), ("write", write)) if spec
        }
        # Moving windows count exactly: no burst at a window's edge, and Retry-After is exact. The
        # async memory storage would expire entries through a thread-pool hop, taking request
        # threads; the plain one is a dict under a lock, which the event loop can afford.
        self.strategy: MovingWindowRateLimiter | AsyncMovingWindow
        if storage_uri.startswith("memory"):
            self.strategy = MovingWindowRateLimiter(storage_from_string(storage_uri))
        else:
            self.strategy = AsyncMovingWindow(
                storage_from_string(
                    f"async+{storage_uri}",
                    implementation="redispy",
                    wrap_exceptions=True,
                    socket_timeout=STORAGE_TIMEOUT_SECONDS,
                    socket_connect_timeout=STORAGE_TIMEOUT_SECONDS,
                )
            )
        self._down_until = -math.inf
        self._warnings = telemetry.Throttle(STORAGE_WARNING_SECONDS, logger)

    async def check(self, actor_id: str, *, writing: bool) -> dict[str, str]:
        """Count one request of `actor_id`; the headers to send, or `RateLimited` when over a limit."""
        policy = self.policies.get("write" if writing else "read")
        if policy is None or time.monotonic() < self._down_until:
            return {}
        try:
            return await self._hit(policy, actor_id)
        except RateLimited:
            raise
        except Exception as error:  # the storage, whatever its client raised
            self._down_until = time.monotonic() + STORAGE_RETRY_SECONDS
            cause = getattr(error, "storage_error", error)
            self._warnings.warn(
                "storage", "Rate limits are not enforced: their storage failed (%s: %s)", type(cause).__name__, cause
            )
            return {}

    async def close(self) -> None:
        client = getattr(getattr(self.strategy.storage, "bridge", None), "storage", None)
        if client is not None:
            await client.aclose()  # the redis.asyncio client, bound to the loop that is ending

    async def _ask(self, method: str, item: RateLimitItem, policy: Policy, actor_id: str) -> Any:
        answer = getattr(self.strategy, method)(item, policy.kind, actor_id)
        return await answer if inspect.isawaitable(answer) else answer

    async def _hit(self, policy: Policy, actor_id: str) -> dict[str, str]:
        refused: list[RateLimitItem] = []
        if len(policy.items) > 1:
            # Tested first, so that a request one window refuses uses up nothing of the others.
            refused = [item for item in policy.items if not await self._ask("test", item, policy, actor_id)]
        if not refused:
            # A hit is atomic (in Redis, a script): of many requests at once, only the budget's worth pass.
            refused = [item for item in policy.items if not await self._ask("hit", item, policy, actor_id)]
        now = time.time()
        windows = []
        for item in refused or policy.items:
            reset_at, remaining = await self._ask("get_window_stats", item, policy, actor_id)
            windows.append((max(1, math.ceil(reset_at - now)), remaining, item))
        # Refused: the longest wait. Let through: the window closest to running out.
        reset, remaining, item = max(windows, key=lambda w: w[0]) if refused else min(windows, key=lambda w: w[1])
        headers = {"RateLimit-Policy": policy.header, "RateLimit": f'"{policy.name(item)}";r={remaining};t={reset}'}
        if refused:
            telemetry.count_rate_limited(policy.kind)
            raise RateLimited(
                f"Rate limit of {item.amount} {policy.kind}s per {item.get_expiry()} s reached; retry in {reset} s",
                headers={**headers, "Retry-After": str(reset)},
            )
        return headers
