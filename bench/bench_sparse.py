"""Retrieval quality of the keyed BM25 (`ingest/sparse.py`) against Milvus' built-in BM25.

For each BEIR-layout set under ``shared/data`` it indexes ``title + text`` of every passage,
scores every judged query by the dot product of :func:`query_vector` and :func:`doc_vector`
over all passages (exact, in memory; no Milvus), and reports nDCG@10 (graded gains, as
pytrec_eval/BEIR compute it). Analyzer variants are measured alongside the default so the
choice in `ingest/sparse.py` stays a measured one. Writes ``bench/results/sparse.json``.

With ``--milvus`` it also measures Milvus Lite's built-in BM25 (BM25 function over the plaintext,
``SPARSE_INVERTED_INDEX``, metric ``BM25``) on the same text with the analyzers our analyzer
mirrors, so the comparison is made on this machine and not only against recorded numbers.

Run: ``python bench/bench_sparse.py [--only NAME ...] [--no-variants] [--milvus]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.sparse import (  # noqa: E402
    Analyzer,
    AnalyzerConfig,
    Bm25Params,
    CorpusStats,
    TermHasher,
    doc_term_freqs,
    doc_vector,
    query_vector,
)
from ingest.stopwords import LUCENE_ENGLISH, SNOWBALL_ENGLISH  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "sparse.json"
SETS = ("msmarco-subset", "dbpedia-subset", "cmrc2018-trial")
# nDCG@10 of Milvus' built-in BM25 on the same sets, measured by the lead's colleagues
# (analyzers: English standard + lowercase + stop + snowball; Chinese jieba).
MILVUS_REFERENCE = {"msmarco-subset": 0.686, "cmrc2018-trial": 0.983, "dbpedia-subset": None}
MILVUS_ANALYZERS: dict[str, dict[str, object]] = {
    "english-stem": {
        "tokenizer": "standard",
        "filter": [
            "lowercase",
            {"type": "stop", "stop_words": ["_english_"]},
            {"type": "stemmer", "language": "english"},
        ],
    },
    "english-no-stem": {
        "tokenizer": "standard",
        "filter": ["lowercase", {"type": "stop", "stop_words": ["_english_"]}],
    },
    "standard": {"type": "standard"},
    "chinese": {"type": "chinese"},  # jieba (search mode) + keep CJK/alphanumeric tokens
}
K = 10

VARIANTS: dict[str, AnalyzerConfig] = {
    "default": AnalyzerConfig(),
    "snowball-stop": AnalyzerConfig(stop_words=SNOWBALL_ENGLISH),
    "no-stop": AnalyzerConfig(stop_words=frozenset()),
    "no-stem": AnalyzerConfig(stem=False),
    "apostrophes": AnalyzerConfig(keep_apostrophes=True),
    "jieba-exact": AnalyzerConfig(jieba_mode="exact"),
    "no-nfkc": AnalyzerConfig(nfkc=False),
}
assert VARIANTS["default"].stop_words == LUCENE_ENGLISH


def read_jsonl(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with path.open(encoding="utf-8") as f:
        next(f)  # header line
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            qrels[qid][did] = int(score)
    return dict(qrels)


def ndcg_at_k(ranked: list[str], rels: dict[str, int], k: int = K) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


class Index:
    """Exact in-memory BM25 over keyed term ids (what Milvus' IP search would return)."""

    def __init__(self, docs: list[list[str]], hasher: TermHasher, params: Bm25Params) -> None:
        self.hasher = hasher
        self.stats = CorpusStats()
        tfs = [doc_term_freqs(tokens, hasher) for tokens in docs]
        for tf, tokens in zip(tfs, docs, strict=True):
            self.stats.add(tf, len(tokens))
        self.postings: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for i, (tf, tokens) in enumerate(zip(tfs, docs, strict=True)):
            vec = doc_vector(tf, doc_len=len(tokens), avgdl=self.stats.avgdl, params=params)
            for term, weight in vec.items():
                self.postings[term].append((i, weight))

    def search(self, tokens: list[str], k: int) -> list[int]:
        q = query_vector(tokens, self.hasher, df=self.stats.df, n_docs=self.stats.n_docs)
        scores: dict[int, float] = defaultdict(float)
        for term, qw in q.items():
            for doc, dw in self.postings.get(term, ()):
                scores[doc] += qw * dw
        return sorted(scores, key=lambda d: (-scores[d], d))[:k]


class DataSet:
    def __init__(self, name: str) -> None:
        folder = DATA / name
        corpus = read_jsonl(folder / "corpus.jsonl")
        self.texts = [f"{d.get('title') or ''}\n{d['text']}" for d in corpus]
        self.ids = [str(d["_id"]) for d in corpus]
        queries = {str(q["_id"]): str(q["text"]) for q in read_jsonl(folder / "queries.jsonl")}
        self.qrels = read_qrels(folder / "qrels" / "test.tsv")
        self.judged = {q: queries[q] for q in self.qrels if q in queries}

    def mean_ndcg(self, search: Callable[[str], list[int]]) -> float:
        scores = [
            ndcg_at_k([self.ids[i] for i in search(text)], self.qrels[q])
            for q, text in self.judged.items()
        ]
        return round(sum(scores) / len(scores), 4)


def evaluate(
    data: DataSet, analyze: Callable[[str], list[str]], hasher: TermHasher
) -> dict[str, float]:
    t0 = time.perf_counter()
    docs = [analyze(text) for text in data.texts]
    index = Index(docs, hasher, Bm25Params())
    t_index = time.perf_counter() - t0
    return {
        "ndcg@10": data.mean_ndcg(lambda q: index.search(analyze(q), K)),
        "queries": len(data.judged),
        "docs": len(data.texts),
        "index_seconds": round(t_index, 2),
    }


def milvus_builtin(data: DataSet, analyzer: dict[str, object], path: Path) -> float:
    """nDCG@10 of Milvus Lite's own BM25 (plaintext in Milvus: for comparison only)."""
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    client = MilvusClient(str(path))
    schema = client.create_schema()
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field(
        "text", DataType.VARCHAR, max_length=65535, enable_analyzer=True, analyzer_params=analyzer
    )
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(
            name="bm25",
            function_type=FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["sparse"],
        )
    )
    index = client.prepare_index_params()
    index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection("c", schema=schema, index_params=index)
    rows = [{"id": i, "text": t} for i, t in enumerate(data.texts)]
    for start in range(0, len(rows), 1000):
        client.insert("c", rows[start : start + 1000])
    client.flush("c")
    client.load_collection("c")

    def search(query: str) -> list[int]:
        hits = client.search("c", data=[query], anns_field="sparse", limit=K)
        return [int(h["id"]) for h in hits[0]]

    try:
        return data.mean_ndcg(search)
    finally:
        client.close()


def run(
    names: Iterable[str], variants: dict[str, AnalyzerConfig], milvus: bool
) -> dict[str, object]:
    hasher = TermHasher(hashlib.sha256(b"bench-sparse").digest())
    results: dict[str, object] = {}
    for name in names:
        data = DataSet(name)
        per_variant = {
            v: evaluate(data, Analyzer(cfg).analyze, hasher) for v, cfg in variants.items()
        }
        ours = per_variant["default"]["ndcg@10"]
        ref = MILVUS_REFERENCE.get(name)
        entry: dict[str, object] = {
            "keyed_bm25_ndcg@10": ours,
            "reference_milvus_ndcg@10": ref,
            "delta_vs_reference": None if ref is None else round(ours - ref, 4),
            "variants": per_variant,
        }
        if milvus:
            builtin = _run_milvus(name, data)
            same = builtin["chinese" if "chinese" in builtin else "english-stem"]
            entry["milvus_lite_builtin_ndcg@10"] = builtin
            entry["delta_vs_milvus_lite_same_analyzer"] = round(ours - same, 4)
        results[name] = entry
        print(name, json.dumps(entry), flush=True)
    return results


def _run_milvus(name: str, data: DataSet) -> dict[str, float]:
    wanted = (
        ("chinese",) if name.startswith("cmrc") else ("english-stem", "english-no-stem", "standard")
    )
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in wanted:
            out[label] = milvus_builtin(data, MILVUS_ANALYZERS[label], Path(tmp) / f"{label}.db")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(SETS), help="data sets to run")
    parser.add_argument("--no-variants", action="store_true", help="measure the default only")
    parser.add_argument("--milvus", action="store_true", help="also run Milvus Lite's BM25")
    args = parser.parse_args()
    variants = {"default": VARIANTS["default"]} if args.no_variants else VARIANTS
    out = {
        "bench": "keyed BM25 nDCG@10 (in-memory exact scorer, title + text indexed)",
        "bm25": asdict(Bm25Params()),
        "variants": {k: _describe(v) for k, v in variants.items()},
        "results": run(args.only, variants, args.milvus),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


def _describe(cfg: AnalyzerConfig) -> dict[str, object]:
    d = asdict(cfg)
    stop = cfg.stop_words
    d["stop_words"] = (
        "lucene"
        if stop == LUCENE_ENGLISH
        else "snowball"
        if stop == SNOWBALL_ENGLISH
        else f"{len(stop)} words"
    )
    return d


if __name__ == "__main__":
    main()
