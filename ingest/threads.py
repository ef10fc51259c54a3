"""torch's intra-op thread count, per OS thread.

``torch.set_num_threads`` sets the OpenMP and MKL thread counts *of the calling thread*: a
thread started later still gets one worker per core (measured with torch 2.13: a matrix
product in a new thread ran on 2 cores after ``set_num_threads(1)`` in the main thread, while
``torch.get_num_threads()`` there still said 1). So code that runs torch in a thread of its own
(the generation thread, the ingestion pipeline's embedding thread) calls :func:`use_threads` in
that thread before computing, and code that computes in a thread it shares with other work (a
request thread or the main thread embedding a query) uses :func:`torch_threads`, which puts the
thread's own count back afterwards: otherwise the embedder's one thread would stay with, and
slow down, whatever the caller runs next in that thread (measured: a bare ``generate`` after a
query embedding in the same thread ran 60 % longer on one core).

A thread that once ran a parallel torch operation keeps its OpenMP team (idle workers) for as
long as it lives, and while more such threads are alive than there are cores, GNU OpenMP cuts
every team's spin-wait short, so each parallel region wakes its workers through the kernel
(expensive on a VM). Measured with the Qwen2-0.5B bench model: one ``.to(bfloat16)`` in the
main thread made every later answer 13 % slower (4.85 s against 4.28 s for 32 tokens). So
multi-threaded torch work outside generation, such as a model load that converts dtypes, goes
through :func:`run_in_thread`, whose thread (and team) ends with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_local = threading.local()


def use_threads(threads: int | None) -> None:
    """Make torch in the calling thread use ``threads`` intra-op threads from now on (None:
    leave as is). Cheap to call before every computation: torch is told once per thread and
    count."""
    if threads is None or threads < 1 or getattr(_local, "threads", None) == threads:
        return
    import torch

    torch.set_num_threads(threads)
    _local.threads = threads


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Inside the block torch in the calling thread uses ``threads`` intra-op threads (None:
    leave as is); after it, as many as before."""
    if threads is None or threads < 1:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before == threads:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_in_thread(fn: Callable[[], T], *, threads: int | None, name: str) -> T:
    """``fn()`` in a new thread that ends with it, torch there using ``threads`` (None: its
    default); returns its result or raises its exception in the caller."""

    def work() -> T:
        use_threads(threads)
        return fn()

    # Leaving the block joins the executor's one thread, so its OpenMP team is gone on return.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) as pool:
        return pool.submit(work).result()


__all__ = ["run_in_thread", "torch_threads", "use_threads"]
