"""Can retrieval scores alone tell an unanswerable question from an answerable one? (issue 13)

SQuAD 2.0's unanswerable questions are written to look answerable from the same article, so a
separate abstention decision ("the documents do not hold this") taken from retrieval scores,
before any generation, may or may not help. This measures it without a model: the
squad2-train-subset passages are ingested into the scratch appliance of `appliance eval answers`
(`appliance.rag.eval_home`: the real pipeline, embedder, keyed BM25, Milvus Lite, the operator's
default fusion), then every question of both splits is retrieved as the staff user and these
per-question signals are kept (higher = "looks answerable"):

* ``fused_top``: the best fused score, what ``answer.min_score`` compares with (a question is
  refused without generating exactly when every passage scores below ``min_score``);
* ``fused_margin``: best fused score minus the second best;
* ``dense_top`` / ``dense_margin``: the embedder's raw cosine of its best hit, and its lead over
  the second (absolute, unlike the fused score, which is normalised to each list's top);
* ``sparse_top`` / ``sparse_top_per_term``: keyed BM25's raw best score, and that divided by the
  number of distinct query terms;
* ``agree``: 1 when both retrievers put the same chunk first.

For each signal, on the **tune** split only: the ROC AUC for unanswerable vs answerable (0.5 =
no information) over all its questions and over the one tune article that has unanswerable
questions (Spectre (2015 film): the same article on both sides, so the article's vocabulary does
not do the separating), and the threshold with the best abstention accuracy whose false
abstention stays at most ``--max-false`` (default 0.15). The best signal's threshold is then
applied unchanged to the **held-out** split and its abstention accuracy and false abstention
reported there (with the held-out AUC, for reading only: nothing is chosen on it).

    python bench/bench_abstention.py [--max-false 0.15]

Writes ``bench/results/abstention.json``. Retrieval only: a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from appliance.rag.eval_home import GROUP, eval_world  # noqa: E402
from appliance.rag.fuse import Ranked, fuse_lists  # noqa: E402
from appliance.rag.qa_set import QaQuestion, load_qa_set  # noqa: E402
from ingest.sparse import analyze  # noqa: E402

SQUAD = REPO.parent / "shared" / "data" / "squad2-train-subset" / "beir"
OUT = REPO / "bench" / "results" / "abstention.json"
SIGNALS = (
    "fused_top",
    "fused_margin",
    "dense_top",
    "dense_margin",
    "sparse_top",
    "sparse_top_per_term",
    "agree",
)


def signals(retriever: Any, question: str, depth: int) -> dict[str, float]:
    """The retrieval signals of one question (see the module doc)."""
    dense, sparse = retriever.candidate_lists(
        question, groups=[GROUP], dense_depth=depth, sparse_depth=depth
    )
    fused = fuse_lists(
        question,
        [Ranked(h.id, h.score) for h in dense],
        [Ranked(h.id, h.score) for h in sparse],
        policy=retriever.fusion,
        embedder_languages=retriever.embedder_languages,
        limit=2,
    ).hits
    terms = len(set(analyze(question))) or 1
    return {
        "fused_top": _at(fused, 0),
        "fused_margin": _at(fused, 0) - _at(fused, 1),
        "dense_top": _at(dense, 0),
        "dense_margin": _at(dense, 0) - _at(dense, 1),
        "sparse_top": _at(sparse, 0),
        "sparse_top_per_term": _at(sparse, 0) / terms,
        "agree": float(bool(dense and sparse and dense[0].id == sparse[0].id)),
    }


def _at(hits: Sequence[Any], i: int) -> float:
    return float(hits[i].score) if len(hits) > i else 0.0


def auc(unanswerable: Sequence[float], answerable: Sequence[float]) -> float | None:
    """P(an answerable question scores above an unanswerable one), ties counting half."""
    if not unanswerable or not answerable:
        return None
    pooled = sorted([(v, 0) for v in unanswerable] + [(v, 1) for v in answerable])
    ranks: list[float] = [0.0] * len(pooled)
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, (_, label) in zip(ranks, pooled, strict=True) if label == 1)
    n1, n0 = len(answerable), len(unanswerable)
    return round((rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0), 4)


def rates(rows: Sequence[dict[str, Any]], signal: str, threshold: float) -> dict[str, float]:
    """Abstaining when ``signal < threshold``: abstention accuracy and false abstention."""
    un = [r[signal] < threshold for r in rows if r["impossible"]]
    an = [r[signal] < threshold for r in rows if not r["impossible"]]
    return {
        "abstention_accuracy": round(sum(un) / len(un), 4) if un else 0.0,
        "false_abstention": round(sum(an) / len(an), 4) if an else 0.0,
    }


def best_threshold(rows: Sequence[dict[str, Any]], signal: str, max_false: float) -> dict[str, Any]:
    """The threshold with the best abstention accuracy whose false abstention <= max_false
    (ties: the lower false abstention, then the lower threshold)."""
    values = sorted({r[signal] for r in rows})
    candidates = [values[0]] + [(a + b) / 2 for a, b in itertools.pairwise(values)]
    candidates.append(values[-1] + 1e-9)
    best: dict[str, Any] = {"threshold": values[0], **rates(rows, signal, values[0])}
    for t in candidates:
        r = rates(rows, signal, t)
        if r["false_abstention"] > max_false:
            continue
        key = (r["abstention_accuracy"], -r["false_abstention"])
        if key > (best["abstention_accuracy"], -best["false_abstention"]):
            best = {"threshold": round(t, 6), **r}
    return best


def analyse(rows: list[dict[str, Any]], max_false: float) -> dict[str, Any]:
    tune = [r for r in rows if r["split"] == "tune"]
    held = [r for r in rows if r["split"] == "held-out"]
    tune_article = [r for r in tune if r["article"] in _impossible_articles(tune)]
    held_article = [r for r in held if r["article"] in _impossible_articles(held)]
    per_signal: dict[str, Any] = {}
    for s in SIGNALS:
        per_signal[s] = {
            "tune_auc": _auc(tune, s),
            "tune_auc_same_article": _auc(tune_article, s),
            "tune_best": best_threshold(tune, s, max_false),
            "held_out_auc": _auc(held, s),
            "held_out_auc_same_article": _auc(held_article, s),
        }
    chosen = max(SIGNALS, key=lambda s: per_signal[s]["tune_best"]["abstention_accuracy"])
    threshold = per_signal[chosen]["tune_best"]["threshold"]
    return {
        "max_false_abstention": max_false,
        "signals": per_signal,
        "chosen_on_tune": {
            "signal": chosen,
            "threshold": threshold,
            "tune": rates(tune, chosen, threshold),
            "tune_same_article": rates(tune_article, chosen, threshold),
            "held_out": rates(held, chosen, threshold),
            "held_out_same_article": rates(held_article, chosen, threshold),
            "false_abstention_by_article": {
                article: rates([r for r in rows if r["article"] == article], chosen, threshold)[
                    "false_abstention"
                ]
                for article in sorted({r["article"] for r in rows})
            },
        },
        "min_score_sweep_held_out": {
            str(t): rates(held, "fused_top", t) for t in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
        },
    }


def _impossible_articles(rows: Sequence[dict[str, Any]]) -> set[str]:
    return {r["article"] for r in rows if r["impossible"]}


def _auc(rows: Sequence[dict[str, Any]], signal: str) -> float | None:
    return auc(
        [r[signal] for r in rows if r["impossible"]],
        [r[signal] for r in rows if not r["impossible"]],
    )


def _row(q: QaQuestion, values: dict[str, float]) -> dict[str, Any]:
    meta = {"id": q.id, "split": q.split, "article": q.article, "impossible": q.impossible}
    return {**meta, **values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir", type=Path, default=SQUAD)
    parser.add_argument("--max-false", type=float, default=0.15)
    parser.add_argument("--limit", type=int, default=None, help="first N questions (a smoke run)")
    parser.add_argument(
        "--same-article-only",
        action="store_true",
        help="only questions about articles that have unanswerable questions (a quick run)",
    )
    parser.add_argument("--rows", type=Path, default=None, help="also write per-question rows")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = load_qa_set(args.beir)
    questions = data.questions[: args.limit] if args.limit else data.questions
    if args.same_article_only:
        with_impossible = {q.article for q in questions if q.impossible}
        questions = tuple(q for q in questions if q.article in with_impossible)
    load_start = os.getloadavg()
    started = time.time()
    rows = []
    with eval_world(data.passages, base=None, model_source=None) as world:
        retriever = world.knowledge.retriever
        depth = retriever.candidates
        for i, q in enumerate(questions, 1):
            rows.append(_row(q, signals(retriever, q.text, depth)))
            if i % 500 == 0:
                print(f"  {i}/{len(questions)}", file=sys.stderr, flush=True)
        fusion = retriever.fusion.describe()
    report = {
        "dataset": data.name,
        "fusion": fusion,
        "counts": {
            split: {
                "answerable": sum(1 for r in rows if r["split"] == split and not r["impossible"]),
                "unanswerable": sum(1 for r in rows if r["split"] == split and r["impossible"]),
            }
            for split in ("tune", "held-out")
        },
        **analyse(rows, args.max_false),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "wall_s": round(time.time() - started),
        },
    }
    if args.rows is not None:
        args.rows.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "signals"}, indent=2))


if __name__ == "__main__":
    main()
