"""`ingest --watch`: run a pass whenever the drop folder changes (and at a steady interval).

File-system events (watchdog, inotify on Linux) wake the loop at once; a periodic rescan catches
what events miss (network shares often send none). A file still being written is left for the
next pass by the pipeline's settle check, so a pass after the last event picks it up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class _Waker:
    """A watchdog handler that only sets an event (no work in the observer thread)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def dispatch(self, _event: Any) -> None:
        self.event.set()


def watch(
    drop: Path,
    run_pass: Callable[[], Any],
    *,
    interval_s: float,
    settle_s: float,
    stop: threading.Event | None = None,
    max_passes: int | None = None,
) -> int:
    """Call ``run_pass`` now, after changes (debounced by ``settle_s``) and every ``interval_s``.

    Returns the number of passes; ends when ``stop`` is set or after ``max_passes``.
    """
    stop = stop or threading.Event()
    changed = threading.Event()
    observer = _start_observer(drop, changed)
    passes = 0
    try:
        while not stop.is_set():
            changed.clear()
            run_pass()
            passes += 1
            if max_passes is not None and passes >= max_passes:
                break
            if changed.wait(interval_s) and not stop.is_set():
                stop.wait(settle_s)  # let a burst of writes finish before the next pass
    finally:
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
    return passes


def _start_observer(drop: Path, changed: threading.Event) -> Any:
    try:
        from watchdog.observers import Observer
    except ImportError:  # pragma: no cover - watchdog is a dependency; polling still works
        log.warning("watchdog is not installed; polling every interval only")
        return None
    observer = Observer()
    observer.schedule(_Waker(changed), str(drop), recursive=True)  # type: ignore[arg-type]
    observer.daemon = True
    observer.start()
    return observer
