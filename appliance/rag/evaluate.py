"""`appliance eval retrieval`: retrieval quality and latency on a BEIR-layout set.

A scratch collection (its own temporary registry, Milvus Lite file and random keys, never the
appliance's own) is built through the real write path (`Pipeline.index_parsed`: chunk → embed →
keyed BM25 → encrypt → Milvus → registry) with the appliance's dense index and fusion settings,
then every judged query is run through the real :class:`~appliance.rag.retrieve.Retriever` in
dense, sparse and hybrid mode. Latency covers query embedding, both searches, fusion and passage
decryption.

With ``--fit`` (:func:`fit_beir`) every judged query is searched once by each retriever, the
lists are kept (:mod:`appliance.rag.runs`) and the fusion constants are fitted to them by k-fold
over the queries (:func:`appliance.rag.fit.fit_kfold`).
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
from ingest.schema import DEFAULT_DENSE_INDEX, LITE_INDEX_TYPES, DenseIndex
from ingest.sparse import TermHasher
from ingest.store import ChunkStore
from secure.records import RecordCipher

from .beir import BeirSet, load_beir
from .fit import FitReport, fit_kfold
from .fuse import DEFAULT_FUSION, FusionPolicy
from .metrics import mrr_at_k, ndcg_at_k, recall_at_k, summarise
from .retrieve import Retriever
from .runs import collect_runs, score_runs

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
    data: BeirSet,
    workdir: Path,
    embedder: Any,
    progress: Callable[[int, int], None] | None = None,
    *,
    dense_index: DenseIndex = DEFAULT_DENSE_INDEX,
    fusion: FusionPolicy = DEFAULT_FUSION,
    candidates: int = 100,
) -> tuple[Retriever, Registry, ChunkStore]:
    registry = Registry(workdir / "registry.db", durable=False)
    store = ChunkStore.open(
        str(workdir / "milvus.db"),
        collection="eval",
        dim=embedder.info.dimension,
        model_id=embedder.info.model_id,
        dense_index=scratch_index(dense_index),
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
        candidates=candidates,
        fusion=fusion,
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


def _load(folder: Path, max_queries: int | None) -> BeirSet:
    data = load_beir(folder)
    if max_queries is not None:
        keep = dict(list(data.queries.items())[:max_queries])
        data = BeirSet(
            data.name, data.passages, keep, {q: data.qrels[q] for q in keep}, data.unjudged_queries
        )
    return data


def scratch_index(index: DenseIndex) -> DenseIndex:
    """The scratch collection is Milvus Lite: an index only a server builds (HNSW) is measured
    as exact FLAT search instead (what HNSW with a generous ``ef`` approaches)."""
    return index if index.kind in LITE_INDEX_TYPES else DenseIndex("FLAT")


def evaluate_beir(
    folder: Path,
    embedder: Any,
    *,
    workdir: Path | None = None,
    max_queries: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    dense_index: DenseIndex = DEFAULT_DENSE_INDEX,
    fusion: FusionPolicy = DEFAULT_FUSION,
    candidates: int = 100,
) -> dict[str, Any]:
    data = _load(folder, max_queries)
    scratch = Path(tempfile.mkdtemp(prefix="kapp-eval-", dir=workdir))
    try:
        t0 = time.perf_counter()
        retriever, _registry, store = build_scratch(
            data,
            scratch,
            embedder,
            progress,
            dense_index=dense_index,
            fusion=fusion,
            candidates=candidates,
        )
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
        results["settings"] = {
            "dense_index": scratch_index(dense_index).describe(),
            "fusion": fusion.describe(),
        }
        store.close()
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fit_beir(
    folder: Path,
    embedder: Any,
    *,
    current: FusionPolicy,
    folds: int = 5,
    workdir: Path | None = None,
    max_queries: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    dense_index: DenseIndex = DEFAULT_DENSE_INDEX,
    candidates: int = 100,
) -> tuple[dict[str, Any], FitReport]:
    """Index ``folder`` as :func:`evaluate_beir` does, search every judged query once with
    each retriever (``candidates`` hits), and fit the fusion constants by ``folds``-fold
    cross-validation (prior: ``current``). Returns (nDCG@10 per mode, the fit report)."""
    data = _load(folder, max_queries)
    scratch = Path(tempfile.mkdtemp(prefix="kapp-eval-", dir=workdir))
    try:
        retriever, _registry, store = build_scratch(
            data, scratch, embedder, progress, dense_index=dense_index, candidates=candidates
        )
        dev = collect_runs(
            data.name, data.queries, data.qrels, retriever, groups=[GROUP], depth=candidates
        )
        chunks = store.count()
        store.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    languages = frozenset(embedder.info.languages)
    ndcg = {
        mode: _mean(score_runs(dev, mode=mode, policy=current, embedder_languages=languages))
        for mode in MODES
    }
    report = fit_kfold(dev, current, languages, folds=folds)
    summary = {
        "dataset": data.name,
        "counts": {"passages": len(data.passages), "chunks": chunks, "queries": len(dev.runs)},
        "ndcg@10": ndcg,
        "dense_index": scratch_index(dense_index).describe(),
        "fit": report.to_dict(),
    }
    return summary, report


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0
