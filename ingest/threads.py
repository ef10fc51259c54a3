"""torch's intra-op thread count, per OS thread.

``torch.set_num_threads`` sets the OpenMP and MKL thread counts *of the calling thread*: a
thread started later still gets one worker per core (measured with torch 2.13: a matrix
product in a new thread ran on 2 cores after ``set_num_threads(1)`` in the main thread, while
``torch.get_num_threads()`` there still said 1). Code that runs torch in its own threads
(the ingestion pipeline's embedding thread, request threads that embed queries, the
generation thread) calls :func:`use_threads` in that thread before computing.
"""

from __future__ import annotations

import threading

_local = threading.local()


def use_threads(threads: int | None) -> None:
    """Make torch in the calling thread use ``threads`` intra-op threads (None: leave as is).
    Cheap to call before every computation: torch is only told once per thread and count."""
    if threads is None or threads < 1 or getattr(_local, "threads", None) == threads:
        return
    import torch

    torch.set_num_threads(threads)
    _local.threads = threads


__all__ = ["use_threads"]
