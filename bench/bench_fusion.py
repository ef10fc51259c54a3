"""Choosing the hybrid fusion by leave-one-collection-out (LOCO) on every development set.

1. **Runs, once per set** (the expensive part): each set is indexed through the real write path
   (``appliance.rag.evaluate.build_scratch``: chunk, embed, keyed BM25, encrypt, Milvus Lite,
   registry) and every judged query is searched once by each retriever through the real
   ``Retriever`` (``--depth`` hits each). The chunk lists with their scores are cached as
   :class:`appliance.rag.runs.DevSet` files under ``--cache-dir`` (outside the repository), keyed
   by the set's files, the embedder and the depth.
2. **Candidates**, scored offline on those lists (``appliance/rag/fit.py``): the convex
   combination of bounds-, min-max- and z-score-normalised scores and weighted RRF (k 1 to 100),
   each with dense weights 0 to 1 in steps of 0.05 (189 policies); and, as per-query
   candidates, the convex forms with a dense weight that moves per query with a signal that does
   not depend on the collection: the difference of the two lists' top-score separation (z of the
   top score, or (s1 - s2) / (s1 - s10)), the overlap of the two top 10s, the query's length in
   BM25 terms. The language rule (an English-only embedder on a Chinese query: BM25 alone)
   applies before any of them.
3. **Selection**: for each family of candidates and each set left out, constants are chosen on
   the other sets by the one-standard-error rule towards the family's equal-weight member
   (``appliance.rag.fit.choose``; sets weighted n / (n + 100)) and scored on the set left out.
   The family with the best weighted LOCO margin over the better single retriever is the form
   shipped; its constants are the ones the same rule picks on all sets (the shipped
   ``appliance.rag.fuse.DEFAULT_FUSION`` must equal them: the bench reports whether it does).

Goals per set (issue 15): hybrid nDCG@10 >= the better single retriever, and >= it + 0.01 where
the two are within 0.05. The table gives the standard error of each margin (paired over queries).
Writes ``bench/results/fusion.json``. Run: ``nice -n 5 python bench/bench_fusion.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.rag.beir import load_beir  # noqa: E402
from appliance.rag.evaluate import GROUP, build_scratch  # noqa: E402
from appliance.rag.fit import (  # noqa: E402
    WEIGHTS,
    QueryArrays,
    candidates,
    choose,
    prior_distance,
    score_grid,
    set_weight,
)
from appliance.rag.fuse import DEFAULT_FUSION, FusionPolicy, fixed_trust  # noqa: E402
from appliance.rag.runs import DevSet, QueryRun, collect_runs, score_runs  # noqa: E402
from ingest.sparse import analyze  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "fusion.json"
SETS = {  # name -> folder below DATA: every English and Chinese labelled set we have
    "msmarco-subset": "msmarco-subset",
    "dbpedia-subset": "dbpedia-subset",
    "squad2-train-subset": "squad2-train-subset/beir",
    "cmrc2018-trial": "cmrc2018-trial",
}
CLOSE = 0.05  # single retrievers this close: the hybrid must beat the better by MARGIN
MARGIN = 0.01


# -- runs ---------------------------------------------------------------------------------------


def dev_set(name: str, embedder: Any, cache: Path, depth: int) -> DevSet:
    folder = DATA / SETS[name]
    digest = hashlib.sha256(f"{embedder.info.model_id}|{depth}".encode())
    for part in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        digest.update((folder / part).read_bytes())
    path = cache / f"{name}-{digest.hexdigest()[:16]}.json.gz"
    if path.is_file():
        return DevSet.load(path)
    data = load_beir(folder)
    work = Path(tempfile.mkdtemp(prefix="kapp-fusion-"))
    try:
        t0 = time.perf_counter()
        retriever, _registry, store = build_scratch(data, work, embedder)
        t1 = time.perf_counter()
        dev = collect_runs(name, data.queries, data.qrels, retriever, groups=[GROUP], depth=depth)
        print(
            f"{name}: indexed in {t1 - t0:.0f} s, {len(dev.runs)} queries searched in "
            f"{time.perf_counter() - t1:.0f} s",
            flush=True,
        )
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dev.save(path)
    return dev


# -- candidates with per-query weights ----------------------------------------------------------


@dataclass(frozen=True)
class Adaptive:
    """A convex policy whose dense weight moves per query: clip(w + gain * signal, 0, 1)."""

    policy: FusionPolicy
    signal: str  # "separation_z", "separation_gap", "overlap" or "length"
    gain: float

    def label(self) -> str:
        return f"{self.policy.describe()}, {self.signal} gain {self.gain:+g}"


SIGNAL_GAINS = {
    "separation_z": (0.02, 0.05, 0.1),
    "separation_gap": (0.1, 0.25, 0.5),
    "overlap": (-0.4, -0.2, 0.2, 0.4),
    "length": (-0.05, -0.02, 0.02, 0.05),
}


def signals(run: QueryRun) -> dict[str, float]:
    """Per-query evidence that needs no labels and no knowledge of the collection."""

    def z_top(scores: Sequence[float]) -> float:
        top = np.asarray(scores[:100], dtype=float)
        spread = top.std() if len(top) > 2 else 0.0
        return float((top[0] - top.mean()) / spread) if spread > 0 else 0.0

    def gap(scores: Sequence[float]) -> float:
        if len(scores) < 3:
            return 0.0
        last = scores[min(len(scores), 10) - 1]
        return (scores[0] - scores[1]) / (scores[0] - last) if scores[0] > last else 0.0

    d, s = [h.score for h in run.dense], [h.score for h in run.sparse]
    top_d, top_s = {h.id for h in run.dense[:10]}, {h.id for h in run.sparse[:10]}
    return {
        "separation_z": z_top(d) - z_top(s) if d and s else 0.0,
        "separation_gap": gap(d) - gap(s),
        "overlap": len(top_d & top_s) / 10 - 0.5,
        "length": len(analyze(run.text)) - 6.0,
    }


def adaptive_candidates() -> list[Adaptive]:
    out = []
    for how in ("bounds", "minmax", "zscore"):
        for signal, gains in SIGNAL_GAINS.items():
            for gain in gains:
                out += [Adaptive(FusionPolicy("convex", how, w), signal, gain) for w in WEIGHTS]
    return out


def score_adaptive(dev: DevSet, grid: Sequence[Adaptive], languages: frozenset[str]) -> np.ndarray:
    out = np.zeros((len(grid), len(dev.runs)))
    for col, run in enumerate(dev.runs):
        arrays = QueryArrays(run, dev.doc_of)
        fixed = fixed_trust(
            run.text, embedder_languages=languages, dense=run.dense, sparse=run.sparse
        )
        sig = signals(run)
        by_form: dict[str, list[int]] = {}
        for row, cand in enumerate(grid):
            by_form.setdefault(cand.policy.normalisation, []).append(row)
        for how, rows in by_form.items():
            if fixed is not None:
                weights = np.full(len(rows), fixed.dense)
            else:
                weights = np.array(
                    [
                        min(
                            1.0,
                            max(
                                0.0,
                                grid[r].policy.dense_weight + grid[r].gain * sig[grid[r].signal],
                            ),
                        )
                        for r in rows
                    ]
                )
            out[rows, col] = arrays.ndcg(("convex", how, 0), weights)
    return out


def cached_scores(
    dev: DevSet,
    static: list[FusionPolicy],
    adaptive: list[Adaptive],
    languages: frozenset[str],
    cache: Path,
) -> np.ndarray:
    """Every candidate's nDCG@10 on every query of ``dev``, cached by the runs, the candidates
    and the product's scoring code (a few minutes for SQuAD's 4,122 queries on two cores).
    Delete the cache after changing :func:`signals` or :func:`score_adaptive` here."""
    key = hashlib.sha256()
    for part in (
        json.dumps(dev.to_json(), sort_keys=True),
        repr(static),
        repr(adaptive),
        repr(sorted(languages)),
        *(
            (ROOT / f).read_text(encoding="utf-8")
            for f in ("appliance/rag/fit.py", "appliance/rag/fuse.py", "appliance/rag/lang.py")
        ),
    ):
        key.update(part.encode("utf-8"))
    path = cache / f"{dev.name}-scores-{key.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    matrix = np.vstack(
        [score_grid(dev, static, languages), score_adaptive(dev, adaptive, languages)]
    )
    np.save(path, matrix)
    return matrix


# -- leave-one-collection-out -------------------------------------------------------------------


@dataclass
class Family:
    name: str
    rows: list[int]  # into the combined candidate list
    prior: FusionPolicy


def loco(
    names: list[str],
    scores: dict[str, np.ndarray],
    distances: Callable[[FusionPolicy], list[tuple[float, ...]]],
    family: Family,
    labels: list[str],
    best_single: dict[str, float],
) -> dict[str, Any]:
    dist = distances(family.prior)
    rows = family.rows
    sub_dist = [dist[r] for r in rows]
    table = {}
    for out in names:
        train = [n for n in names if n != out]
        pick = rows[choose([scores[n][rows] for n in train], sub_dist)]
        hybrid = float(scores[out][pick].mean())
        table[out] = {
            "hybrid": round(hybrid, 4),
            "margin": round(hybrid - best_single[out], 4),
            "constants": labels[pick],
            "row": pick,
        }
    weights = {n: set_weight(scores[n].shape[1]) for n in names}
    mean_margin = sum(weights[n] * table[n]["margin"] for n in names) / sum(weights.values())
    final = rows[choose([scores[n][rows] for n in names], sub_dist)]
    return {
        "per_set": table,
        "weighted_mean_margin": round(mean_margin, 4),
        "chosen_on_all_sets": labels[final],
        "chosen_row": final,
    }


def pick_family(
    families: list[Family],
    results: dict[str, dict[str, Any]],
    scores: dict[str, np.ndarray],
    names: list[str],
) -> Family:
    """The one-standard-error rule again, one level up: the family with the best weighted LOCO
    margin, unless a family without per-query signals is within one standard error of it (the
    paired per-query differences of their LOCO rankings, sets weighted as in training)."""
    weights = np.array([set_weight(scores[n].shape[1]) for n in names])
    weights = weights / weights.sum()

    def per_query(f: Family, n: str) -> np.ndarray:
        return scores[n][results[f.name]["per_set"][n]["row"]]

    best = max(families, key=lambda f: results[f.name]["weighted_mean_margin"])
    for f in families:
        diffs = [per_query(f, n) - per_query(best, n) for n in names]
        se = math.sqrt(
            sum(w**2 * d.var(ddof=1) / len(d) for w, d in zip(weights, diffs, strict=True))
        )
        gap = results[best.name]["weighted_mean_margin"] - results[f.name]["weighted_mean_margin"]
        results[f.name]["behind_best_family"] = round(gap, 4)
        results[f.name]["behind_best_family_se"] = round(se, 4)
    plain = [f for f in families if "per-query" not in f.name]
    near = [
        f
        for f in plain
        if results[f.name]["behind_best_family"] <= results[f.name]["behind_best_family_se"]
    ]
    return max(near or [best], key=lambda f: results[f.name]["weighted_mean_margin"])


def margin_se(hybrid: np.ndarray, dense: np.ndarray, sparse: np.ndarray) -> float:
    best = dense if dense.mean() >= sparse.mean() else sparse
    diff = hybrid - best
    return float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0


def run_arguments(doc: str, results: Path) -> argparse.Namespace:
    """``--cache-dir``, ``--depth`` and ``--out`` (default ``results``), as the fusion benches
    take them."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/bench-cache/fusion"))
    parser.add_argument("--depth", type=int, default=100, help="hits per retriever per query")
    parser.add_argument("--out", type=Path, default=results)
    return parser.parse_args()


def load_dev_sets(args: argparse.Namespace) -> tuple[Any, list[str], dict[str, DevSet]]:
    """The bundled embedder, the set names and every set's runs (cached, see dev_set)."""
    from ingest.embed import Embedder

    embedder = Embedder.load("bundled")
    names = list(SETS)
    devs = {n: dev_set(n, embedder, args.cache_dir, args.depth) for n in names}
    return embedder, names, devs


def main() -> None:
    args = run_arguments(__doc__ or "", RESULTS)
    embedder, names, devs = load_dev_sets(args)
    languages = frozenset(embedder.info.languages)
    t0 = time.perf_counter()
    static = candidates()
    adaptive = adaptive_candidates()
    labels = [p.describe() for p in static] + [a.label() for a in adaptive]
    scores = {n: cached_scores(devs[n], static, adaptive, languages, args.cache_dir) for n in names}
    singles = {
        n: {m: np.array(score_runs(devs[n], mode=m)) for m in ("dense", "sparse")} for n in names
    }
    best_single = {n: max(v["dense"].mean(), v["sparse"].mean()) for n, v in singles.items()}
    policies: list[FusionPolicy] = list(static) + [a.policy for a in adaptive]
    gains = [0.0] * len(static) + [a.gain for a in adaptive]

    def distances(prior: FusionPolicy) -> list[tuple[float, ...]]:
        return [
            (float(g != 0.0), *prior_distance(p, prior))
            for p, g in zip(policies, gains, strict=True)
        ]

    n_static = len(static)

    def rows(pred: Callable[[int], bool]) -> list[int]:
        return [i for i in range(len(policies)) if pred(i)]

    families = [
        Family(
            f"convex, {how}",
            rows(
                lambda i, h=how: (
                    i < n_static
                    and policies[i].method == "convex"
                    and policies[i].normalisation == h
                )
            ),
            FusionPolicy("convex", how, 0.5),
        )
        for how in ("bounds", "minmax", "zscore")
    ]
    families.append(
        Family(
            "weighted RRF",
            rows(lambda i: i < n_static and policies[i].method == "rrf"),
            FusionPolicy("rrf", "bounds", 0.5, 60),
        )
    )
    for signal in SIGNAL_GAINS:
        for how in ("bounds", "minmax", "zscore"):
            families.append(
                Family(
                    f"convex, {how}, per-query weight by {signal}",
                    rows(
                        lambda i, h=how, s=signal: (
                            policies[i].method == "convex"
                            and policies[i].normalisation == h
                            and (i < n_static or adaptive[i - n_static].signal == s)
                        )
                    ),
                    FusionPolicy("convex", how, 0.5),
                )
            )
    results = {f.name: loco(names, scores, distances, f, labels, best_single) for f in families}
    winner = pick_family(families, results, scores, names)
    chosen = results[winner.name]
    final_row = chosen["chosen_row"]
    shipped_row = static.index(DEFAULT_FUSION) if DEFAULT_FUSION in static else None
    table = {}
    for n in names:
        d, s = singles[n]["dense"], singles[n]["sparse"]
        entry = chosen["per_set"][n]
        hybrid_row = labels.index(entry["constants"])
        close = abs(d.mean() - s.mean()) < CLOSE
        need = best_single[n] + (MARGIN if close else 0.0)
        table[n] = {
            "queries": len(devs[n].runs),
            "weight": round(set_weight(len(devs[n].runs)), 3),
            "dense": round(float(d.mean()), 4),
            "bm25": round(float(s.mean()), 4),
            "best_single": round(float(best_single[n]), 4),
            "hybrid_loco": entry["hybrid"],
            "constants_tuned_on_other_sets": entry["constants"],
            "margin": entry["margin"],
            "margin_se": round(margin_se(scores[n][hybrid_row], d, s), 4),
            "singles_within_0.05": bool(close),
            "goal": round(float(need), 4),
            "goal_met": bool(entry["hybrid"] >= round(float(need), 4)),
            "shipped_default_in_sample": (
                round(float(scores[n][shipped_row].mean()), 4) if shipped_row is not None else None
            ),
            "plain_rrf_k60_equal": round(
                float(np.mean(score_runs(devs[n], policy=FusionPolicy("rrf", "bounds", 0.5, 60)))),
                4,
            ),
            "previous_rule_rrf_1_to_0.01": round(
                float(
                    np.mean(score_runs(devs[n], policy=FusionPolicy("rrf", "bounds", 1 / 1.01, 60)))
                ),
                4,
            ),
        }
    depth = {}
    for d_depth in (20, 50):
        depth[f"dense {d_depth}, bm25 {args.depth}"] = {
            n: round(
                float(np.mean(score_runs(_truncate(devs[n], d_depth), policy=DEFAULT_FUSION))), 4
            )
            for n in names
        }
    out = {
        "bench": "leave-one-collection-out choice of the hybrid fusion (bench/bench_fusion.py)",
        "embedder": embedder.info.model_id,
        "embedder_languages": sorted(languages),
        "depth": args.depth,
        "selection": "constants: one-standard-error rule towards each family's equal-weight "
        "member, sets weighted n/(n+100); family: the best weighted LOCO margin, or a family "
        "without per-query signals within one standard error of it",
        "families": {
            f.name: {k: v for k, v in results[f.name].items() if k != "chosen_row"}
            for f in families
        },
        "winner": winner.name,
        "chosen_on_all_sets": labels[final_row],
        "shipped_default": asdict(DEFAULT_FUSION),
        "shipped_default_is_the_choice": shipped_row == final_row,
        "loco_table": table,
        "dense_depth_sensitivity_shipped_default": depth,
        "scoring_seconds": round(time.perf_counter() - t0, 1),
        "cpu_count": os.cpu_count(),
        "load_avg_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        json.dumps({"winner": winner.name, "chosen": labels[final_row], "table": table}, indent=1)
    )


def _drop_row(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "row"}


def _truncate(dev: DevSet, dense_depth: int) -> DevSet:
    runs = tuple(QueryRun(r.id, r.text, r.dense[:dense_depth], r.sparse, r.qrels) for r in dev.runs)
    return DevSet(dev.name, runs, dev.doc_of, dev.depth)


if __name__ == "__main__":
    main()
