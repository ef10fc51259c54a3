"""Dense index choices at 100,000 chunks: recall@10 against exact search, and search latency.

What Milvus Lite 2.5 does with each `milvus.index_type` and its parameters, measured through the
product's own :class:`ingest.store.ChunkStore` (the same collection layout, group filter, output
fields and real encrypted payloads as the appliance):

* vectors: real all-MiniLM-L6-v2 embeddings of every passage of the msmarco, dbpedia and SQuAD
  subsets (about 10,600, cached as ``.npy`` under ``--cache-dir``), topped up to ``--chunks`` with
  synthetic neighbours of them, in one of two shapes (``--shape``):
  ``mixtures``: ``normalise((1 - t) a + t b + noise)`` for random real ``a``, ``b`` and t in
  [0.1, 0.5) (new text that resembles two existing passages), and ``near-duplicates``: each real
  passage repeated with small noise (versions and copies of one document, the hard case for
  approximate search);
* queries: real query embeddings of the same sets (``--queries``, seeded sample);
* truth: exact top 10 by inner product in numpy, over every row (all rows are in the group
  searched), so recall@10 = share of the exact top 10 the index returns.

The collection is written once with the first index and then reopened with each further index,
which exercises the store's rebuild path (the index is rebuilt from the stored vectors). Latency
is the store's dense search alone (no query embedding), at 10 hits and at the retriever's 100
candidates. Writes ``bench/results/dense_index.json``, one entry per shape (a run replaces its
own shape's entry and keeps the other).
Run: ``nice -n 5 python bench/bench_dense_index.py [--chunks N] [--shape mixtures]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.rag.beir import load_beir  # noqa: E402
from appliance.rag.dense_memory import DenseMemory  # noqa: E402
from appliance.rag.metrics import summarise  # noqa: E402
from ingest.bm25_stats import TermCounts  # noqa: E402
from ingest.registry import Registry  # noqa: E402
from ingest.schema import ChunkRecord, DenseIndex, Hit, PassageText, seal_passage  # noqa: E402
from ingest.store import ChunkStore  # noqa: E402
from secure.records import RecordCipher  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SETS = ("msmarco-subset", "dbpedia-subset", "squad2-train-subset/beir")
GROUP = "bench"
MEMORY = "memory (retrieval.dense_memory: float16 scan, exact rescoring)"
INDEXES = (
    DenseIndex("FLAT"),
    DenseIndex("AUTOINDEX"),
    DenseIndex("IVF_FLAT", ivf_nlist=128, ivf_nprobe=1),
    DenseIndex("IVF_FLAT", ivf_nlist=128, ivf_nprobe=16),
    DenseIndex("IVF_FLAT", ivf_nlist=128, ivf_nprobe=128),
    DenseIndex("IVF_FLAT", ivf_nlist=1024, ivf_nprobe=1),
    DenseIndex("IVF_FLAT", ivf_nlist=1024, ivf_nprobe=64),
)


def cached_embeddings(embedder: Any, texts: list[str], cache: Path, kind: str) -> np.ndarray:
    key = embedder.info.model_id + "\x1e" + "\x1e".join(texts)
    path = cache / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    if kind == "queries":
        matrix = np.stack([embedder.embed_query(t) for t in texts])
    else:
        matrix = embedder.embed_documents(texts)
    print(f"embedded {len(texts)} {kind} in {time.perf_counter() - t0:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(matrix, dtype=np.float32))
    return np.load(path)


def vectors(real: np.ndarray, n: int, shape: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors: every real one, then synthetic ones of the chosen shape."""
    extra = n - len(real)
    if extra <= 0:
        return real[:n]
    a = real[rng.integers(0, len(real), extra)]
    if shape == "mixtures":
        b = real[rng.integers(0, len(real), extra)]
        t = rng.uniform(0.1, 0.5, (extra, 1)).astype(np.float32)
        out = (1 - t) * a + t * b + 0.01 * rng.standard_normal(a.shape).astype(np.float32)
    else:
        out = a + 0.005 * rng.standard_normal(a.shape).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return np.concatenate([real, out]).astype(np.float32)


def register(registry: Registry, n: int) -> list[tuple[str, int]]:
    """(doc id, version) for ``n`` chunks, 100 per document, begun in the registry."""
    docs = []
    for d in range((n + 99) // 100):
        doc = registry.begin_version(
            source="bench", rel_path=f"doc-{d}", group=GROUP, content_hmac=f"{d:064x}",
            size=1, fmt=".txt",
        )  # fmt: skip
        docs.append(doc)
    return docs


def commit(registry: Registry, docs: list[tuple[str, int]], n: int) -> None:
    """Make the chunks searchable, as the pipeline does once they are in Milvus."""
    for d, (doc_id, version) in enumerate(docs):
        chunks = min(100, n - 100 * d)
        registry.commit_version(
            doc_id, version, counts=TermCounts(chunks, chunks, {}), pages=1, title_enc="", size=1,
            fmt=".txt",
        )  # fmt: skip


def chunk_ids(docs: list[tuple[str, int]], n: int) -> list[str]:
    return [f"{docs[i // 100][0]}:{docs[i // 100][1]}:{i % 100}" for i in range(n)]


def fill(store: ChunkStore, matrix: np.ndarray, texts: list[str], ids: list[str]) -> None:
    cipher = RecordCipher(os.urandom(32), context="bench")
    batch = []
    for i, vec in enumerate(matrix):
        cid = ids[i]
        doc_id, version, _ = cid.split(":")
        body = PassageText(texts[i % len(texts)])
        batch.append(
            ChunkRecord(
                id=cid,
                doc_id=doc_id,
                version=int(version),
                groups=(GROUP,),
                page=-1,
                kind="text",
                language="en",
                payload=seal_passage(cipher, cid, body),
                dense=vec,
                sparse={i % 1000: 1.0},
            )
        )
        if len(batch) == 2048:
            store.insert(batch)
            batch = []
    if batch:
        store.insert(batch)
    store.flush()


Search = Callable[[np.ndarray, int], list[Hit]]


def store_search(store: ChunkStore) -> Search:
    return lambda q, limit: store.search_dense(q, groups=[GROUP], limit=limit)


def memory_search(memory: DenseMemory) -> Search:
    def search(q: np.ndarray, limit: int) -> list[Hit]:
        hits = memory.search(q, groups=[GROUP], limit=limit)
        if hits is None:
            raise RuntimeError(f"the in-memory index is not current: {memory.status()}")
        return hits

    return search


def measure(search: Search, queries: np.ndarray, truth: list[set[str]]) -> dict[str, Any]:
    recalls, recalls100, lat10, lat100 = [], [], [], []
    for q, exact in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        hits = search(q, 10)
        lat10.append((time.perf_counter() - t0) * 1e3)
        recalls.append(len({h.id for h in hits} & exact) / 10)
        t0 = time.perf_counter()
        hits = search(q, 100)
        lat100.append((time.perf_counter() - t0) * 1e3)
        best = sorted(hits, key=lambda h: -h.score)[:10]
        recalls100.append(len({h.id for h in best} & exact) / 10)
    return {
        "recall@10": round(float(np.mean(recalls)), 4),
        "recall@10_min": round(float(np.min(recalls)), 2),
        "queries_below_0.9": int(sum(r < 0.9 for r in recalls)),
        # what the retriever sees: it asks for 100 dense candidates and ranks them by score
        "recall@10_of_100": round(float(np.mean(recalls100)), 4),
        "recall@10_of_100_min": round(float(np.min(recalls100)), 2),
        "queries_below_0.9_of_100": int(sum(r < 0.9 for r in recalls100)),
        "search10_ms": {k: round(v, 2) for k, v in summarise(lat10).items()},
        "search100_ms": {k: round(v, 2) for k, v in summarise(lat100).items()},
    }


def self_found(search: Search, matrix: np.ndarray, ids: list[str], probes: int = 400) -> float:
    """Share of sampled stored rows that a search with their own vector returns first: below 1,
    some rows are not searched at all (as opposed to approximate neighbours)."""
    picked = np.random.default_rng(1).choice(len(matrix), min(probes, len(matrix)), replace=False)
    found = 0
    for i in picked:
        hits = search(matrix[i], 10)
        found += bool(hits) and hits[0].id == ids[i]
    return round(found / len(picked), 4)


def memory_row(
    store: ChunkStore,
    registry: Registry,
    queries: np.ndarray,
    truth: list[set[str]],
    matrix: np.ndarray,
    ids: list[str],
) -> dict[str, Any]:
    """The in-memory dense index (`retrieval.dense_memory`) over the FLAT collection."""
    memory = DenseMemory(store, registry, max_bytes=4 << 30, poll_s=3600)
    t0 = time.perf_counter()
    memory.start()
    try:
        if not memory.wait_ready(timeout=1800):
            raise RuntimeError(f"the in-memory index did not load: {memory.status()}")
        load_s = time.perf_counter() - t0
        row = measure(memory_search(memory), queries, truth)
        row["self_found"] = self_found(memory_search(memory), matrix, ids)
        row["load_s"] = round(load_s, 1)
        row["memory_mb"] = memory.status()["mb"]
        return row
    finally:
        memory.close()


def main() -> None:
    from ingest.embed import Embedder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--shape", choices=("mixtures", "near-duplicates"), default="mixtures")
    parser.add_argument(
        "--indexes",
        default="",
        help="comma-separated index types to measure, 'memory' for the in-memory dense index "
        "(default: all)",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/bench-cache/dense-index"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dense_index.json")
    args = parser.parse_args()
    embedder = Embedder.load("bundled")
    sets = [load_beir(DATA / name) for name in SETS]
    texts = [p.full_text for data in sets for p in data.passages]
    query_texts = [q for data in sets for q in data.queries.values()]
    rng = np.random.default_rng(0)
    query_texts = [query_texts[i] for i in rng.permutation(len(query_texts))[: args.queries]]
    real = cached_embeddings(embedder, texts, args.cache_dir, "passages")
    queries = cached_embeddings(embedder, query_texts, args.cache_dir, "queries")
    matrix = vectors(real, args.chunks, args.shape, rng)
    workdir = Path(tempfile.mkdtemp(prefix="kapp-idx-"))
    registry = Registry(workdir / "registry.db", durable=False)
    docs = register(registry, len(matrix))
    ids = chunk_ids(docs, len(matrix))
    top = np.argsort(-(queries @ matrix.T), axis=1)[:, :10]
    truth = [{ids[i] for i in row} for row in top]
    results: dict[str, Any] = {}
    try:
        uri = str(workdir / "milvus.db")
        dim, model = embedder.info.dimension, embedder.info.model_id
        t0 = time.perf_counter()
        with ChunkStore.open(uri, dim=dim, model_id=model, dense_index=INDEXES[0]) as store:
            fill(store, matrix, texts, ids)
        commit(registry, docs, len(matrix))
        insert_s = time.perf_counter() - t0
        wanted = {k for k in args.indexes.split(",") if k}
        if not wanted or "memory" in wanted:
            with ChunkStore.open(uri, dim=dim, model_id=model, dense_index=INDEXES[0]) as store:
                results[MEMORY] = memory_row(store, registry, queries, truth, matrix, ids)
            print(MEMORY, json.dumps(results[MEMORY]), flush=True)
        for index in [i for i in INDEXES if not wanted or i.kind in wanted]:
            t0 = time.perf_counter()
            with ChunkStore.open(uri, dim=dim, model_id=model, dense_index=index) as store:
                open_s = time.perf_counter() - t0
                row = measure(store_search(store), queries, truth)
                row["self_found"] = self_found(store_search(store), matrix, ids)
                row["open_s"] = round(open_s, 1)
                row["rebuilt_from"] = store.rebuilt_from
                row["milvus_describes"] = {
                    k: str(v) for k, v in store.dense_index_info().items() if k != "field_name"
                }
            results[index.describe()] = row
            print(index.describe(), json.dumps(row), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    entry = {
        "chunks": len(matrix),
        "real_vectors": len(real),
        "shape": args.shape,
        "queries": len(queries),
        "insert_s": round(insert_s, 1),
        "results": results,
        "cpu_count": os.cpu_count(),
        "load_avg_after": os.getloadavg(),
        "python": platform.python_version(),
    }
    out: dict[str, Any] = {"shapes": {}}
    if args.out.is_file():
        out = json.loads(args.out.read_text())
    out["bench"] = "dense index recall@10 vs exact and search latency through ChunkStore"
    out["shapes"][args.shape] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
