"""Retrieval quality of dense, keyed BM25, plain RRF and our trust-aware fusion on BEIR-layout sets.

For each set under ``shared/data`` it indexes ``title + text`` of every passage in memory:

* dense: the bundled embedder (``ingest/embed.py``) over all passages, exact cosine search;
  passage and query embeddings are cached as ``.npy`` under ``--cache-dir`` (outside the repo),
  keyed by set, model and a hash of the texts, because 5,000 passages take minutes on two cores
  (query-embedding latency is measured on every run, over the first 50 queries);
* sparse: keyed BM25 (``ingest/sparse.py``) with a fixed random key, exact scoring;

retrieves the top ``--depth`` (100) of each per judged query and scores nDCG@10, recall@10 and
MRR@10 (``appliance/rag/metrics.py``) for dense, sparse, plain RRF (equal weights, k 60) and
:func:`appliance.rag.fuse.fuse` with :func:`appliance.rag.fuse.retriever_trust`. The goal checked
per set: fusion nDCG@10 >= max(dense, sparse). It also records, per set:

* ablations: each rule of the fusion switched off, and an embedder whose languages are unknown;
* a sweep of the fusion's two constants, and the result at 20 and 50 hits per retriever;
* which rule decided how many queries, and the fusion's own latency;
* an *exact-match probe* (English sets): 100 queries that are 5 to 10 consecutive words copied
  from a random passage (seeded), the one relevant document being that passage. No judged set
  here favours BM25 in English; the probe shows what the fusion does when BM25 is the better one.

Writes ``bench/results/fusion.json``.
Run: ``python bench/bench_fusion.py [--only NAME ...] [--cache-dir DIR] [--depth N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.rag.beir import BeirSet, load_beir  # noqa: E402
from appliance.rag.fuse import (  # noqa: E402
    DEFAULT_POLICY,
    Ranked,
    Trust,
    TrustPolicy,
    fuse,
    retriever_trust,
)
from appliance.rag.metrics import mrr_at_k, ndcg_at_k, recall_at_k, summarise  # noqa: E402
from ingest.sparse import (  # noqa: E402
    Bm25Params,
    CorpusStats,
    TermHasher,
    analyze,
    doc_term_freqs,
    doc_vector,
    query_vector,
)

DATA = ROOT / ".." / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "fusion.json"
SETS = ("msmarco-subset", "dbpedia-subset", "cmrc2018-trial")
K = 10
RRF_K = 60
SWEEP_SUPPORT = (0.0, 0.01, 0.02, 0.05, 0.1)
SWEEP_Z = (1.5, 2.0, 3.0, 5.0, float("inf"))
DEPTHS = (20, 50)
LATENCY_QUERIES = 50
PROBE_QUERIES = 100
PROBE_SPAN = (5, 10)  # words copied per probe query
PROBE_MIN_WORDS = 20  # passages shorter than this (or unspaced scripts) are not probed


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    dense: list[Ranked]
    sparse: list[Ranked]


@dataclass(frozen=True)
class Judged:
    """Queries with their judgements: a BEIR set's, or the probe's."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


class SparseIndex:
    """Exact in-memory keyed BM25 (what a Milvus IP search over the same vectors returns)."""

    def __init__(self, texts: Sequence[str], hasher: TermHasher) -> None:
        self.hasher = hasher
        self.stats = CorpusStats()
        docs = [analyze(t) for t in texts]
        tfs = [doc_term_freqs(tokens, hasher) for tokens in docs]
        for tf, tokens in zip(tfs, docs, strict=True):
            self.stats.add(tf, len(tokens))
        self.postings: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for i, (tf, tokens) in enumerate(zip(tfs, docs, strict=True)):
            vec = doc_vector(tf, doc_len=len(tokens), avgdl=self.stats.avgdl, params=Bm25Params())
            for term, weight in vec.items():
                self.postings[term].append((i, weight))

    def search(self, text: str, depth: int) -> list[tuple[int, float]]:
        q = query_vector(analyze(text), self.hasher, df=self.stats.df, n_docs=self.stats.n_docs)
        scores: dict[int, float] = defaultdict(float)
        for term, qw in q.items():
            for doc, dw in self.postings.get(term, ()):
                scores[doc] += qw * dw
        best = sorted(scores, key=lambda d: (-scores[d], d))[:depth]
        return [(d, scores[d]) for d in best]


class Corpus:
    """One set indexed both ways; :meth:`run` gives each query's two ranked lists."""

    def __init__(self, data: BeirSet, embedder: Any, cache: Path) -> None:
        self.data, self.embedder, self.cache = data, embedder, cache
        self.ids = [p.id for p in data.passages]
        texts = [p.full_text for p in data.passages]
        t0 = time.perf_counter()
        self.sparse = SparseIndex(texts, TermHasher(hashlib.sha256(b"bench-fusion").digest()))
        self.sparse_index_s = round(time.perf_counter() - t0, 2)
        self.docs = self._cached("passages", texts, lambda: embedder.embed_documents(texts))

    def run(self, judged: Judged, kind: str, depth: int) -> list[Query]:
        texts = list(judged.queries.values())
        qmat = self._cached(
            kind, texts, lambda: np.stack([self.embedder.embed_query(t) for t in texts])
        )
        out = []
        for qid, text, qvec in zip(judged.queries, texts, qmat, strict=True):
            sims = self.docs @ qvec
            top = np.argsort(-sims, kind="stable")[:depth]
            dense = [Ranked(self.ids[i], float(sims[i])) for i in top]
            sparse = [Ranked(self.ids[d], s) for d, s in self.sparse.search(text, depth)]
            out.append(Query(qid, text, dense, sparse))
        return out

    def _cached(self, kind: str, texts: list[str], compute: Callable[[], Any]) -> np.ndarray:
        info = self.embedder.info
        key = f"{info.model_id}|{info.dimension}|{info.max_tokens}|" + "\x1e".join(texts)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = self.cache / f"{self.data.name}-{kind}-{digest}.npy"
        if path.is_file():
            return np.load(path)
        t0 = time.perf_counter()
        matrix = np.asarray(compute(), dtype=np.float32)
        print(f"  embedded {len(matrix)} {kind} in {time.perf_counter() - t0:.0f} s", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, matrix)
        return matrix


def probe_queries(data: BeirSet) -> Judged | None:
    """Copied-span queries (module doc); None when the set has too few spaced passages."""
    rng = random.Random(f"{data.name}-exact-match-probe")
    usable = [p for p in data.passages if len(p.text.split()) >= PROBE_MIN_WORDS]
    if len(usable) < PROBE_QUERIES:
        return None
    queries, qrels = {}, {}
    for n, passage in enumerate(rng.sample(usable, PROBE_QUERIES)):
        words = passage.text.split()
        size = rng.randint(*PROBE_SPAN)
        start = rng.randint(0, len(words) - size)
        queries[f"probe-{n}"] = " ".join(words[start : start + size])
        qrels[f"probe-{n}"] = {passage.id: 1}
    return Judged(queries, qrels)


Method = Callable[[Query], list[str]]


def plain_rrf(q: Query) -> list[str]:
    return [h.id for h in fuse(q.dense, q.sparse, trust=Trust(1.0, 1.0, "rrf"), limit=K, k=RRF_K)]


def ours(languages: frozenset[str], policy: TrustPolicy = DEFAULT_POLICY) -> Method:
    def run(q: Query) -> list[str]:
        trust = retriever_trust(
            q.text, embedder_languages=languages, dense=q.dense, sparse=q.sparse, policy=policy
        )
        return [h.id for h in fuse(q.dense, q.sparse, trust=trust, limit=K, k=RRF_K)]

    return run


def methods(languages: frozenset[str]) -> dict[str, Method]:
    return {
        "dense": lambda q: [h.id for h in q.dense[:K]],
        "sparse": lambda q: [h.id for h in q.sparse[:K]],
        "rrf": plain_rrf,
        "fusion": ours(languages),
    }


def score(judged: Judged, queries: list[Query], method: Method) -> dict[str, float]:
    runs = [(method(q), judged.qrels[q.id]) for q in queries]
    n = len(runs)
    return {
        "ndcg@10": round(sum(ndcg_at_k(r, j, K) for r, j in runs) / n, 4),
        "recall@10": round(sum(recall_at_k(r, j, K) for r, j in runs) / n, 4),
        "mrr@10": round(sum(mrr_at_k(r, j, K) for r, j in runs) / n, 4),
    }


def ndcg_table(judged: Judged, queries: list[Query], languages: frozenset[str]) -> dict:
    return {m: score(judged, queries, f)["ndcg@10"] for m, f in methods(languages).items()}


def rule_counts(queries: list[Query], languages: frozenset[str]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for q in queries:
        t = retriever_trust(q.text, embedder_languages=languages, dense=q.dense, sparse=q.sparse)
        counts[_rule(t)] += 1
    return dict(sorted(counts.items()))


def _rule(t: Trust) -> str:
    if t.pinned is not None:
        return "BM25 top hit pinned"
    if t.dense == 0.0:
        return "BM25 alone"
    if t.sparse == 0.0:
        return "dense alone (BM25 found nothing)"
    return "dense leads, BM25 breaks ties" if t.dense > t.sparse else "equal weights"


def fusion_latency(queries: list[Query], languages: frozenset[str]) -> dict[str, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        trust = retriever_trust(
            q.text, embedder_languages=languages, dense=q.dense, sparse=q.sparse
        )
        fuse(q.dense, q.sparse, trust=trust, limit=K, k=RRF_K)
        times.append((time.perf_counter() - t0) * 1000)
    return _rounded(summarise(times))


def query_embed_latency(embedder: Any, texts: list[str]) -> dict[str, float]:
    times = []
    for text in texts[:LATENCY_QUERIES]:
        t0 = time.perf_counter()
        embedder.embed_query(text)
        times.append((time.perf_counter() - t0) * 1000)
    return _rounded(summarise(times))


def sweep(judged: Judged, queries: list[Query], languages: frozenset[str]) -> dict[str, float]:
    out = {}
    for support in SWEEP_SUPPORT:
        for z in SWEEP_Z:
            policy = TrustPolicy(support=support, decisive_z=z)
            out[f"support={support},z={z}"] = score(judged, queries, ours(languages, policy))[
                "ndcg@10"
            ]
    return out


def truncated(queries: list[Query], depth: int) -> list[Query]:
    return [replace(q, dense=q.dense[:depth], sparse=q.sparse[:depth]) for q in queries]


def evaluate(name: str, embedder: Any, cache: Path, depth: int) -> dict[str, Any]:
    data = load_beir(DATA / name)
    languages = frozenset(embedder.info.languages)
    corpus = Corpus(data, embedder, cache)
    judged = Judged(data.queries, data.qrels)
    queries = corpus.run(judged, "queries", depth)
    table = {m: score(judged, queries, f) for m, f in methods(languages).items()}
    best = max(table["dense"]["ndcg@10"], table["sparse"]["ndcg@10"])
    ablations = {
        "without_language_rule": ours(frozenset({"multilingual"})),
        "embedder_languages_unknown": ours(frozenset()),
        "without_pin_rule": ours(languages, TrustPolicy(decisive_z=float("inf"))),
    }
    probe = probe_queries(data)
    probed = None if probe is None else corpus.run(probe, "probe", depth)
    return {
        "passages": len(data.passages),
        "judged_queries": len(data.queries),
        "depth": depth,
        **table,
        "goal_fusion_ndcg_ge_best_single": table["fusion"]["ndcg@10"] >= best,
        "fusion_margin_over_best_single": round(table["fusion"]["ndcg@10"] - best, 4),
        "ablations_ndcg@10": {
            a: score(judged, queries, f)["ndcg@10"] for a, f in ablations.items()
        },
        "rules": rule_counts(queries, languages),
        "sweep_ndcg@10": sweep(judged, queries, languages),
        "depth_ndcg@10": {
            str(d): ndcg_table(judged, truncated(queries, d), languages) for d in DEPTHS
        },
        "exact_match_probe_ndcg@10": (
            None
            if probe is None or probed is None
            else {**ndcg_table(probe, probed, languages), "rules": rule_counts(probed, languages)}
        ),
        "fusion_latency_ms": fusion_latency(queries, languages),
        "timing": {
            "sparse_index_s": corpus.sparse_index_s,
            "query_embed_ms": query_embed_latency(embedder, list(data.queries.values())),
        },
    }


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in d.items()}


def main() -> None:
    from ingest.embed import Embedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(SETS), help="data sets to run")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/bench-cache/fusion"))
    parser.add_argument("--depth", type=int, default=100, help="hits per retriever per query")
    args = parser.parse_args()
    embedder = Embedder.load("bundled")
    results = {}
    for name in args.only:
        print(name, flush=True)
        results[name] = evaluate(name, embedder, args.cache_dir, args.depth)
        brief = {m: results[name][m]["ndcg@10"] for m in ("dense", "sparse", "rrf", "fusion")}
        print(f"  nDCG@10 {brief}", flush=True)
    out = {
        "bench": "dense vs keyed BM25 vs RRF vs trust-aware fusion (exact in-memory search)",
        "embedder": embedder.info.model_id,
        "embedder_languages": sorted(embedder.info.languages),
        "policy": asdict(DEFAULT_POLICY),
        "rrf_k": RRF_K,
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
