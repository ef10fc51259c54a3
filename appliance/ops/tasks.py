"""The bounded task store: recent questions and ingested files, one SQLite file per home.

Each kind keeps its ``kept`` newest rows (older ones are pruned in batches, so an insert costs
one small transaction). Question text, user names and document names are stored only when
``monitoring.show_names`` allows; otherwise those columns stay NULL.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

TASKS_FILE = "tasks.db"
Kind = Literal["questions", "ingests"]
KINDS: tuple[Kind, ...] = ("questions", "ingests")
STAGES = ("parse_s", "chunk_s", "embed_s", "write_s")
_PRUNE_EVERY = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS questions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, question_id TEXT,
    groups TEXT NOT NULL DEFAULT '', user TEXT, channel TEXT NOT NULL, mode TEXT NOT NULL,
    model TEXT, outcome TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    retrieval_ms REAL, generation_ms REAL, first_token_ms REAL,
    tokens INTEGER NOT NULL DEFAULT 0, tokens_per_s REAL, sources INTEGER NOT NULL DEFAULT 0,
    question TEXT);
CREATE INDEX IF NOT EXISTS questions_at ON questions(at);
CREATE TABLE IF NOT EXISTS ingests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, doc_id TEXT,
    group_name TEXT NOT NULL DEFAULT '', name TEXT, outcome TEXT NOT NULL,
    code TEXT NOT NULL DEFAULT '', chunks INTEGER NOT NULL DEFAULT 0,
    pages INTEGER NOT NULL DEFAULT 0, parse_s REAL, chunk_s REAL, embed_s REAL, write_s REAL,
    total_s REAL);
CREATE INDEX IF NOT EXISTS ingests_at ON ingests(at);
"""


class TaskStore:
    """Thread-safe (one connection behind a lock); several processes may share the file."""

    def __init__(
        self,
        path: Path,
        *,
        kept: int = 10_000,
        show_names: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path, self.kept, self.show_names, self.clock = path, kept, show_names, clock
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._since_prune = dict.fromkeys(KINDS, 0)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        path.chmod(0o600)

    @classmethod
    def for_settings(cls, settings: Any) -> TaskStore:
        m = settings.monitoring
        return cls(settings.home / TASKS_FILE, kept=m.tasks_kept, show_names=m.show_names)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ----- writes ----------------------------------------------------------------------------
    def record_question(
        self,
        *,
        groups: Iterable[str],
        channel: str,
        mode: str,
        outcome: str,
        model: str | None = None,
        reason: str = "",
        retrieval_ms: float | None = None,
        generation_ms: float | None = None,
        first_token_ms: float | None = None,
        tokens: int = 0,
        sources: int = 0,
        question_id: str | None = None,
        user: str | None = None,
        question: str | None = None,
        at: float | None = None,
    ) -> None:
        rate = tokens / (generation_ms / 1000) if tokens and generation_ms else None
        row = {
            "at": self.clock() if at is None else at,
            "question_id": question_id,
            "groups": ",".join(sorted(groups)),
            "user": user if self.show_names else None,
            "channel": channel,
            "mode": mode,
            "model": model,
            "outcome": outcome,
            "reason": reason[:200],
            "retrieval_ms": retrieval_ms,
            "generation_ms": generation_ms,
            "first_token_ms": first_token_ms,
            "tokens": tokens,
            "tokens_per_s": rate,
            "sources": sources,
            "question": question if self.show_names else None,
        }
        self._insert("questions", row)

    def record_ingest(
        self,
        *,
        outcome: str,
        group: str,
        doc_id: str | None = None,
        code: str = "",
        chunks: int = 0,
        pages: int = 0,
        stages: dict[str, float] | None = None,
        name: str | None = None,
        at: float | None = None,
    ) -> None:
        stages = stages or {}
        row: dict[str, Any] = {
            "at": self.clock() if at is None else at,
            "doc_id": doc_id,
            "group_name": group,
            "name": name if self.show_names else None,
            "outcome": outcome,
            "code": code,
            "chunks": chunks,
            "pages": pages,
            **{s: stages.get(s) for s in STAGES},
            "total_s": sum(stages.values()) if stages else None,
        }
        self._insert("ingests", row)

    def observe_answer(self, answer: Any, user: Any, channel: str, outcome: str) -> None:
        """The AnswerEngine observer (same signature as :meth:`Metrics.observe_answer`)."""
        self.record_question(
            groups=getattr(user, "groups", ()) or (),
            channel=channel,
            mode=getattr(answer, "mode", None) or "none",
            outcome=outcome,
            model=getattr(answer, "model", None),
            reason=getattr(answer, "fallback_reason", "") or "",
            retrieval_ms=getattr(answer, "retrieval_ms", None),
            generation_ms=getattr(answer, "generation_ms", None) or None,
            first_token_ms=getattr(answer, "first_token_ms", None),
            tokens=getattr(answer, "tokens", 0) or 0,
            sources=len(getattr(answer, "sources", ()) or ()),
            question_id=getattr(answer, "question_id", None),
            user=getattr(user, "name", None),
            question=getattr(answer, "question", None),
        )

    def _insert(self, kind: Kind, row: dict[str, Any]) -> None:
        columns = ",".join(row)
        marks = ",".join("?" * len(row))
        sql = f"INSERT INTO {kind} ({columns}) VALUES ({marks})"  # noqa: S608 - fixed names
        with self._lock:
            self._db.execute(sql, tuple(row.values()))
            self._since_prune[kind] += 1
            if self._since_prune[kind] >= _PRUNE_EVERY:
                self._prune(kind)

    def _prune(self, kind: Kind) -> None:
        self._since_prune[kind] = 0
        self._db.execute(
            f"DELETE FROM {kind} WHERE id <= (SELECT id FROM {kind} "  # noqa: S608
            "ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (self.kept,),
        )

    def prune(self) -> None:
        """Drop rows beyond ``kept`` now (writes also do so every few dozen inserts)."""
        with self._lock:
            for kind in KINDS:
                self._prune(kind)

    # ----- reads -----------------------------------------------------------------------------
    def recent(self, kind: Kind, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ``limit`` rows of ``kind``, newest first."""
        return self._select(kind, "1", (), "id DESC", limit)

    def rows_since(self, ts: float, kind: Kind = "questions") -> list[dict[str, Any]]:
        """Every kept row of ``kind`` at or after ``ts``, oldest first."""
        return self._select(kind, "at >= ?", (ts,), "id", -1)

    def last_errors(self, limit: int = 5) -> list[dict[str, Any]]:
        """The newest failed ingestions and questions that ended in an error, newest first."""
        rows = [
            {"kind": "ingest", "at": r["at"], "code": r["code"], "detail": r["group_name"]}
            for r in self._select("ingests", "outcome = 'failed'", (), "id DESC", limit)
        ] + [
            {"kind": "question", "at": r["at"], "code": r["reason"], "detail": r["channel"]}
            for r in self._select("questions", "outcome = 'error'", (), "id DESC", limit)
        ]
        return sorted(rows, key=lambda r: r["at"], reverse=True)[:limit]

    def oldest(self, kind: Kind) -> float | None:
        with self._lock:
            row = self._db.execute(f"SELECT MIN(at) FROM {kind}").fetchone()  # noqa: S608
        return None if row[0] is None else float(row[0])

    def count(self, kind: Kind) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {kind}").fetchone()[0])  # noqa: S608

    def _select(
        self, kind: Kind, where: str, args: tuple[Any, ...], order: str, limit: int
    ) -> list[dict[str, Any]]:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        sql = f"SELECT * FROM {kind} WHERE {where} ORDER BY {order} LIMIT ?"  # noqa: S608
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [dict(r) for r in rows]
