"""Riding out a Milvus outage: retry a write with a doubling pause until a time limit.

The ingestion pipeline wraps each of its Milvus writes and deletes in :meth:`Retrier.call`. Only
:class:`~ingest.errors.StoreUnavailable` (server down, unreachable, too slow) is retried; any
other error is the document's or the configuration's and goes on at once. Past the time limit
the last StoreUnavailable is raised with how long it was tried: the job stops there, its files
stay in the drop folder (nothing is quarantined for a fault that is not theirs) and
`Pipeline.recover` cleans up at the next pass.

Time and sleep are parameters, so tests run the schedule without waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import StoreUnavailable

__all__ = ["Retrier", "RetryPolicy"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``for_s``: how long one operation is retried (0: never); pauses start at ``initial_s``
    and double up to ``max_s``."""

    for_s: float = 300.0
    initial_s: float = 0.5
    max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.for_s < 0 or self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError("retry: for_s >= 0, initial_s > 0 and max_s >= initial_s")

    def pause(self, attempt: int) -> float:
        """The pause after failed attempt ``attempt`` (1-based)."""
        return float(min(self.max_s, self.initial_s * 2 ** min(attempt - 1, 62)))


class Retrier:
    """Retries callables under one policy and counts what the outages cost (for the report)."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy, self.sleep, self.clock = policy, sleep, clock
        self.retries = 0
        self.waited_s = 0.0

    def call(self, fn: Callable[[], T], *, what: str, again: Callable[[], T] | None = None) -> T:
        """``fn()``; after a StoreUnavailable, ``again()`` (default ``fn``) until it succeeds or
        the policy's time runs out. ``what`` names the operation in the log."""
        started = self.clock()
        attempt, step = 0, fn
        while True:
            try:
                return step()
            except StoreUnavailable as exc:
                attempt += 1
                pause = self.policy.pause(attempt)
                spent = self.clock() - started
                if spent + pause > self.policy.for_s:
                    raise _gave_up(exc, what, attempt, spent) from None
                log.warning(
                    "Milvus unavailable while %s (attempt %d, %.1f s so far); retrying in %.1f s",
                    what,
                    attempt,
                    spent,
                    pause,
                )
                self.sleep(pause)
                self.retries += 1
                self.waited_s += pause
                step = again or fn


def _gave_up(exc: StoreUnavailable, what: str, attempts: int, spent: float) -> StoreUnavailable:
    return StoreUnavailable(
        f"{exc.message.rstrip('.')}. Gave up {what} after {attempts} attempts over {spent:.0f} s.",
        hint="Nothing was quarantined: the files stay in the drop folder and the next ingest "
        "pass takes them once Milvus is back (milvus.retry_for_s sets how long a job waits). "
        + exc.hint,
        timed_out=exc.timed_out,
    )
