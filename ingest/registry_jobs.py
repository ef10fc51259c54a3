"""The ingestion job log in the registry's file: one row per job, one per file it handled."""

from __future__ import annotations

import sqlite3
import time
import uuid
from contextlib import AbstractContextManager
from typing import Any


class JobLog:
    """Mixed into :class:`~ingest.registry.Registry`, whose connections it uses."""

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def start_job(self, kind: str, *, now: float | None = None) -> str:
        job_id = "job-" + uuid.uuid4().hex[:16]
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (job_id, kind, started_at, status) VALUES (?,?,?,?)",
                (job_id, kind, now or time.time(), "running"),
            )
        return job_id

    def record_file(
        self,
        job_id: str,
        *,
        rel_path: str,
        doc_id: str | None,
        outcome: str,
        reason: str = "",
        stages: str = "{}",
        now: float | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO job_files VALUES (?,?,?,?,?,?,?)",
                (job_id, doc_id, rel_path, outcome, reason, stages, now or time.time()),
            )

    def finish_job(
        self, job_id: str, *, status: str, counts: str, now: float | None = None
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET finished_at=?, status=?, counts=? WHERE job_id=?",
                (now or time.time(), status, counts, job_id),
            )

    def forget_job(self, job_id: str) -> None:
        """Delete a job and its file rows (a pass that changed nothing: a watcher runs one
        every few seconds, and keeping them grew the registry without bound)."""
        with self._tx() as db:
            db.execute("DELETE FROM job_files WHERE job_id=?", (job_id,))
            db.execute("DELETE FROM jobs WHERE job_id=?", (job_id,))

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM jobs ORDER BY started_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in rows]

    def job_files(self, job_id: str) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM job_files WHERE job_id=? ORDER BY at", (job_id,)
            ).fetchall()
        return [dict(r) for r in rows]
