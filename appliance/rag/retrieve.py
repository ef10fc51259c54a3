"""Retrieval: the passages one user may see, best first.

query → embedding + keyed BM25 terms → dense and sparse searches, both filtered by the user's
groups (dense in memory while `appliance.rag.dense_memory` is current, else in Milvus) → fusion
that knows when a retriever cannot be trusted → decrypt only the passages returned. Group
filtering happens in the searches *and* again here, and every hit must belong to the current
version of an indexed document (a deleted or replaced document never comes back, even if Milvus
has not caught up yet).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ingest.registry import Document, Registry
from ingest.schema import open_passage
from ingest.sparse import TermHasher, analyze, query_vector
from ingest.store import ChunkStore, Hit
from secure.records import RecordCipher

from .dense_memory import DenseMemory
from .fuse import DEFAULT_FUSION, Fused, FusionPolicy, Ranked, Trust, fuse, fuse_lists
from .passage_fields import PassageFields, opened_fields

Mode = Literal["hybrid", "dense", "sparse"]


class QueryEmbedder(Protocol):
    def embed_query(self, text: str) -> Any: ...


@dataclass(frozen=True)
class Passage(PassageFields):
    """A passage the retriever returns, with its fused score and each retriever's rank."""

    score: float
    dense_rank: int | None = None
    sparse_rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.fields_dict() | {
            "score": round(self.score, 6),
            "dense_rank": self.dense_rank,
            "sparse_rank": self.sparse_rank,
        }


@dataclass
class SearchResult:
    passages: list[Passage]
    trust: Trust | None
    timings_ms: dict[str, float] = field(default_factory=dict)


class Retriever:
    def __init__(
        self,
        *,
        store: ChunkStore,
        embedder: QueryEmbedder,
        registry: Registry,
        hasher: TermHasher,
        cipher: RecordCipher,
        embedder_languages: frozenset[str],
        candidates: int = 100,
        analyzer: Callable[[str], list[str]] = analyze,
        fusion: FusionPolicy = DEFAULT_FUSION,
        memory: DenseMemory | None = None,
    ) -> None:
        self.store, self.embedder, self.registry = store, embedder, registry
        self.hasher, self.cipher, self.analyzer = hasher, cipher, analyzer
        self.embedder_languages, self.candidates = embedder_languages, candidates
        self.fusion, self.memory = fusion, memory
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bm25")

    def search(
        self, query: str, *, groups: Sequence[str], limit: int, mode: Mode = "hybrid"
    ) -> SearchResult:
        groups = sorted(set(groups))
        timings: dict[str, float] = {}
        if not groups or not query.strip():
            return SearchResult([], None, timings)
        t0 = time.perf_counter()
        # BM25 runs beside the query embedding and dense search (both mostly wait on Milvus).
        sparse_job = (
            self._pool.submit(self._timed_sparse, query, groups) if mode != "dense" else None
        )
        dense = self._dense(query, groups, self.candidates) if mode != "sparse" else []
        t1 = time.perf_counter()
        sparse, sparse_ms = sparse_job.result() if sparse_job is not None else ([], 0.0)
        t2 = time.perf_counter()
        hits = {h.id: h for h in (*dense, *sparse)}
        d_ranked = [Ranked(h.id, h.score) for h in dense]
        s_ranked = [Ranked(h.id, h.score) for h in sparse]
        limit_fused = limit * 3 + 10
        if mode == "hybrid":
            result = fuse_lists(
                query,
                d_ranked,
                s_ranked,
                policy=self.fusion,
                embedder_languages=self.embedder_languages,
                limit=limit_fused,
            )
            fused, trust = result.hits, result.trust
        else:
            trust = (
                Trust(1.0, 0.0, "dense only") if mode == "dense" else Trust(0.0, 1.0, "sparse only")
            )
            fused = fuse(d_ranked, s_ranked, trust=trust, limit=limit_fused, policy=self.fusion)
        t3 = time.perf_counter()
        passages = self._passages(fused, hits, set(groups), limit)
        t4 = time.perf_counter()
        timings.update(
            dense_ms=(t1 - t0) * 1e3,
            sparse_ms=sparse_ms,
            fuse_ms=(t3 - t2) * 1e3,
            decrypt_ms=(t4 - t3) * 1e3,
            total_ms=(t4 - t0) * 1e3,
        )
        return SearchResult(passages, trust, timings)

    def candidate_lists(
        self, query: str, *, groups: Sequence[str], dense_depth: int, sparse_depth: int
    ) -> tuple[list[Hit], list[Hit]]:
        """Both retrievers' raw hits for ``query`` (best first), before fusion and before the
        registry checks: what `appliance eval retrieval --fit` keeps per judged query."""
        groups = sorted(set(groups))
        if not groups or not query.strip():
            return [], []
        return self._dense(query, groups, dense_depth), self._sparse(query, groups, sparse_depth)

    def document_names(self, doc_ids: Iterable[str]) -> dict[str, str]:
        """Document id -> display name (the path below the drop folder)."""
        return {d: doc.rel_path for d, doc in self.registry.get_many(doc_ids).items()}

    def _timed_sparse(self, query: str, groups: Sequence[str]) -> tuple[list[Hit], float]:
        start = time.perf_counter()
        hits = self._sparse(query, groups, self.candidates)
        return hits, (time.perf_counter() - start) * 1e3

    def _dense(self, query: str, groups: Sequence[str], depth: int) -> list[Hit]:
        vector = self.embedder.embed_query(query)
        if self.memory is not None:
            hits = self.memory.search(vector, groups=groups, limit=depth)
            if hits is not None:
                return hits
        return self.store.search_dense(vector, groups=groups, limit=depth)

    def _sparse(self, query: str, groups: Sequence[str], depth: int) -> list[Hit]:
        tokens = self.analyzer(query)
        if not tokens:
            return []
        ids = {self.hasher.term_id(t) for t in tokens}
        # N and df over the groups this user may read only: other groups' documents must not
        # shift term weights (they would tell whether a word occurs there)
        n_docs, df = self.registry.query_stats(ids, groups)
        vector = query_vector(tokens, self.hasher, df=df, n_docs=n_docs)
        vector = {t: w for t, w in vector.items() if w > 0 and t in df}
        if not vector:
            return []
        return self.store.search_sparse(vector, groups=groups, limit=depth)

    def _passages(
        self, fused: Sequence[Fused], hits: Mapping[str, Hit], groups: set[str], limit: int
    ) -> list[Passage]:
        candidates = [hits[item.id] for item in fused]
        docs = self.registry.get_many(h.doc_id for h in candidates)
        out: list[Passage] = []
        for item, hit in zip(fused, candidates, strict=True):
            doc = docs.get(hit.doc_id)
            if doc is None or doc.status != "indexed" or doc.version != hit.version:
                continue  # deleted document or a replaced version Milvus still holds
            if not groups & set(hit.groups) or doc.group not in groups:
                continue  # never another group's chunk, even if the filter were wrong
            out.append(self._passage(hit, item, doc))
            if len(out) == limit:
                break
        return out

    def _passage(self, hit: Hit, item: Fused, doc: Document) -> Passage:
        body = open_passage(self.cipher, hit.id, hit.payload)
        return Passage(
            **opened_fields(hit.id, doc, body),
            score=item.score,
            dense_rank=item.dense_rank,
            sparse_rank=item.sparse_rank,
        )
