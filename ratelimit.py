"""Per-caller rate limits, one budget for reads and one for writes, counted by the `limits` library.

The budget belongs to the worker id, not the address: agents share hosts. `memory://` counts in
each process; `redis://…` shares one count across workers and instances. Every limited response
carries the IETF `RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers),
so a well-behaved agent can pace itself before it is refused.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

import telemetry
from errors import RateLimited

logger = logging.getLogger("taskflow.ratelimit")
# While the shared storage is unreachable requests are let through (a rate limiter must not take
# the board down with it); the failure is logged at most this often.
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
        self.storage = storage_from_string(storage_uri, wrap_exceptions=True)
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)
        self._warned_at = -math.inf
        self._lock = threading.Lock()

    def check(self, actor_id: str, *, writing: bool) -> dict[str, str]:
        """Count one request of `actor_id`; the headers to send, or `RateLimited` when over a limit."""
        policy = self.policies.get("write" if writing else "read")
        if policy is None:
            return {}
        try:
            return self._hit(policy, actor_id)
        except StorageError as error:
            self._warn(error)
            return {}

    def _hit(self, policy: Policy, actor_id: str) -> dict[str, str]:
        refused: RateLimitItem | None = None
        reported: tuple[int, float, RateLimitItem] | None = None
        for item in policy.items:
            allowed = self.strategy.hit(item, policy.kind, actor_id)
            reset_at, remaining = self.strategy.get_window_stats(item, policy.kind, actor_id)
            # Report the item that refused, else the one closest to running out.
            if not allowed and refused is None:
                refused, reported = item, (remaining, reset_at, item)
            elif refused is None and (reported is None or remaining < reported[0]):
                reported = (remaining, reset_at, item)
        assert reported is not None
        remaining, reset_at, item = reported
        reset = max(1, math.ceil(reset_at - time.time()))
        headers = {"RateLimit-Policy": policy.header, "RateLimit": f'"{policy.name(item)}";r={remaining};t={reset}'}
        if refused is not None:
            telemetry.count_rate_limited(policy.kind)
            raise RateLimited(
                f"Rate limit of {refused.amount} {policy.kind}s per {refused.get_expiry()} s reached; retry in {reset} s",
                headers={**headers, "Retry-After": str(reset)},
            )
        return headers

    def _warn(self, error: StorageError) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._warned_at < STORAGE_WARNING_SECONDS:
                return
            self._warned_at = now
        logger.warning("Rate limits are not enforced: their storage cannot be reached (%s)", error.storage_error)
