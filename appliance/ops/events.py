"""Ingestion event sinks: the pipeline calls ``events.file_done(result)`` once per file.

:class:`OpsEvents` records each file into the task store and the metrics; :class:`FanoutEvents`
passes one result to several sinks (e.g. the audit sink and the ops sink), in order.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from .metrics import Metrics
from .tasks import TaskStore

log = logging.getLogger(__name__)


def stage_times(result: Any) -> dict[str, float]:
    """Per-stage seconds of a file result (``stages`` or ``timings``), numbers only."""
    raw = getattr(result, "stages", None) or getattr(result, "timings", None) or {}
    return {str(k): float(v) for k, v in dict(raw).items() if isinstance(v, int | float)}


class OpsEvents:
    """Records ingested, quarantined and deleted files; monitoring never stops an ingestion,
    so a task-store write that fails (disk full, locked) is logged and skipped."""

    def __init__(self, *, tasks: TaskStore | None = None, metrics: Metrics | None = None) -> None:
        self.tasks, self.metrics = tasks, metrics

    def file_done(self, result: Any) -> None:
        stages = stage_times(result)
        outcome = str(getattr(result, "outcome", "unknown"))
        chunks = int(getattr(result, "chunks", 0) or 0)
        if self.metrics is not None:
            self.metrics.ingest_file(outcome, sum(stages.values()), chunks)
        if self.tasks is None:
            return
        try:
            self.tasks.record_ingest(
                outcome=outcome,
                group=str(getattr(result, "group", "") or ""),
                doc_id=getattr(result, "doc_id", None),
                code=str(getattr(result, "code", "") or ""),
                chunks=chunks,
                pages=int(getattr(result, "pages", 0) or 0),
                stages=stages,
                name=getattr(result, "rel_path", None),
            )
        except sqlite3.Error as exc:
            log.warning("could not record an ingestion in the task store: %s", exc)


class FanoutEvents:
    """Calls every sink in order (None sinks are skipped); an error in one propagates."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def file_done(self, result: Any) -> None:
        for sink in self.sinks:
            sink.file_done(result)
