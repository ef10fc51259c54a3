"""Does the index hold what the registry says? `appliance docs verify [--repair]`.

The registry is the source of truth (see `ingest.registry`): every ``indexed`` document has one
current version whose chunks are ``<doc_id>:<version>:0 .. n-1``. :func:`compare` reads every
row of the collection once and lists what disagrees:

- ``missing``: chunks of a current version that are not in Milvus (a Milvus data directory
  restored from an older backup, a lost write);
- ``duplicate``: a chunk id stored more than once (Milvus shows one row per id to queries and
  searches, so these are found by counting: one count for the collection, then one per version
  only when that count is higher than the number of distinct ids);
- ``stale``: rows of a version that is no longer current (a restored backup brings them back);
- ``orphan``: rows of a document the registry does not index (deleted, failed or unknown).

Versions an interrupted job left (``indexing``, ``superseded``, ``abandoned``) are the next
pass's to clean (`Pipeline.recover`), not findings. :func:`repair` deletes stale and orphan rows
and re-indexes documents with missing or duplicate chunks from their originals: the encrypted
vault copy (inbox), or the file in the drop folder when its content is still the indexed one
(mirror; a changed file is left to the next pass, which indexes the new content).

The collection's embedding model is checked when the store opens (`ingest.schema`); a mismatch
is reported by the caller as ``wrong-embedder`` with what to do.

:func:`quick_check` is the cheap form for `appliance status` and `/readyz`: row count against
the registry's chunk count, skipped while a job is writing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from secure.errors import SecureError

from .errors import IngestError, StoreUnavailable

__all__ = ["Finding", "QuickCheck", "Report", "compare", "quick_check", "repair"]

Kind = Literal["missing", "duplicate", "stale", "orphan", "wrong-embedder", "unrepaired"]
_REINDEX = ("missing", "duplicate")
_DELETE = ("stale", "orphan")


@dataclass(frozen=True)
class Finding:
    kind: Kind
    doc_id: str
    version: int | None
    chunks: int  # rows concerned (missing, extra, stale or orphan ones)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "doc_id": self.doc_id,
            "version": self.version,
            "chunks": self.chunks,
            "detail": self.detail,
        }


@dataclass
class Report:
    documents: int = 0  # indexed documents in the registry
    expected_chunks: int = 0
    index_rows: int = 0
    findings: list[Finding] = field(default_factory=list)
    repaired: list[Finding] = field(default_factory=list)
    pending: int = 0  # versions an interrupted job left for the next pass to clean

    @property
    def ok(self) -> bool:
        return not self.findings

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.findings))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "documents": self.documents,
            "expected_chunks": self.expected_chunks,
            "index_rows": self.index_rows,
            "pending_cleanup": self.pending,
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
            "repaired": [f.to_dict() for f in self.repaired],
        }


def compare(registry: Any, store: Any) -> Report:
    """Every disagreement between ``registry`` (`ingest.registry.Registry`) and ``store``
    (`ingest.store.ChunkStore`); reads the whole collection once."""
    pending = {(u.doc_id, u.version) for u in registry.unfinished()}
    current = registry.current_versions()
    chunks = {d.doc_id: d.chunks for d in registry.documents(status="indexed")}
    total = int(store.count())
    rows = store.index_rows()
    report = Report(len(current), sum(chunks.values()), total, pending=len(pending))
    by_version: dict[tuple[str, int], set[str]] = defaultdict(set)
    for chunk_id, doc_id, version in rows:
        by_version[(doc_id, version)].add(chunk_id)
    stored = _stored_counts(store, by_version) if total > len(rows) else {}
    for (doc_id, version), found in sorted(by_version.items()):
        if (doc_id, version) in pending or current.get(doc_id) == version:
            continue
        kind: Kind = "stale" if doc_id in current else "orphan"
        n = stored.get((doc_id, version), len(found))
        report.findings.append(Finding(kind, doc_id, version, n))
    for doc_id, version in sorted(current.items()):
        found = by_version.get((doc_id, version), set())
        extra = stored.get((doc_id, version), len(found)) - len(found)
        report.findings += _check_version(doc_id, version, chunks[doc_id], found, extra)
    return report


def _stored_counts(store: Any, by_version: dict[tuple[str, int], set[str]]) -> dict[Any, int]:
    """Rows per version, counting a chunk stored twice twice (only called when there is one)."""
    return {key: int(store.count(key[0], key[1])) for key in by_version}


def _check_version(
    doc_id: str, version: int, n_chunks: int, found: set[str], extra: int
) -> list[Finding]:
    expected = {f"{doc_id}:{version}:{i}" for i in range(n_chunks)}
    out = []
    missing = len(expected - found)
    if missing:
        detail = "no chunk at all" if not found else f"{len(found)} of {n_chunks} present"
        out.append(Finding("missing", doc_id, version, missing, detail))
    doubled = extra + len(found - expected)
    if doubled:
        out.append(Finding("duplicate", doc_id, version, doubled, "extra rows for this version"))
    return out


def repair(
    report: Report,
    *,
    store: Any,
    reindex: Callable[[str], Any],
    delete_rows: Callable[[str, int | None], None] | None = None,
) -> Report:
    """Fix what :func:`compare` found: delete stale and orphan rows (``delete_rows``, default
    ``store.delete_document``), re-index documents with missing or duplicate chunks
    (``reindex(doc_id)`` returns a `FileResult`). Returns the report with ``repaired`` filled
    and ``findings`` holding only what could not be repaired (``unrepaired``, with why)."""
    delete = delete_rows or (lambda doc_id, version: store.delete_document(doc_id, version=version))
    left: list[Finding] = []
    for finding in report.findings:
        if finding.kind in _DELETE:
            delete(finding.doc_id, finding.version)
            report.repaired.append(finding)
    for doc_id in sorted({f.doc_id for f in report.findings if f.kind in _REINDEX}):
        concerned = [f for f in report.findings if f.doc_id == doc_id and f.kind in _REINDEX]
        why = _reindexed(reindex, doc_id)
        if why:
            left.append(Finding("unrepaired", doc_id, concerned[0].version, 0, why))
        else:
            report.repaired += concerned
    left += [f for f in report.findings if f.kind not in (*_DELETE, *_REINDEX)]
    report.findings = left
    return report


def _reindexed(reindex: Callable[[str], Any], doc_id: str) -> str:
    """'' when re-indexed, else why not (the original is gone or changed, parsing failed)."""
    try:
        result = reindex(doc_id)
    except StoreUnavailable:
        raise
    except (IngestError, SecureError) as exc:
        return f"[{exc.code}] {getattr(exc, 'message', exc)}"
    except OSError as exc:
        return f"[not-found] the original could not be read ({type(exc).__name__})"
    if result.outcome != "indexed":
        return f"[{result.code or result.outcome}] {result.reason}"
    return ""


@dataclass(frozen=True)
class QuickCheck:
    """Row count against the registry (cheap: one count query, one SQLite sum)."""

    rows: int
    expected: int
    busy: bool  # a job is writing or cleaning up: counts may differ for a moment

    @property
    def agrees(self) -> bool:
        return self.busy or self.rows == self.expected

    def message(self) -> str:
        if self.agrees:
            return ""
        return (
            f"The index holds {self.rows} chunks but the registry expects {self.expected}: "
            "the Milvus data may have been restored from an older backup, or written by another "
            "appliance. Run `appliance docs verify` to see which documents differ and "
            "`appliance docs verify --repair` to re-index them from their originals."
        )


def quick_check(registry: Any, store: Any) -> QuickCheck:
    before = bool(registry.unfinished())
    rows = int(store.count())
    expected = int(registry.corpus()[0])  # chunks of every current version
    busy = before or bool(registry.unfinished())
    return QuickCheck(rows, expected, busy)
