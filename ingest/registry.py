"""The document registry (SQLite in the home): documents, versions, jobs and BM25 statistics.

It is the source of truth for what is indexed. Milvus holds chunks keyed by (doc_id, version);
the registry says which version of each document is current. Every change is one SQLite
transaction, and the ingestion protocol (see `ingest/pipeline.py`) orders its steps so that a
`kill -9` anywhere leaves either the old or the new version current, never neither: a version is
first recorded as ``indexing``, its chunks are written, then one transaction makes it current
and moves the BM25 statistics (kept per group, see `ingest/bm25_stats.py`).
:meth:`Registry.unfinished` lists what a crash left behind.

File names and groups are stored in clear (admins list them); content hashes are keyed HMACs so
the registry cannot confirm a guessed document; document titles are stored encrypted by the caller.
A failure is stored as a reason code and its generic message (`ingest.reasons`); the parser's own
message, which can quote the document or name a server path, only sealed by the caller
(``error_detail``).

The schema and the row types are in `ingest.registry_rows`, the ingestion job log in
`ingest.registry_jobs`.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import bm25_stats
from .bm25_stats import TermCounts
from .errors import IngestError
from .reasons import reason_message
from .registry_jobs import JobLog
from .registry_rows import SCHEMA_SQL, SCHEMA_VERSION, Document, Unfinished
from .registry_upgrade import upgrade

__all__ = ["SCHEMA_VERSION", "Document", "Registry", "Unfinished"]


class Registry(JobLog):
    """One SQLite file; each call uses a short connection, so threads may share the object."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = Path(path)
        self._sync = "FULL" if durable else "OFF"  # OFF only for scratch registries (eval)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            found = upgrade(db, SCHEMA_VERSION)
            db.executescript(SCHEMA_SQL + bm25_stats.SCHEMA)
            if found is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif found != SCHEMA_VERSION:
                raise IngestError(
                    f"The document registry {self.path} has schema {found}; this version "
                    f"expects {SCHEMA_VERSION}.",
                    code="registry-schema",
                    hint="Upgrade the appliance or restore the matching version.",
                )
            migrate = not bm25_stats.per_group(db)
        if migrate:
            with self._tx() as db:
                bm25_stats.use_per_group(db)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute(f"PRAGMA synchronous={self._sync}")
            yield db
        finally:
            db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ----- documents ------------------------------------------------------------------------
    def find(self, source: str, rel_path: str) -> Document | None:
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM documents WHERE source=? AND rel_path=?", (source, rel_path)
            ).fetchone()
        return Document.from_row(row) if row else None

    def get(self, doc_id: str) -> Document | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM documents WHERE doc_id=?", (doc_id,)).fetchone()
        return Document.from_row(row) if row else None

    def documents(
        self, *, group: str | None = None, status: str | None = None, source: str | None = None
    ) -> list[Document]:
        query, args = "SELECT * FROM documents WHERE 1=1", []
        for column, value in (("group_name", group), ("status", status), ("source", source)):
            if value is not None:
                query += f" AND {column}=?"
                args.append(value)
        with self._db() as db:
            rows = db.execute(query + " ORDER BY rel_path", args).fetchall()
        return [Document.from_row(r) for r in rows]

    def begin_version(
        self,
        *,
        source: str,
        rel_path: str,
        group: str,
        content_hmac: str,
        size: int,
        fmt: str,
        now: float | None = None,
    ) -> tuple[str, int]:
        """Record a new version as ``indexing``; returns (doc_id, version)."""
        now = now or time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT doc_id, group_name FROM documents WHERE source=? AND rel_path=?",
                (source, rel_path),
            ).fetchone()
            if row is None:
                doc_id = _insert_document(
                    db,
                    source=source,
                    rel_path=rel_path,
                    group=group,
                    status="indexing",
                    content_hmac=None,
                    size=size,
                    fmt=fmt,
                    now=now,
                )
            else:
                doc_id = row["doc_id"]
            version = (
                1
                + db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM versions WHERE doc_id=?", (doc_id,)
                ).fetchone()[0]
            )
            db.execute(
                "INSERT INTO versions (doc_id, version, status, content_hmac, created_at)"
                " VALUES (?,?,?,?,?)",
                (doc_id, version, "indexing", content_hmac, now),
            )
        return doc_id, version

    def set_version_vault(self, doc_id: str, version: int, vault_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE versions SET vault_id=? WHERE doc_id=? AND version=?",
                (vault_id, doc_id, version),
            )

    def commit_version(
        self,
        doc_id: str,
        version: int,
        *,
        counts: TermCounts,
        pages: int,
        title_enc: str,
        size: int,
        fmt: str,
        warnings: Iterable[str] = (),
        now: float | None = None,
    ) -> list[Unfinished]:
        """Make ``version`` current in one transaction; returns the versions it superseded."""
        now = now or time.time()
        with self._tx() as db:
            version_row = db.execute(
                "SELECT * FROM versions WHERE doc_id=? AND version=?", (doc_id, version)
            ).fetchone()
            if version_row is None or version_row["status"] != "indexing":
                raise IngestError(
                    f"Version {version} of {doc_id} is not being indexed.", code="registry-state"
                )
            old = db.execute(
                "SELECT version, vault_id, chunks, total_len, terms FROM versions "
                "WHERE doc_id=? AND status='indexed'",
                (doc_id,),
            ).fetchall()
            group = _group_of(db, doc_id)
            for row in old:
                _apply(db, group, row, -1)
            bm25_stats.apply(db, group, counts, +1)
            db.execute(
                "UPDATE versions SET status='superseded' WHERE doc_id=? AND status='indexed'",
                (doc_id,),
            )
            db.execute(
                "UPDATE versions SET status='indexed', chunks=?, total_len=?, terms=? "
                "WHERE doc_id=? AND version=?",
                (counts.chunks, counts.total_len, counts.pack(), doc_id, version),
            )
            db.execute(
                "UPDATE documents SET status='indexed', current_version=?, content_hmac=?, "
                "size=?, format=?, pages=?, chunks=?, title_enc=?, vault_id=?, error_code='', "
                "error='', error_detail='', warnings=?, updated_at=? WHERE doc_id=?",
                (
                    version,
                    version_row["content_hmac"],
                    size,
                    fmt,
                    pages,
                    counts.chunks,
                    title_enc,
                    version_row["vault_id"],
                    "\n".join(warnings),
                    now,
                    doc_id,
                ),
            )
        return [Unfinished(doc_id, r["version"], r["vault_id"]) for r in old]

    def fail(
        self,
        *,
        source: str,
        rel_path: str,
        group: str,
        code: str,
        reason: str,
        content_hmac: str | None,
        size: int,
        fmt: str,
        detail: str = "",
        now: float | None = None,
    ) -> str:
        """Record a quarantined file (the current indexed version, if any, stays current).

        ``reason`` is the code's generic message; ``detail`` the failure's own message, sealed.
        """
        now = now or time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT doc_id, status FROM documents WHERE source=? AND rel_path=?",
                (source, rel_path),
            ).fetchone()
            if row is None:
                return _insert_document(
                    db,
                    source=source,
                    rel_path=rel_path,
                    group=group,
                    status="failed",
                    content_hmac=content_hmac,
                    size=size,
                    fmt=fmt,
                    now=now,
                    code=code,
                    reason=reason,
                    detail=detail,
                )
            doc_id = row["doc_id"]
            status = "indexed" if row["status"] == "indexed" else "failed"
            db.execute(
                "UPDATE documents SET status=?, error_code=?, error=?, error_detail=?, "
                "updated_at=?, content_hmac=CASE WHEN ?='failed' THEN ? ELSE content_hmac END "
                "WHERE doc_id=?",
                (status, code, reason, detail, now, status, content_hmac, doc_id),
            )
        return doc_id

    def delete(self, doc_id: str, *, now: float | None = None) -> list[Unfinished]:
        """Remove a document from the index; returns its versions (to delete chunks/vault)."""
        now = now or time.time()
        with self._tx() as db:
            rows = db.execute("SELECT * FROM versions WHERE doc_id=?", (doc_id,)).fetchall()
            for row in rows:
                if row["status"] == "indexed":
                    _apply(db, _group_of(db, doc_id), row, -1)
            db.execute(
                "UPDATE versions SET status='abandoned' WHERE doc_id=? AND status IN "
                "('indexed', 'indexing')",
                (doc_id,),
            )
            db.execute(
                "UPDATE documents SET status='deleted', current_version=0, chunks=0, "
                "vault_id='', updated_at=? WHERE doc_id=?",
                (now, doc_id),
            )
        return [Unfinished(doc_id, r["version"], r["vault_id"]) for r in rows]

    def purge(self, doc_id: str) -> None:
        """Forget a deleted document entirely (after its chunks and vault copy are gone)."""
        with self._tx() as db:
            db.execute("DELETE FROM documents WHERE doc_id=? AND status='deleted'", (doc_id,))

    # ----- recovery ---------------------------------------------------------------------------
    def unfinished(self) -> list[Unfinished]:
        """Versions a crash left behind: being indexed, superseded or abandoned (chunks may
        remain in Milvus; vault copies may remain)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT doc_id, version, vault_id FROM versions WHERE status IN "
                "('indexing', 'superseded', 'abandoned')"
            ).fetchall()
        return [Unfinished(r["doc_id"], r["version"], r["vault_id"]) for r in rows]

    def cleaned(self, item: Unfinished) -> None:
        """Forget a non-current version once its chunks and vault copy are deleted."""
        with self._tx() as db:
            db.execute(
                "UPDATE versions SET status='abandoned' WHERE doc_id=? AND version=? AND "
                "status='indexing'",
                (item.doc_id, item.version),
            )
            db.execute(
                "DELETE FROM versions WHERE doc_id=? AND version=? AND status IN "
                "('superseded', 'abandoned')",
                (item.doc_id, item.version),
            )
            db.execute(
                "UPDATE documents SET status='failed', error_code='interrupted', error=?, "
                "error_detail='' WHERE doc_id=? AND status='indexing' AND current_version=0",
                (reason_message("interrupted"), item.doc_id),
            )

    def current_versions(self, doc_ids: Iterable[str] | None = None) -> dict[str, int]:
        """doc_id → current version of indexed documents (all, or only those asked for)."""
        query = "SELECT doc_id, current_version FROM documents WHERE status='indexed'"
        wanted = sorted(set(doc_ids)) if doc_ids is not None else None
        with self._db() as db:
            if wanted is None:
                rows = db.execute(query).fetchall()
            elif not wanted:
                rows = []
            else:
                marks = ",".join("?" * len(wanted))
                rows = db.execute(f"{query} AND doc_id IN ({marks})", wanted).fetchall()
        return {r[0]: r[1] for r in rows}

    def indexed_versions(self) -> dict[str, tuple[int, str, int]]:
        """doc_id -> (current version, group, chunks) of every indexed document: what a
        search may return (the in-memory dense index follows it)."""
        query = (
            "SELECT doc_id, current_version, group_name, chunks FROM documents "
            "WHERE status='indexed'"
        )
        with self._db() as db:
            return {r[0]: (r[1], r[2], r[3]) for r in db.execute(query)}

    def get_many(self, doc_ids: Iterable[str]) -> dict[str, Document]:
        wanted = sorted(set(doc_ids))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        with self._db() as db:
            rows = db.execute(
                f"SELECT * FROM documents WHERE doc_id IN ({marks})",  # noqa: S608
                wanted,
            ).fetchall()
        return {r["doc_id"]: Document.from_row(r) for r in rows}

    # ----- BM25 statistics (per group: ingest/bm25_stats.py) -----------------------------------
    def corpus(self, groups: Iterable[str] | None = None) -> tuple[int, int]:
        """(chunks, total length) indexed in ``groups`` (every group when None)."""
        with self._db() as db:
            return bm25_stats.corpus(db, groups)

    def document_frequencies(
        self, terms: Iterable[int], groups: Iterable[str] | None = None
    ) -> dict[int, int]:
        """Term id -> chunks in ``groups`` (every group when None) that contain it."""
        with self._db() as db:
            return bm25_stats.frequencies(db, terms, groups)

    def query_stats(
        self, terms: Iterable[int], groups: Iterable[str]
    ) -> tuple[int, dict[int, int]]:
        """What a query by a reader of ``groups`` may weigh terms with: (chunks, term id ->
        chunks containing it), over those groups only, from one snapshot."""
        groups = sorted(set(groups))
        with self._db() as db:
            return bm25_stats.corpus(db, groups)[0], bm25_stats.frequencies(db, terms, groups)


def _insert_document(
    db: sqlite3.Connection,
    *,
    source: str,
    rel_path: str,
    group: str,
    status: str,
    content_hmac: str | None,
    size: int,
    fmt: str,
    now: float,
    code: str = "",
    reason: str = "",
    detail: str = "",
) -> str:
    doc_id = "doc-" + uuid.uuid4().hex[:20]
    db.execute(
        "INSERT INTO documents (doc_id, source, rel_path, group_name, status, content_hmac, "
        "size, format, error_code, error, error_detail, created_at, updated_at) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            doc_id,
            source,
            rel_path,
            group,
            status,
            content_hmac,
            size,
            fmt,
            code,
            reason,
            detail,
            now,
            now,
        ),
    )
    return doc_id


def _group_of(db: sqlite3.Connection, doc_id: str) -> str:
    row = db.execute("SELECT group_name FROM documents WHERE doc_id=?", (doc_id,)).fetchone()
    return str(row[0])


def _apply(db: sqlite3.Connection, group: str, version: sqlite3.Row, sign: int) -> None:
    counts = TermCounts.unpack(version["chunks"], version["total_len"], version["terms"])
    bm25_stats.apply(db, group, counts, sign)
