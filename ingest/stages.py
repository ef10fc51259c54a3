"""Running the pipeline's stages side by side: parsing ahead in worker threads, embedding in
one thread, writing in the caller's thread.

On two cores, embedding (one torch thread) is the critical path; parsing and chunking (child
processes at a lower CPU priority) fill the other core. Two things keep the embedder busy:

* :class:`ParseAhead` keeps parsing while a backlog of parsed work is small, measured in
  chunks rather than files, so that the parse core uses every gap (a burst of small files, or
  a big file embedding) to get ahead, and memory stays bounded when a huge document arrives;
* :class:`Prefetch` runs the next step (embedding) in its own thread while the caller writes
  the previous file to Milvus and the registry, which stay on the caller's thread.

Results come back as :class:`~concurrent.futures.Future` objects, so a step's exception
reaches the caller with the item it belongs to.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


def resolved(step: Callable[[], R]) -> Future[R]:
    """A finished future holding ``step()``'s result, or the exception it raised."""
    out: Future[R] = Future()
    try:
        out.set_result(step())
    except Exception as exc:  # noqa: BLE001 - handed to whoever reads the future
        out.set_exception(exc)
    return out


class ParseAhead(Generic[T, R]):
    """Run ``step`` over ``items`` in ``workers`` threads, yielding (item, future) as each
    finishes. Workers pause while the results not yet taken weigh ``max_weight`` or more
    (``weight`` of a result, e.g. its chunks) or number ``max_items``; a finished result is
    never dropped, so a single heavy one is always delivered.

    Use as a context manager: leaving it stops the workers after their current item.
    """

    def __init__(
        self,
        items: Iterable[T],
        step: Callable[[T], R],
        *,
        workers: int,
        weight: Callable[[R], int],
        max_weight: int,
        max_items: int,
        name: str = "parse",
    ) -> None:
        self._items = iter(items)
        self._step, self._weight = step, weight
        self._max_weight, self._max_items = max_weight, max(1, max_items)
        self._cond = threading.Condition()
        self._done: deque[tuple[T, Future[R], int]] = deque()
        self._held = 0  # weight of the results in _done
        self._running = 0  # workers that have not finished
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, workers))
        ]

    def __enter__(self) -> ParseAhead[T, R]:
        self._running = len(self._threads)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def __iter__(self) -> Iterator[tuple[T, Future[R]]]:
        while True:
            with self._cond:
                while not self._done and self._running:
                    self._cond.wait()
                if not self._done:
                    return
                item, future, weight = self._done.popleft()
                self._held -= weight
                self._cond.notify_all()
            yield item, future

    def _work(self) -> None:
        try:
            while (taken := self._next()) is not None:
                item = taken[0]
                future = resolved(functools.partial(self._step, item))
                weight = 0 if future.exception() else self._weight(future.result())
                with self._cond:
                    self._done.append((item, future, weight))
                    self._held += weight
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _next(self) -> tuple[T] | None:
        """The next item (in a 1-tuple) once the backlog allows; None when done or closed."""
        with self._cond:
            while not self._closed and (
                self._held >= self._max_weight or len(self._done) >= self._max_items
            ):
                self._cond.wait()
            if self._closed:
                return None
            for item in self._items:
                return (item,)
            return None


class Prefetch(Generic[S, R]):
    """Apply ``step`` to each element of ``source`` in one background thread, up to ``ahead``
    results ahead of the consumer; yields futures in source order.

    Use as a context manager: leaving it early stops the thread after its current step.
    """

    def __init__(
        self, source: Iterable[S], step: Callable[[S], R], *, ahead: int = 1, name: str = "embed"
    ) -> None:
        self._source, self._step = iter(source), step
        self._ahead = max(1, ahead)
        self._cond = threading.Condition()
        self._ready: deque[Future[R]] = deque()
        self._finished = self._closed = False
        self._error: BaseException | None = None  # raised by the source itself
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def __enter__(self) -> Prefetch[S, R]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def __iter__(self) -> Iterator[Future[R]]:
        while True:
            with self._cond:
                while not self._ready and not self._finished:
                    self._cond.wait()
                if not self._ready:
                    break
                future = self._ready.popleft()
                self._cond.notify_all()
            yield future
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        try:
            for element in self._source:
                future = resolved(functools.partial(self._step, element))
                with self._cond:
                    self._ready.append(future)
                    self._cond.notify_all()
                    while len(self._ready) >= self._ahead and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
        except Exception as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            self._error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()


__all__ = ["ParseAhead", "Prefetch", "resolved"]
