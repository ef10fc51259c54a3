"""The fine-tuning records of one home: data sets, jobs and their loss curves (SQLite).

Only metadata lives here (names, hashes, counts, settings, progress); training text, examples,
checkpoints and adapters are encrypted files (see :mod:`.datasets`, :mod:`.checkpoint`). One
file, ``<home>/finetune/finetune.db``, shared by the CLI, a training process and the server
(WAL mode; each call opens a short connection).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..sqlite_db import Store, connect

DB_FILE = "finetune.db"
FINETUNE_STORE = Store(
    "fine-tuning database",
    "FINETUNE_STORE",
    "Check the path and permissions of <home>/finetune, or restore the file from backup.",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, counts TEXT NOT NULL, created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, base TEXT NOT NULL, base_package TEXT NOT NULL,
    base_manifest_sha256 TEXT NOT NULL, dataset_id TEXT NOT NULL, dataset TEXT NOT NULL,
    data_sha256 TEXT NOT NULL, settings TEXT NOT NULL, state TEXT NOT NULL,
    reason_code TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
    step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0,
    examples INTEGER NOT NULL DEFAULT 0, loss REAL, tokens_per_s REAL, eta_s REAL,
    checkpoint_step INTEGER, checkpoint_at REAL, checkpoint_bytes INTEGER,
    pid INTEGER, cancel_requested INTEGER NOT NULL DEFAULT 0, created_by TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL);
CREATE TABLE IF NOT EXISTS losses (
    job TEXT NOT NULL, step INTEGER NOT NULL, loss REAL NOT NULL, tokens INTEGER NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (job, step));
"""
JOB_COLUMNS = frozenset(
    [
        "id",
        "name",
        "base",
        "base_package",
        "base_manifest_sha256",
        "dataset_id",
        "dataset",
        "data_sha256",
        "settings",
        "state",
        "reason_code",
        "reason",
        "step",
        "total_steps",
        "examples",
        "loss",
        "tokens_per_s",
        "eta_s",
        "checkpoint_step",
        "checkpoint_at",
        "checkpoint_bytes",
        "pid",
        "cancel_requested",
        "created_by",
        "created_at",
        "updated_at",
        "finished_at",
    ]
)


class FinetuneDb:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / DB_FILE
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)
        self.path.chmod(0o600)

    @contextmanager
    def _db(self, *, transaction: bool = False) -> Iterator[sqlite3.Connection]:
        with connect(
            self.path, FINETUNE_STORE, pragmas=("journal_mode = WAL",), transaction=transaction
        ) as db:
            db.row_factory = sqlite3.Row
            yield db

    # ----- data sets -------------------------------------------------------------------------
    def add_dataset(self, row: dict[str, Any]) -> None:
        row = {**row, "counts": json.dumps(row["counts"], sort_keys=True)}
        with self._db() as db:
            db.execute(
                "INSERT INTO datasets (id, name, sha256, size, counts, created_at, created_by) "
                "VALUES (:id, :name, :sha256, :size, :counts, :created_at, :created_by)",
                row,
            )

    def datasets(self) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM datasets ORDER BY created_at, name").fetchall()
        return [_dataset(r) for r in rows]

    def dataset(self, name: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
        return _dataset(row) if row else None

    def delete_dataset(self, dataset_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))

    # ----- jobs ------------------------------------------------------------------------------
    def add_job(self, row: dict[str, Any]) -> None:
        row = {**row, "settings": json.dumps(row["settings"], sort_keys=True)}
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._db() as db:
            db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", row)  # noqa: S608

    def update_job(self, job_id: str, **fields: Any) -> None:
        unknown = set(fields) - JOB_COLUMNS
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = :_id", {**fields, "_id": job_id})  # noqa: S608

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_job(r) for r in rows]

    def jobs_using(self, dataset_id: str) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs WHERE dataset_id = ?", (dataset_id,)).fetchall()
        return [_job(r) for r in rows]

    # ----- loss curve ------------------------------------------------------------------------
    def record_loss(self, job_id: str, step: int, loss: float, tokens: int, at: float) -> None:
        """One step's loss; a resumed job recomputes steps after its checkpoint (replaced)."""
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO losses (job, step, loss, tokens, at) VALUES (?,?,?,?,?)",
                (job_id, step, loss, tokens, at),
            )

    def losses(self, job_id: str) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT step, loss, tokens, at FROM losses WHERE job = ? ORDER BY step", (job_id,)
            ).fetchall()
        return [dict(r) for r in rows]


def _dataset(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["counts"] = json.loads(out["counts"])
    return out


def _job(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["settings"] = json.loads(out["settings"])
    out["cancel_requested"] = bool(out["cancel_requested"])
    return out
