"""Per-caller rate limits, one budget for reads and one for writes, counted by the `limits` library.

The budget belongs to the worker id, not the address: agents share hosts. `memory://` counts in
each process; `redis://…` shares one count across workers and instances. Counting is async and
happens on the event loop as soon as the caller is known, so a refused request never takes a
request thread or a place in the queue for one. Every limited response carries the IETF
`RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers), so a
well-behaved agent can pace itself before it is refused.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

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
    def __init__(self, read: str | None, write: str | None, storage_uri: str) -> None:
        self.policies = {
            kind: Policy(kind, tuple(parse_many(spec))) for kind, spec in (("read", read), ("write", write)) if spec
        }
        if storage_uri.startswith("memory"):
            storage = storage_from_string(f"async+{storage_uri}")
        else:
            storage = storage_from_string(
                f"async+{storage_uri}",
                implementation="redispy",
                wrap_exceptions=True,
                socket_timeout=STORAGE_TIMEOUT_SECONDS,
                socket_connect_timeout=STORAGE_TIMEOUT_SECONDS,
            )
        # A moving window counts exactly: no burst at a window's edge, and Retry-After is exact.
        self.strategy = MovingWindowRateLimiter(storage)
        self._down_until = -math.inf
        self._warnings = telemetry.Throttle(STORAGE_WARNING_SECONDS, logger)

    async def check(self, actor_id: str, *, writing: bool) -> dict[str, str]:
        """Count one request of `actor_id`; the headers to send, or `RateLimited` when over a limit."""
        policy = self.policies.get("write" if writing else "read")
        if policy is None or time.monotonic() < self._down_until:
            return {}
        try:
            return await self._hit(policy, actor_id)
        except StorageError as error:
            self._down_until = time.monotonic() + STORAGE_RETRY_SECONDS
            self._warnings.warn(
                "storage", "Rate limits are not enforced: their storage cannot be reached (%s)", error.storage_error
            )
            return {}

    async def _hit(self, policy: Policy, actor_id: str) -> dict[str, str]:
        # Every window is tested before any is counted: a refused request uses up no budget, and
        # the answer names the window that frees up last.
        refused = [item for item in policy.items if not await self.strategy.test(item, policy.kind, actor_id)]
        if not refused:
            for item in policy.items:
                await self.strategy.hit(item, policy.kind, actor_id)
        now = time.time()
        windows = []
        for item in refused or policy.items:
            reset_at, remaining = await self.strategy.get_window_stats(item, policy.kind, actor_id)
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
