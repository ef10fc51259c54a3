"""Cost of monitoring on the question path vs a retrieval measured in the same run.

Per question the serving process calls ``Metrics.observe_answer`` and ``TaskStore.observe_answer``
(one SQLite insert, WAL, synchronous=NORMAL, on the real disk). The retrieval is the real hybrid
Retriever over a small synthetic index (2,000 chunks, built as in bench_latency.py): a small
index makes retrieval fast, so the ratio is an upper bound. Goal: monitoring <= 1 % of it.
Writes JSON (default bench/results/metrics.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_latency import DATA, build  # noqa: E402

from appliance.ops.metrics import Metrics  # noqa: E402
from appliance.ops.tasks import TaskStore  # noqa: E402
from appliance.rag.answer import Answer  # noqa: E402
from appliance.rag.beir import load_beir  # noqa: E402
from appliance.users import User  # noqa: E402
from ingest.embed import Embedder  # noqa: E402

USER = User("bench", "staff", ("bench", "finance"), False, 0, 0, 0, 0)


def _answer(i: int) -> Answer:
    generative = i % 3 != 0
    return Answer(
        text="answer [1]",
        mode="generative" if generative else "extractive",
        model="qwen" if generative else None,
        sources=[],
        cited=[1],
        not_found=i % 7 == 0,
        fallback_reason="" if generative else "EXPIRED: policy ended",
        language="en",
        tokens=120 if generative else 0,
        retrieval_ms=20.0 + i % 5,
        generation_ms=4000.0 if generative else 0.0,
        first_token_ms=350.0 if generative else None,
        question_id=f"q{i}",
    )


def per_call_us(fn: Callable[..., None], calls: int) -> dict[str, float]:
    samples = []
    for i in range(calls):
        answer = _answer(i)
        start = time.perf_counter()
        fn(answer, USER, "api", "answered")
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {
        "mean_us": round(statistics.fmean(samples), 2),
        "p50_us": round(samples[len(samples) // 2], 2),
        "p99_us": round(samples[int(len(samples) * 0.99)], 2),
    }


def retrieval_ms(workdir: Path, queries: int) -> float:
    embedder = Embedder.load("bundled", threads=1)
    retriever = build(workdir, 2000, 100, embedder)
    sample = list(load_beir(DATA).queries.values())
    random.Random(0).shuffle(sample)
    sample = sample[:queries]
    for q in sample[:5]:
        retriever.search(q, groups=["bench"], limit=8)
    times = []
    for q in sample:
        start = time.perf_counter()
        retriever.search(q, groups=["bench"], limit=8)
        times.append((time.perf_counter() - start) * 1000)
    retriever.store.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "metrics.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kapp-metrics-", dir=ROOT / "bench"))
    try:
        metrics = Metrics()
        store = TaskStore(workdir / "tasks.db", kept=10_000)
        metrics_cost = per_call_us(metrics.observe_answer, args.calls)
        store_cost = per_call_us(store.observe_answer, args.calls)
        store.close()
        retrieval = retrieval_ms(workdir, args.queries)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total_ms = (metrics_cost["mean_us"] + store_cost["mean_us"]) / 1000
    out = {
        "calls": args.calls,
        "metrics_observe": metrics_cost,
        "task_store_observe": store_cost,
        "monitoring_per_question_ms": round(total_ms, 4),
        "retrieval_p50_ms": round(retrieval, 2),
        "retrieval_index_chunks": 2000,
        "share_of_retrieval_percent": round(100 * total_ms / retrieval, 3),
        "goal_percent": 1.0,
        "meets_goal": total_ms <= 0.01 * retrieval,
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
