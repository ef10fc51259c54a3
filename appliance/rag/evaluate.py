"""`appliance eval retrieval`: retrieval quality and latency on a BEIR-layout set.

A scratch collection (its own temporary registry, Milvus Lite file and random keys, never the
appliance's own) is built through the real write path (`Pipeline.index_parsed`: chunk → embed →
keyed BM25 → encrypt → Milvus → registry), then every judged query is run through the real
:class:`~appliance.rag.retrieve.Retriever` in dense, sparse and hybrid mode. Latency covers
query embedding, both searches, fusion and passage decryption.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ingest.elements import Element, ParsedDocument
from ingest.pipeline import IngestOptions, Pipeline
from ingest.registry import Registry
from ingest.sparse import TermHasher
from ingest.store import ChunkStore
from secure.records import RecordCipher

from .beir import BeirSet, load_beir
from .metrics import mrr_at_k, ndcg_at_k, recall_at_k, summarise
from .retrieve import Retriever

MODES = ("dense", "sparse", "hybrid")
GROUP = "eval"
BATCH = 256


def _document(passage: Any) -> ParsedDocument:
    elements = []
    if passage.title:
        elements.append(Element(kind="title", text=passage.title, level=1))
    elements.append(Element(kind="text", text=passage.text))
    return ParsedDocument(elements=tuple(elements), title=passage.title or passage.id, pages=1)


def build_scratch(
    data: BeirSet, workdir: Path, embedder: Any, progress: Callable[[int, int], None] | None = None
) -> tuple[Retriever, Registry, ChunkStore]:
    registry = Registry(workdir / "registry.db", durable=False)
    store = ChunkStore.open(
        str(workdir / "milvus.db"),
        collection="eval",
        dim=embedder.info.dimension,
        model_id=embedder.info.model_id,
    )
    hasher, cipher = TermHasher(os.urandom(32)), RecordCipher(os.urandom(32), context="eval")
    pipeline = Pipeline(
        drop=workdir / "drop",
        registry=registry,
        store=store,
        embedder=embedder,
        hasher=hasher,
        cipher=cipher,
        content_key=os.urandom(32),
        vault=None,
        options=IngestOptions(mode="mirror"),
    )
    passages = data.passages
    for start in range(0, len(passages), BATCH):
        batch = passages[start : start + BATCH]
        pipeline.index_parsed([(p.id, GROUP, _document(p)) for p in batch])
        if progress is not None:
            progress(min(start + BATCH, len(passages)), len(passages))
    store.flush()
    retriever = Retriever(
        store=store,
        embedder=embedder,
        registry=registry,
        hasher=hasher,
        cipher=cipher,
        embedder_languages=embedder.info.languages,
        candidates=100,
    )
    return retriever, registry, store


def run_queries(
    data: BeirSet, retriever: Retriever, *, modes: Sequence[str] = MODES, k: int = 10
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for mode in modes:
        scores: dict[str, list[float]] = {"ndcg@10": [], "recall@10": [], "mrr@10": []}
        latencies = []
        for qid, query in data.queries.items():
            t0 = time.perf_counter()
            result = retriever.search(query, groups=[GROUP], limit=k * 3, mode=mode)  # type: ignore[arg-type]
            latencies.append((time.perf_counter() - t0) * 1000)
            ranked = _dedupe([p.document for p in result.passages])[:k]
            qrels = data.qrels[qid]
            scores["ndcg@10"].append(ndcg_at_k(ranked, qrels, k))
            scores["recall@10"].append(recall_at_k(ranked, qrels, k))
            scores["mrr@10"].append(mrr_at_k(ranked, qrels, k))
        summary = {name: round(sum(v) / len(v), 4) for name, v in scores.items()}
        summary.update({n: round(v, 2) for n, v in summarise(latencies).items()})
        out[mode] = summary
    return out


def _dedupe(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def evaluate_beir(
    folder: Path,
    embedder: Any,
    *,
    workdir: Path | None = None,
    max_queries: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    data = load_beir(folder)
    if max_queries is not None:
        keep = dict(list(data.queries.items())[:max_queries])
        data = BeirSet(
            data.name, data.passages, keep, {q: data.qrels[q] for q in keep}, data.unjudged_queries
        )
    scratch = Path(tempfile.mkdtemp(prefix="kapp-eval-", dir=workdir))
    try:
        t0 = time.perf_counter()
        retriever, _registry, store = build_scratch(data, scratch, embedder, progress)
        build_s = time.perf_counter() - t0
        results: dict[str, Any] = run_queries(data, retriever)
        results["counts"] = {
            "passages": len(data.passages),
            "chunks": store.count(),
            "queries": len(data.queries),
            "unjudged_queries": data.unjudged_queries,
        }
        results["dataset"] = data.name
        results["index_seconds"] = round(build_s, 1)
        store.close()
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
