"""Milvus over the network vs embedded (issue 16), the same data in one run.

The two sides: a Milvus Lite file (the default) and a real Milvus server process (the
``milvus`` binary milvus-lite ships, on a loopback port, reached through pymilvus' network
client as a Milvus standalone would be). Three measurements:

1. **ingest**: the pipeline (parse, chunk, embed, encrypt, write, commit) over the same text
   files, the sides alternated ``--rounds`` times, throughput in chunks per second; and the raw
   write throughput of the store alone (``--chunks`` rows in the store's own batches), both
   sides alternated batch by batch;
2. **hybrid search** at ``--chunks`` rows (synthetic unit vectors, BM25 vectors of real msmarco
   text, real encrypted payloads, real registry rows; identical on both sides) through the real
   Retriever, the queries interleaved between the sides (alternating which goes first);
3. **recovery**: the server killed (``SIGKILL``), a search failing meanwhile, started again on
   the same data file; the time from the server listening again to the first successful search
   (an answer needs nothing else from Milvus), ``--restarts`` times, split into the server's
   own reload of the collection (a fresh client waits for it) and what the appliance adds after
   it; then the same with a 100-chunk collection.

Writes JSON (default bench/results/milvus_server.json) with the machine's load before and after.
Run it with ``nice -n 5`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.rag.beir import load_beir  # noqa: E402
from appliance.rag.metrics import summarise  # noqa: E402
from appliance.rag.retrieve import Retriever  # noqa: E402
from ingest.bm25_stats import TermCounts  # noqa: E402
from ingest.embed import Embedder  # noqa: E402
from ingest.errors import StoreUnavailable  # noqa: E402
from ingest.registry import Registry  # noqa: E402
from ingest.schema import ChunkRecord, PassageText, seal_passage  # noqa: E402
from ingest.sparse import Bm25Params, TermHasher, analyze, doc_term_freqs, doc_vector  # noqa: E402
from ingest.store import ChunkStore  # noqa: E402
from secure.records import RecordCipher  # noqa: E402
from tests.ingest.pipeline_kit import build_kit, put  # noqa: E402
from tests.support.milvus_server import MilvusBackend, MilvusServer, start_server  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "msmarco-subset"
SIDES = ("lite", "server")
PER_DOC = 100
GROUP = "bench"


class Corpus:
    """The same synthetic chunks for both sides (seeded vectors, one cipher key)."""

    def __init__(self, embedder: Embedder, n_chunks: int) -> None:
        data = load_beir(DATA)
        self.texts = [p.full_text for p in data.passages]
        self.queries = list(data.queries.values())
        self.hasher = TermHasher(os.urandom(32))
        self.cipher = RecordCipher(os.urandom(32), context="bench")
        self.tfs = [doc_term_freqs(analyze(t), self.hasher) for t in self.texts]
        self.avgdl = sum(sum(tf.values()) for tf in self.tfs) / len(self.tfs)
        self.dim = embedder.info.dimension
        self.n_docs = n_chunks // PER_DOC

    def document(self, d: int, doc_id: str, version: int) -> tuple[list[ChunkRecord], TermCounts]:
        rng = np.random.default_rng(d)
        dense = rng.standard_normal((PER_DOC, self.dim)).astype(np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        records, df, total = [], {}, 0
        for i in range(PER_DOC):
            j = (d * PER_DOC + i) % len(self.texts)
            tf, cid = self.tfs[j], f"{doc_id}:{version}:{i}"
            total += sum(tf.values())
            for t in tf:
                df[t] = df.get(t, 0) + 1
            records.append(
                ChunkRecord(
                    id=cid,
                    doc_id=doc_id,
                    version=version,
                    groups=(GROUP,),
                    page=-1,
                    kind="text",
                    language="en",
                    payload=seal_passage(self.cipher, cid, PassageText(self.texts[j])),
                    dense=dense[i],
                    sparse=doc_vector(
                        tf, doc_len=sum(tf.values()), avgdl=self.avgdl, params=Bm25Params()
                    ),
                )
            )
        return records, TermCounts(PER_DOC, total, df)


class Side:
    def __init__(self, name: str, root: Path, embedder: Embedder, corpus: Corpus) -> None:
        root.mkdir(parents=True)
        self.name, self.root = name, root
        self.server: MilvusServer | None = None
        uri = str(root / "milvus.db")
        if name == "server":
            self.server = start_server(root / "milvus.db")
            uri = self.server.uri
        info = embedder.info
        self.store = ChunkStore.open(uri, dim=info.dimension, model_id=info.model_id)
        self.registry = Registry(root / "registry.db", durable=False)
        self.retriever = Retriever(
            store=self.store,
            embedder=embedder,
            registry=self.registry,
            hasher=corpus.hasher,
            cipher=corpus.cipher,
            embedder_languages=info.languages,
        )
        self.write_s = 0.0

    def add_document(self, corpus: Corpus, d: int) -> None:
        doc_id, version = self.registry.begin_version(
            source="bench",
            rel_path=f"doc-{d}.txt",
            group=GROUP,
            content_hmac=f"{d:064x}",
            size=1,
            fmt=".txt",
        )
        records, counts = corpus.document(d, doc_id, version)
        t0 = time.perf_counter()
        self.store.insert(records)
        self.write_s += time.perf_counter() - t0
        self.registry.commit_version(
            doc_id, version, counts=counts, pages=1, title_enc="", size=1, fmt=".txt"
        )

    def close(self) -> None:
        self.store.close()
        if self.server is not None:
            self.server.close()


def build(sides: dict[str, Side], corpus: Corpus) -> dict[str, Any]:
    """The same documents into both sides, alternating which side writes first."""
    for d in range(corpus.n_docs):
        order = SIDES if d % 2 == 0 else SIDES[::-1]
        for name in order:
            sides[name].add_document(corpus, d)
    for side in sides.values():
        side.store.flush()
    rows = corpus.n_docs * PER_DOC
    rates = {name: rows / side.write_s for name, side in sides.items()}
    return {
        "rows": rows,
        "rows_per_s": {k: round(v, 1) for k, v in rates.items()},
        "server_over_lite": round(rates["server"] / rates["lite"], 3),
    }


def search_latency(sides: dict[str, Side], queries: list[str]) -> dict[str, Any]:
    for q in queries[:10]:  # warm-up, both sides
        for side in sides.values():
            side.retriever.search(q, groups=[GROUP], limit=8)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for n, q in enumerate(queries):
        for name in SIDES if n % 2 == 0 else SIDES[::-1]:
            start = time.perf_counter()
            result = sides[name].retriever.search(q, groups=[GROUP], limit=8)
            times[name].append((time.perf_counter() - start) * 1000)
            assert result.passages, "a hybrid search found nothing"
    stats = {name: {k: round(v, 2) for k, v in summarise(t).items()} for name, t in times.items()}
    return {
        "queries": len(queries),
        **stats,
        "p95_difference_ms": round(stats["server"]["p95_ms"] - stats["lite"]["p95_ms"], 2),
        "p50_difference_ms": round(stats["server"]["p50_ms"] - stats["lite"]["p50_ms"], 2),
    }


def recovery(side: Side, question: str, restarts: int, down_s: float) -> dict[str, Any]:
    """Kill, wait, start again; from the moment it listens, the appliance's retriever asks
    again and again while a fresh client waits for the server to have the collection loaded
    again (a restarted Lite-engine server reloads it, building its indexes, on first use)."""
    assert side.server is not None
    total, ready, lag = [], [], []
    for _ in range(restarts):
        side.server.kill()
        time.sleep(down_s / 2)
        try:  # a question while it is down: fails at once
            side.retriever.search(question, groups=[GROUP], limit=8)
            raise AssertionError("a search succeeded with the server down")
        except StoreUnavailable:
            pass
        time.sleep(down_s / 2)
        side.server.start()  # returns once it listens again
        back = time.perf_counter()
        probe = threading.Thread(target=_probe, args=(side, back, ready), daemon=True)
        probe.start()
        while True:
            try:
                if side.retriever.search(question, groups=[GROUP], limit=8).passages:
                    break
            except StoreUnavailable:
                time.sleep(0.05)
        answered = time.perf_counter() - back
        probe.join(120)
        total.append(answered)
        lag.append(answered - ready[-1])
    return {
        "restarts": restarts,
        "down_s": down_s,
        "listening_to_first_answer_s": _spread(total),
        "listening_to_collection_loaded_s": _spread(ready),
        "collection_loaded_to_first_answer_s": _spread(lag),
    }


def _probe(side: Side, back: float, ready: list[float]) -> None:
    """A fresh store (its own channel): open returns once the server has loaded the
    collection again."""
    assert side.server is not None
    store = ChunkStore.open(
        side.server.uri, dim=side.store.meta.dimension, model_id=side.store.meta.model_id
    )
    ready.append(time.perf_counter() - back)
    store.close()


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "seconds": [round(v, 3) for v in values],
        "median": round(float(np.median(values)), 3),
        "max": round(max(values), 3),
    }


def small_recovery(tmp: Path, embedder: Embedder, corpus: Corpus, restarts: int) -> dict[str, Any]:
    """The same at one document (100 chunks): the appliance's own reconnection time."""
    small = Corpus.__new__(Corpus)
    small.__dict__.update(corpus.__dict__, n_docs=1)
    side = Side("server", tmp / "small", embedder, small)
    try:
        side.add_document(small, 0)
        return recovery(side, small.queries[0], restarts, 1.0)
    finally:
        side.close()


def pipeline_ingest(
    tmp: Path, embedder: Embedder, corpus: Corpus, files: int, rounds: int
) -> dict[str, Any]:
    """The same text files through the whole pipeline, the sides alternated."""
    texts = {
        f"bench/doc-{i:03d}.txt": "\n\n".join(
            corpus.texts[(i * 6 + k) % len(corpus.texts)] for k in range(6)
        )
        for i in range(files)
    }
    warm_up = dict(list(texts.items())[:3])
    for name in SIDES:  # parse children, the embedder and both Milvus kinds run once first
        _pipeline_run(tmp / f"warm-up-{name}", embedder, name, warm_up)
    rates: dict[str, list[float]] = {name: [] for name in SIDES}
    chunks = 0
    for r in range(rounds):
        for name in SIDES if r % 2 == 0 else SIDES[::-1]:
            chunks, seconds = _pipeline_run(tmp / f"pipeline-{name}-{r}", embedder, name, texts)
            rates[name].append(chunks / seconds)
    medians = {name: float(np.median(v)) for name, v in rates.items()}
    return {
        "files": files,
        "chunks": chunks,
        "rounds": rounds,
        "chunks_per_s": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "median_chunks_per_s": {k: round(v, 2) for k, v in medians.items()},
        "server_over_lite": round(medians["server"] / medians["lite"], 3),
    }


def _pipeline_run(
    root: Path, embedder: Embedder, name: str, texts: dict[str, str]
) -> tuple[int, float]:
    """(chunks, seconds) of one `run_once` over ``texts`` into a fresh knowledge base."""
    with MilvusBackend(name) as backend:
        kit = build_kit(root, embedder, milvus=backend)
        for rel, text in texts.items():
            put(kit.drop, rel, text)
        start = time.perf_counter()
        report = kit.pipeline.run_once(settle=False)
        seconds = time.perf_counter() - start
        kit.store.close()
    assert report.totals["indexed"] == len(texts), report.totals
    return report.totals["chunks"], seconds


def timed(label: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--down-s", type=float, default=3.0)
    parser.add_argument("--files", type=int, default=60, help="files per pipeline run")
    parser.add_argument("--rounds", type=int, default=2, help="pipeline runs per side")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "milvus_server.json"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    embedder = Embedder.load("bundled")
    corpus = Corpus(embedder, args.chunks)
    tmp = Path(tempfile.mkdtemp(prefix="kapp-milvus-bench-"))
    sides: dict[str, Side] = {}
    try:
        ingest = timed(
            "pipeline ingest",
            lambda: pipeline_ingest(tmp, embedder, corpus, args.files, args.rounds),
        )
        sides = {name: Side(name, tmp / name, embedder, corpus) for name in SIDES}
        writes = timed("build", lambda: build(sides, corpus))
        queries = corpus.queries[:]
        random.Random(0).shuffle(queries)
        sample = (queries * (args.queries // len(queries) + 1))[: args.queries]
        search = timed("search", lambda: search_latency(sides, sample))
        back = timed(
            "recovery",
            lambda: recovery(sides["server"], sample[0], args.restarts, args.down_s),
        )
        back_small = timed(
            "recovery (small)", lambda: small_recovery(tmp, embedder, corpus, args.restarts)
        )
    finally:
        for side in sides.values():
            side.close()
        shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "chunks": args.chunks,
        "ingest_pipeline": ingest,
        "ingest_store_writes": writes,
        "hybrid_search": search,
        "recovery": back,
        "recovery_100_chunks": back_small,
        "goals": {
            "ingest_ratio_min": 0.9,
            "ingest_ratio_met": ingest["server_over_lite"] >= 0.9,
            "p95_difference_max_ms": 5.0,
            "p95_difference_met": abs(search["p95_difference_ms"]) <= 5.0,
            "recovery_max_s": 5.0,
            # from the server listening again (it reloads the collection first) ...
            "recovery_from_listening_met": back["listening_to_first_answer_s"]["max"] <= 5.0,
            # ... and from the server serving its collection again (the appliance's part)
            "recovery_from_loaded_met": back["collection_loaded_to_first_answer_s"]["max"] <= 5.0,
        },
        "cpu_count": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "nice": os.nice(0),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
