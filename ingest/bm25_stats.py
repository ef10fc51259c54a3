"""BM25 statistics per group, kept in the registry's SQLite file beside the documents.

A query's term weights (``idf`` from ``N`` and ``df``) must come only from documents its user may
read: with statistics over every group, a staff user could tell from rankings whether a word
occurs in another group's documents. So each group keeps its own chunk count, total length and
chunks per keyed term id (``bm25_group_corpus``, ``bm25_group_df``); a query sums them over the
groups its user may read (:func:`corpus`, :func:`frequencies`), and a document's weights use its
own group's average length when it is indexed. Term ids are keyed hashes (`ingest/sparse.py`), so
the tables hold no vocabulary.

The functions take an open connection: the registry calls them inside its own transactions, so
statistics move together with the version that is made current, replaced or deleted.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "SCHEMA",
    "TermCounts",
    "apply",
    "corpus",
    "frequencies",
    "per_group",
    "use_per_group",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS bm25_group_df (grp TEXT NOT NULL, term INTEGER NOT NULL,
    df INTEGER NOT NULL, PRIMARY KEY (grp, term)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bm25_group_corpus (grp TEXT PRIMARY KEY,
    n_docs INTEGER NOT NULL, total_len INTEGER NOT NULL);
"""
LAYOUT = "per-group"  # meta key 'bm25'; registries without it kept one global set


@dataclass(frozen=True)
class TermCounts:
    """What one version adds to the BM25 statistics: chunks, total length, chunk df per term."""

    chunks: int
    total_len: int
    df: Mapping[int, int]

    def pack(self) -> bytes:
        flat = array("I")
        for term, count in sorted(self.df.items()):
            flat.extend((term, count))
        return flat.tobytes()

    @classmethod
    def unpack(cls, chunks: int, total_len: int, blob: bytes | None) -> TermCounts:
        flat = array("I")
        flat.frombytes(blob or b"")
        return cls(chunks, total_len, dict(zip(flat[0::2], flat[1::2], strict=True)))


def per_group(db: sqlite3.Connection) -> bool:
    """Whether the registry keeps its statistics per group already."""
    found = db.execute("SELECT value FROM meta WHERE key='bm25'").fetchone()
    return found is not None and found[0] == LAYOUT


def use_per_group(db: sqlite3.Connection) -> None:
    """In a transaction: a registry from before per-group statistics gets them, built from its
    indexed versions (each keeps its own counts), and loses the global tables."""
    if per_group(db):
        return
    db.execute("DELETE FROM bm25_group_df")
    db.execute("DELETE FROM bm25_group_corpus")
    rows = db.execute(
        "SELECT d.group_name, v.chunks, v.total_len, v.terms FROM versions v "
        "JOIN documents d ON d.doc_id = v.doc_id WHERE v.status='indexed'"
    ).fetchall()
    for group, chunks, total_len, terms in rows:
        apply(db, group, TermCounts.unpack(chunks, total_len, terms), +1)
    db.execute("DROP TABLE IF EXISTS bm25_df")
    db.execute("DROP TABLE IF EXISTS bm25_corpus")
    db.execute("INSERT OR REPLACE INTO meta VALUES ('bm25', ?)", (LAYOUT,))


def apply(db: sqlite3.Connection, group: str, counts: TermCounts, sign: int) -> None:
    """Add (``sign`` +1) or take away (-1) one version's counts in its group's statistics."""
    db.execute(
        "INSERT INTO bm25_group_corpus (grp, n_docs, total_len) VALUES (?, ?, ?) "
        "ON CONFLICT(grp) DO UPDATE SET n_docs = n_docs + excluded.n_docs, "
        "total_len = total_len + excluded.total_len",
        (group, sign * counts.chunks, sign * counts.total_len),
    )
    db.executemany(
        "INSERT INTO bm25_group_df (grp, term, df) VALUES (?, ?, ?) ON CONFLICT(grp, term) "
        "DO UPDATE SET df = df + excluded.df",
        [(group, term, sign * n) for term, n in counts.df.items()],
    )
    if sign < 0:
        db.executemany(
            "DELETE FROM bm25_group_df WHERE grp=? AND term=? AND df <= 0",
            [(group, term) for term in counts.df],
        )
        db.execute("DELETE FROM bm25_group_corpus WHERE grp=? AND n_docs <= 0", (group,))


def corpus(db: sqlite3.Connection, groups: Iterable[str] | None) -> tuple[int, int]:
    """(chunks, total length) in ``groups``; every group when None."""
    query = "SELECT COALESCE(SUM(n_docs), 0), COALESCE(SUM(total_len), 0) FROM bm25_group_corpus"
    readable = None if groups is None else sorted(set(groups))
    if readable is None:
        row = db.execute(query).fetchone()
    elif not readable:
        return 0, 0
    else:
        row = db.execute(f"{query} WHERE grp IN ({_marks(readable)})", readable).fetchone()
    return int(row[0]), int(row[1])


def frequencies(
    db: sqlite3.Connection, terms: Iterable[int], groups: Iterable[str] | None
) -> dict[int, int]:
    """Term id -> chunks in ``groups`` (every group when None) containing it; absent if none."""
    wanted = sorted(set(terms))
    readable = None if groups is None else sorted(set(groups))
    if not wanted or readable == []:
        return {}
    query = f"SELECT term, SUM(df) FROM bm25_group_df WHERE term IN ({_marks(wanted)})"  # noqa: S608
    if readable is not None:
        query += f" AND grp IN ({_marks(readable)})"
    rows = db.execute(query + " GROUP BY term", [*wanted, *(readable or [])]).fetchall()
    return {int(term): int(df) for term, df in rows if df > 0}


def _marks(values: Sequence[object]) -> str:
    """Placeholders for an ``IN`` list (the values themselves are bound, never formatted)."""
    return ",".join("?" * len(values))
