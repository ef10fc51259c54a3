"""Retrieval quality on the three public sets through the real ingest and search path (the
code `appliance eval retrieval --beir DIR` runs): nDCG@10, recall@10, MRR@10 and latency for
dense, sparse (keyed BM25) and hybrid retrieval, plus whether hybrid is at least as good as the
best single retriever. Writes JSON (default bench/results/retrieval.json)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.rag.evaluate import evaluate_beir  # noqa: E402
from ingest.embed import Embedder  # noqa: E402

SETS = ("msmarco-subset", "dbpedia-subset", "cmrc2018-trial")
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", nargs="*", default=list(SETS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval.json")
    args = parser.parse_args()
    embedder = Embedder.load("bundled")
    out = {}
    for name in args.sets:
        result = evaluate_beir(DATA / name, embedder)
        best = max(result["dense"]["ndcg@10"], result["sparse"]["ndcg@10"])
        result["hybrid_minus_best_single"] = round(result["hybrid"]["ndcg@10"] - best, 4)
        result["hybrid_at_least_best_single"] = result["hybrid"]["ndcg@10"] >= best
        out[name] = result
        print(name, json.dumps({m: result[m] for m in ("dense", "sparse", "hybrid")}), flush=True)
    out["load_avg_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
