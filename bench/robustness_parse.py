"""Parse every file of the shared document corpus through `parse_isolated`; count outcomes.

Goal: zero crashes. Every file is either parsed (indexed) or refused with a `Rejected` code and a
reason (quarantined). Results per MANIFEST category go to bench/results/parse_robustness.json.

    python bench/robustness_parse.py [--workers 2] [--timeout 120] [--limit N]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ingest.errors import IngestError  # noqa: E402
from ingest.isolate import parse_isolated, system_capabilities  # noqa: E402
from ingest.parse import ParseLimits  # noqa: E402

DOCS = REPO.parent / "shared" / "data" / "docs"
RESULTS = REPO / "bench" / "results" / "parse_robustness.json"


def parse_one(row: dict[str, str], limits: ParseLimits) -> dict[str, Any]:
    path = DOCS / row["path"]
    started = time.perf_counter()
    outcome: dict[str, Any] = {"path": row["path"], "category": row["category"]}
    try:
        document = parse_isolated(path, limits=limits)
    except IngestError as exc:
        outcome |= {"status": "quarantined", "code": exc.code, "reason": exc.diagnostics()}
    except Exception as exc:  # a crash: what this benchmark exists to find
        outcome |= {"status": "crash", "code": type(exc).__name__, "reason": str(exc)[:300]}
    else:
        outcome |= {
            "status": "indexed",
            "elements": len(document.elements),
            "tables": sum(1 for e in document.elements if e.kind == "table"),
            "titles": sum(1 for e in document.elements if e.kind == "title"),
            "chars": sum(len(e.text) for e in document.elements),
            "pages": document.pages,
            "ocr_pages": document.ocr_pages,
            "warnings": list(document.warnings),
        }
    outcome["seconds"] = round(time.perf_counter() - started, 3)
    return outcome


def summarize(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    per_category: dict[str, Counter[str]] = defaultdict(Counter)
    for item in outcomes:
        label = "indexed" if item["status"] == "indexed" else f"{item['status']}:{item['code']}"
        per_category[item["category"]][label] += 1
        per_category["ALL"][label] += 1
    return {
        category: dict(sorted(counts.items())) for category, counts in sorted(per_category.items())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--limit", type=int, default=0, help="only the first N files")
    args = parser.parse_args()
    with (DOCS / "MANIFEST.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    rows = rows[: args.limit] if args.limit else rows
    limits = ParseLimits(timeout_s=args.timeout)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        outcomes = list(pool.map(lambda row: parse_one(row, limits), rows))
    elapsed = time.perf_counter() - started
    report = {
        "files": len(outcomes),
        "crashes": sum(1 for item in outcomes if item["status"] == "crash"),
        "wall_seconds": round(elapsed, 1),
        "workers": args.workers,
        "timeout_s": args.timeout,
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "capabilities": system_capabilities(),
        "by_category": summarize(outcomes),
        "slowest": sorted(outcomes, key=lambda item: -item["seconds"])[:10],
        "outcomes": outcomes,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("files", "crashes", "wall_seconds")}))
    for category, counts in report["by_category"].items():
        print(f"{category:14} {counts}")


if __name__ == "__main__":
    main()
