"""Ingestion over the whole shared document corpus through the product's own composition root
(`appliance.knowledge.Knowledge`, the code `appliance ingest --once` runs), in a scratch home.

Reports files/s, pages/s, chunks/s, time per stage, the outcome of every file per MANIFEST
category (indexed, or quarantined with its reason code), and the pipeline's chunk throughput
against the embedder's raw throughput on the very same chunk texts, measured in the same run.
Writes JSON (default bench/results/ingest.json). ``--limit N`` ingests N files spread evenly
over the corpus (every k-th MANIFEST row) for a quick check of the direction of a change; the
figures in docs/benchmarks.md come from full runs on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.config import load_settings  # noqa: E402
from appliance.knowledge import Knowledge  # noqa: E402
from secure.home import HomeLayout, create_home  # noqa: E402
from secure.keys import KdfParams  # noqa: E402

DOCS = ROOT.parent / "shared" / "data" / "docs"


class RecordingEmbedder:
    """Passes through to the real embedder and keeps every text and the time spent."""

    def __init__(self, inner: Any, *, chunk_in_main: bool = False) -> None:
        self.inner, self.texts, self.seconds = inner, [], 0.0
        self.info = inner.info
        # as in production, parse children chunk with the tokenizer; without it, the main
        # process does (the design before, kept for embedders without a fast tokenizer)
        self.tokenizer_json = None if chunk_in_main else inner.tokenizer_json

    def count_tokens(self, text: str) -> int:
        return int(self.inner.count_tokens(text))

    def embed_documents(self, texts: list[str]) -> Any:
        s0 = [int(x) for x in open('/proc/thread-self/schedstat').read().split()]
        start = time.perf_counter()
        out = self.inner.embed_documents(texts)
        wall = time.perf_counter() - start
        s1 = [int(x) for x in open('/proc/thread-self/schedstat').read().split()]
        if len(texts) >= 30:
            print('CALL', len(texts), 'wall', round(wall, 2), 'oncpu', round((s1[0]-s0[0])/1e9, 2), 'runq wait', round((s1[1]-s0[1])/1e9, 2), 'slices', s1[2]-s0[2], flush=True)
        self.seconds += wall
        self.texts.append(list(texts))
        return out

    def embed_query(self, text: str) -> Any:
        return self.inner.embed_query(text)


def stage_drop(drop: Path, limit: int | None = None) -> dict[str, str]:
    """Copy the corpus files (all, or ``limit`` spread evenly) to drop/<category>/…; returns
    rel_path → category."""
    categories = {}
    with (DOCS / "MANIFEST.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if limit is not None and 0 < limit < len(rows):
        rows = [rows[i * len(rows) // limit] for i in range(limit)]
    for row in rows:
        rel = f"{row['category']}/{row['path']}"
        target = drop / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DOCS / row["path"], target)
        categories[rel] = row["category"]
    return categories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    parser.add_argument(
        "--limit", type=int, default=None, help="ingest only N files spread over the corpus"
    )
    parser.add_argument(
        "--chunk-in-main",
        action="store_true",
        help="chunk in the main process, as for an embedder without a fast tokenizer",
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kapp-ingest-bench-"))
    try:
        secure = create_home(
            HomeLayout(home),
            "bench",
            now=int(time.time()),
            actor="bench",
            params=KdfParams(n=2**10),
        )
        kb = Knowledge(load_settings(home), secure)
        recorder = RecordingEmbedder(kb.embedder, chunk_in_main=args.chunk_in_main)
        kb.__dict__["embedder"] = recorder  # the cached property, replaced for measuring
        categories = stage_drop(kb.settings.drop_dir, args.limit)
        pipeline = kb.pipeline()
        start = time.perf_counter()
        report = pipeline.run_once(settle=False)
        wall = time.perf_counter() - start
        result = summarise(report, categories, wall, recorder)
        result.update(limit=args.limit, chunk_in_main=args.chunk_in_main)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "quarantined"}, indent=2))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def summarise(
    report: Any, categories: dict[str, str], wall: float, recorder: RecordingEmbedder
) -> dict[str, Any]:
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    stages: Counter[str] = Counter()
    quarantined = []
    for f in report.files:
        label = "indexed" if f.outcome == "indexed" else f"quarantined:{f.code}"
        outcomes[categories.get(f.rel_path, "?")][label] += 1
        outcomes["ALL"][label] += 1
        stages.update(f.stages)
        if f.outcome == "failed":
            quarantined.append({"path": f.rel_path, "code": f.code, "reason": f.reason})
    totals = report.totals
    raw_start = time.perf_counter()
    for batch in recorder.texts:  # the same texts in the same batches, embedder alone
        recorder.embed_documents(batch)
    raw = time.perf_counter() - raw_start
    chunks = totals["chunks"]
    return {
        "files": len(report.files),
        # a file the pipeline could not handle for an unexpected reason is quarantined as
        # index-error (the batch goes on); a file missing from the report was lost
        "internal_errors": sum(1 for f in report.files if f.code == "index-error"),
        "unaccounted_files": sorted(set(categories) - {f.rel_path for f in report.files}),
        "wall_seconds": round(wall, 1),
        "files_per_s": round(len(report.files) / wall, 3),
        "pages_per_s": round(totals["pages"] / wall, 2),
        "chunks_per_s": round(chunks / wall, 2),
        "totals": totals,
        "stage_seconds": {k: round(v, 1) for k, v in sorted(stages.items())},
        "embedder_raw_chunks_per_s": round(chunks / raw, 2) if raw else None,
        "pipeline_vs_raw_embedder": round(raw / wall, 3) if wall else None,
        "goal_pipeline_vs_raw_embedder": 0.8,
        "outcomes": {k: dict(v) for k, v in sorted(outcomes.items())},
        "quarantined": quarantined,
        "cpu_count": os.cpu_count(),
        "load_avg_after": os.getloadavg(),
    }


if __name__ == "__main__":
    main()
