"""Exact dense search in the serving process's memory, in front of Milvus.

Why: Milvus Lite searches exactly only with a FLAT index, about 25 ms per search at 100,000
chunks on two cores, and its approximate index finds 0.84-0.88 of the exact top 10 there
(docs/benchmarks.md, "Dense index at 100,000 chunks"). This index keeps each indexed chunk's
vector as a float16 value plus its float16 residual (4 bytes per dimension, as float32 would
take). The float16 values are scanned (about 5 ms at 100k x 384 on one core); the best
candidates are rescored with value + residual (float32 accuracy); the candidate list widens
until no row outside it can beat the last hit kept, given the float16 scan's error bound. So
the hits and scores are those of exact search.

Truth stays with the registry and Milvus. The index answers only while it holds exactly the
versions the registry lists as indexed at its latest commit (SQLite's ``data_version``, which
moves on any commit by any connection or process). After a commit the search goes to Milvus
and a background thread catches up, loading only the versions that changed. A new document is
never hidden and a deleted one never returned: the index can only make a search faster.
Groups are enforced here as in Milvus (a chunk's group is its document's), and the retriever
checks every hit against the registry again.

Each row also keeps the chunk's sealed payload (the encrypted passage, as Milvus stores it), so
a hit needs no second trip to Milvus before it is decrypted. Nothing is written to disk: the
vectors and payloads live in this process's memory only. An index that would exceed
``max_bytes`` is not kept (searches stay with Milvus; :meth:`status` says why).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ingest.errors import IngestError
from ingest.registry import Registry
from ingest.schema import Hit
from ingest.store import ChunkStore
from ingest.threads import torch_threads, use_threads

__all__ = ["DenseMemory", "scan_error_bound"]

log = logging.getLogger(__name__)

_UNIT = 2.0**-11  # float16 unit roundoff
_BYTES_PER_VALUE = 4  # float16 value + float16 residual
_ROW_OVERHEAD = 160  # Python objects per row: the id and payload strings, list slots
_PAYLOAD_GUESS = 2048  # sealed passage bytes per chunk before any is loaded
_MIN_CANDIDATES = 32
_MAX_SCORE = 30_000.0  # float16 ends at 65,504


def scan_error_bound(dim: int, query_norm: float, max_row_norm: float) -> float:
    """Largest difference between a float16 scan score and the exact inner product: rounding
    both vectors and the result to float16 (3 units, one spare) and float32 summation, plus
    the absolute error of float16's subnormal range (spacing 2**-24)."""
    relative = (4 * _UNIT + dim * 2.0**-23) * query_norm * max_row_norm
    return relative + 2.0**-24 * (math.sqrt(dim) * (query_norm + max_row_norm) + 1)


@dataclass(frozen=True)
class _Doc:
    version: int
    group: str
    start: int  # first row; a version's rows are contiguous
    count: int


@dataclass(frozen=True)
class _View:
    """What searches read: immutable once published (appends go past ``n``, deletes copy)."""

    high: torch.Tensor  # [n, dim] float16
    low: torch.Tensor  # [n, dim] float16 residual
    group: torch.Tensor  # [n] int64 group code
    live: torch.Tensor  # [n] bool
    ids: list[str]  # read below n only
    payloads: list[str]  # sealed passages
    meta: list[tuple[str, int, str]]  # (doc_id, version, group) per row
    codes: dict[str, int]
    data_version: int
    rows: int  # live rows
    max_norm: float


@dataclass
class _Buffers:
    """The writer's side: buffers with room to grow (rows past ``n`` are not yet published)."""

    dim: int
    high: torch.Tensor
    low: torch.Tensor
    group: torch.Tensor
    live: torch.Tensor
    ids: list[str] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)
    payload_bytes: int = 0
    meta: list[tuple[str, int, str]] = field(default_factory=list)
    docs: dict[str, _Doc] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    n: int = 0
    dead: int = 0
    max_norm: float = 0.0

    @classmethod
    def empty(cls, dim: int, capacity: int = 1024) -> _Buffers:
        return cls(
            dim,
            torch.empty((capacity, dim), dtype=torch.float16),
            torch.empty((capacity, dim), dtype=torch.float16),
            torch.empty(capacity, dtype=torch.int64),
            torch.zeros(capacity, dtype=torch.bool),
        )

    def row_bytes(self) -> float:
        """Memory per row: vectors, the payload (average so far) and Python's objects."""
        payload = self.payload_bytes / self.n if self.n else _PAYLOAD_GUESS
        return self.dim * _BYTES_PER_VALUE + payload + _ROW_OVERHEAD

    def held_bytes(self) -> int:
        vectors = self.high.shape[0] * self.dim * _BYTES_PER_VALUE
        return vectors + self.payload_bytes + self.n * _ROW_OVERHEAD

    def view(self, data_version: int) -> _View:
        n = self.n
        return _View(
            self.high[:n],
            self.low[:n],
            self.group[:n],
            self.live[:n].clone(),
            self.ids,
            self.payloads,
            self.meta,
            dict(self.codes),
            data_version,
            n - self.dead,
            self.max_norm,
        )


class DenseMemory:
    """One collection's vectors in memory; :meth:`start` loads them in the background."""

    def __init__(
        self,
        store: ChunkStore,
        registry: Registry,
        *,
        max_bytes: int,
        poll_s: float = 1.0,
    ) -> None:
        self.store, self.registry = store, registry
        self.max_bytes, self.poll_s = max_bytes, poll_s
        self._dim = store.meta.dimension
        self._max_rows = max_bytes // (self._dim * _BYTES_PER_VALUE)
        self._buffers = _Buffers.empty(self._dim)
        self._view: _View | None = None
        self._watch = _RegistryWatch(registry.path)
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._state, self._reason = "not started", ""
        self._synced_at: float | None = None
        self.searches = self.fallbacks = 0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._state = "loading"
        self._thread = threading.Thread(target=self._run, name="dense-memory", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._view = None
        self._watch.close()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until the index answers searches (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                self._wake.clear()  # no sync left pending: the next one is a commit's
                return True
            self._wake.set()
            time.sleep(0.01)
        return False

    def ready(self) -> bool:
        view = self._view
        return view is not None and view.data_version == self._watch.data_version()

    def status(self) -> dict[str, Any]:
        view = self._view
        rows = view.rows if view is not None else 0
        state = self._state
        if self.ready():
            state = "ready"
        elif state == "ready":
            state = "catching up"  # a commit since the last sync; searches use Milvus meanwhile
        return {
            "state": state,
            "reason": self._reason,
            "rows": rows,
            "mb": round(self._buffers.held_bytes() / 2**20, 1),
            "max_mb": round(self.max_bytes / 2**20, 1),
            "synced_at": self._synced_at,
            "searches": self.searches,
            "fallbacks": self.fallbacks,
        }

    # -- search -----------------------------------------------------------------------------

    def search(self, vector: Any, *, groups: Sequence[str], limit: int) -> list[Hit] | None:
        """The exact top ``limit`` rows shared with ``groups``, best first; None when the index
        is not current (the caller asks Milvus)."""
        view = self._view
        if view is None or view.data_version != self._watch.data_version():
            self.fallbacks += 1
            self._wake.set()
            return None
        codes = sorted({view.codes[g] for g in groups if g in view.codes})
        if not codes or limit < 1:
            self.searches += 1
            return []
        with torch_threads(1):  # a request thread, like the query's embedding (ingest.threads)
            found = self._scan(view, vector, codes, limit)
        if found is None:
            self.fallbacks += 1  # float16 would overflow: unnormalised vectors, ask Milvus
        else:
            self.searches += 1
        return found

    def _scan(self, view: _View, vector: Any, codes: list[int], limit: int) -> list[Hit] | None:
        query = torch.as_tensor(np.asarray(vector, dtype=np.float32).reshape(-1))
        if query.numel() != self._dim:
            raise ValueError(f"Expected a {self._dim}-d query vector, got {query.numel()}.")
        if float(query.norm()) * view.max_norm > _MAX_SCORE:
            return None
        allowed = torch.zeros(max(view.codes.values()) + 1, dtype=torch.bool)
        allowed[codes] = True
        mask = allowed[view.group] & view.live
        eligible = int(mask.sum())
        if eligible == 0:
            return []
        coarse = (view.high @ query.half()).float().masked_fill_(~mask, float("-inf"))
        rows, scores = _exact_top(view, coarse, query, min(limit, eligible), eligible)
        return [_hit(view, row, score) for row, score in zip(rows, scores, strict=True)]

    # -- sync -------------------------------------------------------------------------------

    def _run(self) -> None:
        use_threads(1)  # no OpenMP team in a thread that lives as long as the server
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self._sync()
                backoff = 0.0
            except (IngestError, sqlite3.Error, OSError) as exc:
                backoff = min(30.0, max(1.0, backoff * 2))
                self._state, self._reason = "waiting", f"{type(exc).__name__}: {exc}"[:300]
                log.warning("Dense memory index: %s; searches use Milvus.", self._reason)
                self._stop.wait(backoff)  # searches do not hurry a retry after a failure
            else:
                self._wake.wait(self.poll_s)
            self._wake.clear()

    def _sync(self) -> None:
        data_version = self._watch.data_version()  # before the list: a later commit re-syncs
        view = self._view
        if view is not None and view.data_version == data_version:
            return
        wanted = self.registry.indexed_versions()
        b = self._buffers
        stale = {d for d, doc in b.docs.items() if wanted.get(d, (0, ""))[:2] != _key(doc)}
        new = [(d, v, g) for d, (v, g, _) in wanted.items() if d not in b.docs or d in stale]
        rows = b.n - b.dead - sum(b.docs[d].count for d in stale)
        rows += sum(wanted[d][2] for d, _, _ in new)
        if rows * b.row_bytes() > self.max_bytes:
            self._over_budget(rows, b.row_bytes())
            return
        for doc_id in stale:
            self._drop(doc_id)
        incoming = sum(wanted[d][2] for d, _, _ in new)
        if b.n + incoming > b.high.shape[0]:  # room for the whole batch at once
            self._buffers = _compact(b, incoming, self._max_rows)
        for doc_id, version, group in new:
            if self._stop.is_set():
                return
            ids, matrix, payloads = self.store.version_rows(doc_id, version)
            self._append(doc_id, version, group, ids, matrix, payloads)
        b = self._buffers  # appends may have moved the rows to larger buffers
        if b.dead > max(1024, (b.n - b.dead) // 4):
            self._buffers = _compact(b, 0, self._max_rows)
        self._view = self._buffers.view(data_version)
        self._state, self._reason, self._synced_at = "ready", "", time.time()

    def _over_budget(self, rows: int, row_bytes: float) -> None:
        need = rows * row_bytes / 2**20
        self._view, self._buffers = None, _Buffers.empty(self._dim)
        logged = self._state == "over budget"
        self._state = "over budget"
        self._reason = (
            f"{rows} chunks need {need:.0f} MB, above retrieval.dense_memory_mb "
            f"({self.max_bytes / 2**20:.0f} MB); dense searches use Milvus"
        )
        if not logged:
            log.warning("Dense memory index off: %s.", self._reason)

    def _drop(self, doc_id: str) -> None:
        b = self._buffers
        doc = b.docs.pop(doc_id)
        b.live[doc.start : doc.start + doc.count] = False
        b.dead += doc.count

    def _append(
        self,
        doc_id: str,
        version: int,
        group: str,
        ids: list[str],
        matrix: np.ndarray,
        payloads: list[str],
    ) -> None:
        count = len(ids)
        if self._buffers.n + count > self._buffers.high.shape[0]:
            self._buffers = _compact(self._buffers, count, self._max_rows)
        b = self._buffers
        start, end = b.n, b.n + count
        values = torch.from_numpy(matrix)
        high = values.half()
        b.high[start:end] = high
        b.low[start:end] = (values - high.float()).half()
        b.group[start:end] = b.codes.setdefault(group, len(b.codes))
        b.live[start:end] = True
        meta = (doc_id, version, group)
        b.ids.extend(ids)
        b.payloads.extend(payloads)
        b.payload_bytes += sum(map(len, payloads))
        b.meta.extend([meta] * count)
        b.docs[doc_id] = _Doc(version, group, start, count)
        if count:
            norms = torch.linalg.vector_norm(values, dim=1)
            b.max_norm = max(b.max_norm, float(norms.max()))
        b.n = end


def _key(doc: _Doc) -> tuple[int, str]:
    return doc.version, doc.group


def _exact_top(
    view: _View, coarse: torch.Tensor, query: torch.Tensor, want: int, eligible: int
) -> tuple[list[int], list[float]]:
    """The ``want`` best rows by exact score: rescore the float16 scan's best candidates and
    widen them until the last coarse candidate, plus the scan's error bound, falls below the
    last row kept (so no row left out can beat it)."""
    bound = scan_error_bound(view.high.shape[1], float(query.norm()), view.max_norm)
    k = min(eligible, want + max(want, _MIN_CANDIDATES))
    while True:
        top, picked = torch.topk(coarse, k)
        exact = ((view.high[picked].float() + view.low[picked].float()) @ query).tolist()
        rows = picked.tolist()
        order = sorted(range(k), key=lambda i: (-exact[i], rows[i]))[:want]
        if k == eligible or float(top[-1]) + bound < exact[order[-1]]:
            return [rows[i] for i in order], [exact[i] for i in order]
        k = min(eligible, k * 2)


def _hit(view: _View, row: int, score: float) -> Hit:
    doc_id, version, group = view.meta[row]
    return Hit(
        id=view.ids[row],
        doc_id=doc_id,
        version=version,
        page=-1,
        groups=(group,),
        payload=view.payloads[row],
        score=score,
        kind="",
        language="",
    )


def _compact(b: _Buffers, extra: int, max_rows: int) -> _Buffers:
    """Live rows copied into new buffers with room for ``extra`` more, and an eighth again
    (at least 1,024 rows) as far as the memory budget (``max_rows``) allows."""
    keep = torch.nonzero(b.live[: b.n]).flatten()
    live = int(keep.numel())
    need = live + extra
    out = _Buffers.empty(b.dim, max(need, min(need + max(1024, need // 8), max_rows)))
    out.high[:live] = b.high[keep]
    out.low[:live] = b.low[keep]
    out.group[:live] = b.group[keep]
    out.live[:live] = True
    rows = keep.tolist()
    out.ids = [b.ids[r] for r in rows]
    out.payloads = [b.payloads[r] for r in rows]
    out.payload_bytes = sum(map(len, out.payloads))
    out.meta = [b.meta[r] for r in rows]
    first = {doc_id: i for i, (doc_id, _, _) in reversed(list(enumerate(out.meta)))}
    out.docs = {
        d: _Doc(doc.version, doc.group, first.get(d, 0), doc.count) for d, doc in b.docs.items()
    }
    out.codes, out.n, out.max_norm = dict(b.codes), live, b.max_norm
    return out


class _RegistryWatch:
    """A connection kept open for SQLite's ``data_version``, which changes when any other
    connection (this process's or another's) commits to the registry."""

    def __init__(self, path: Path) -> None:
        self._db: sqlite3.Connection | None = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None
        )
        self._lock = threading.Lock()

    def data_version(self) -> int:
        """The registry's change counter as this connection sees it; -1 once closed."""
        with self._lock:
            if self._db is None:
                return -1
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()
