"""Bounded concurrency with a bounded queue: a slot, a wait in line, or 429 at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..errors import Overloaded


class Limiter:
    def __init__(self, *, concurrent: int, queue: int, queue_timeout_s: float) -> None:
        self.concurrent, self.queue, self.queue_timeout_s = concurrent, queue, queue_timeout_s
        self._sem: asyncio.Semaphore | None = None
        self.active = 0
        self.waiting = 0

    @property
    def sem(self) -> asyncio.Semaphore:
        if self._sem is None:  # created inside the server's event loop
            self._sem = asyncio.Semaphore(self.concurrent)
        return self._sem

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.sem.locked() and self.waiting >= self.queue:
            raise Overloaded(
                f"{self.active} answers are running and {self.waiting} are waiting.",
                hint="Retry in a few seconds.",
            )
        self.waiting += 1
        try:
            await asyncio.wait_for(self.sem.acquire(), timeout=self.queue_timeout_s)
        except TimeoutError:
            raise Overloaded(
                f"No answer slot became free within {self.queue_timeout_s:.0f} s.",
                hint="Retry later; the appliance is busy.",
            ) from None
        finally:
            self.waiting -= 1
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self.sem.release()
