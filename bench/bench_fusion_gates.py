"""Can a fusion without per-collection tuning meet every set's goal? Gated and per-query forms.

``bench/bench_fusion.py`` ships TM2C2 (convex, bounds-normalised) at dense weight 0.80, chosen by
leave-one-collection-out (LOCO); scored that way it misses the goal on MS MARCO and DBpedia. This
bench asks whether another label-free, collection-independent form with at most two constants
would pass, on the same runs (``bench_fusion.dev_set``: the cached DevSets under ``--cache-dir``,
built through the real write path when missing), every candidate scored offline on every judged
query after the language rule (so CMRC, BM25 alone, scores the same under every candidate).

1. **In-sample curves**: convex-bounds nDCG@10 against the dense weight (0 to 1 by 0.05, 0.90 to
   1.00 by 0.01) on each set, by the product's scorer (``fit.score_grid``), and whether any
   weight below 1 beats dense alone.
2. **Families** (``FAMILIES``): static convex (A, A2), dense-led top-N re-ranking (B), a power of
   the BM25 share (C), a per-query weight ``clip(w0 + g * (signal - centre))`` by four signals
   (D), an agreement bonus (E), gates letting BM25 count only when its top hit is in the dense
   top K (F) or stands apart from its second (H), dense-led RRF (G). For each, the LOCO table
   (constants chosen on the other three sets) under four selection rules: the bench's
   (``fit.choose``: sets weighted n / (n + 100), one standard error towards the prior, here the
   shipped weight 0.80 and each family's neutral setting), the largest worst-case slack against
   the training goals (maximin), and the best objective among constants whose slack is >= 0 (or
   >= 1 paired SE) on every training set (constrained).
3. **In-sample upper bound**: how many of all candidate constants meet every goal when chosen on
   all 4 sets at once; the best few with their margins and paired standard errors.

Self-check: the scorer here equals ``fit.score_grid`` on convex-bounds, and ``bench_fusion.loco``
gives the shipped form's LOCO row of ``bench/results/fusion.json``. Goals as in ``bench_fusion``
(>= the better single retriever, + 0.01 where the two are within 0.05), met when equal at 4
decimals; standard errors paired over queries against the better single retriever.
Writes ``bench/results/fusion_gates.json``. Run: ``nice -n 10 python bench/bench_fusion_gates.py``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bench_fusion as bf  # noqa: E402  - the runs, the goals and the bench's LOCO

from appliance.rag import fit  # noqa: E402
from appliance.rag.beir import load_beir  # noqa: E402
from appliance.rag.fuse import DEFAULT_FUSION, FusionPolicy, fixed_trust  # noqa: E402
from appliance.rag.runs import DevSet, K, QueryRun, score_runs  # noqa: E402
from ingest.sparse import analyze, idf  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fusion_gates.json"
SHIPPED_LOCO = dict(zip(bf.SETS, (0.7994, 0.4926, 0.8908, 0.9826), strict=True))  # fusion.json
W = np.array(fit.WEIGHTS)
FINE = tuple(round(0.90 + 0.01 * i, 2) for i in range(11))
NEVER = 1 << 30
DISCOUNT = 1.0 / np.log2(np.arange(2, K + 2))
BOUNDS = fit.form_of(DEFAULT_FUSION)  # ("convex", "bounds", 0)


def r4(x: Any) -> float:
    return round(float(x), 4)


# -- per-query arrays ---------------------------------------------------------------------------


@dataclass
class Query:
    arrays: fit.QueryArrays  # the product scorer's arrays (ids, ranks, tie order, idcg)
    fixed: float | None  # nDCG@10 when a rule fixed the ranking (language, an empty list)
    dn: np.ndarray  # TM2C2 shares over arrays.ids; missing: the list's lowest
    sn: np.ndarray
    doc: np.ndarray  # each id's document, as an index into gain
    gain: np.ndarray
    sig: dict[str, float]  # label-free signals (empty when fixed)


Corpus = tuple[Counter[str], dict[str, frozenset[str]]]  # document frequencies, terms by doc


def corpus_stats(name: str) -> Corpus:
    """Document frequencies of the analyzed passages (a document-level twin of the registry's)."""
    passages = load_beir(bf.DATA / bf.SETS[name]).passages
    terms = {p.id: frozenset(analyze(p.full_text)) for p in passages}
    return Counter(t for ts in terms.values() for t in ts), terms


def signals(
    run: QueryRun, a: fit.QueryArrays, doc_of: Mapping[str, str], c: Corpus
) -> dict[str, float]:
    (df, terms), s = c, sorted(a.sparse.values(), reverse=True)
    counts = Counter(analyze(run.text))
    weight = {t: idf(df.get(t, 0), len(terms)) for t in counts}
    sum_idf, total = sum(n * weight[t] for t, n in counts.items()), sum(weight.values())
    top = terms.get(doc_of[run.sparse[0].id], frozenset())  # BM25's top document
    return {
        "cos1": max(a.dense.values()),  # the dense top hit's cosine
        "bm25_gap": (s[0] - s[1]) / s[0] if len(s) > 1 and s[0] > 0 else 0.0,
        "bm25_match": s[0] / sum_idf if sum_idf > 0 else 0.0,  # BM25 top / the query's IDF
        "frac_top_s": sum(v for t, v in weight.items() if t in top) / total if total else 0.0,
        "top_s_dense_rank": float(a.d_rank.get(run.sparse[0].id, NEVER)),
    }


def prepare(dev: DevSet, langs: frozenset[str]) -> list[Query]:
    corpus: Corpus | None = None
    out = []
    for run in dev.runs:
        a = fit.QueryArrays(run, dev.doc_of)
        trust = fixed_trust(run.text, embedder_languages=langs, dense=run.dense, sparse=run.sparse)
        fixed = None if trust is None else float(a.ndcg(BOUNDS, np.array([trust.dense]))[0])
        if fixed is None and corpus is None:
            corpus = corpus_stats(dev.name)
        sig = signals(run, a, dev.doc_of, corpus) if fixed is None and corpus else {}
        docs = {d: i for i, d in enumerate(dict.fromkeys(a.docs))}
        gain = np.array([max(a.qrels.get(d, 0), 0) for d in docs], dtype=float)
        at = np.array([docs[d] for d in a.docs])
        out.append(Query(a, fixed, *a._shares(BOUNDS), at, gain, sig))  # the product's shares
    return out


# -- scoring ------------------------------------------------------------------------------------

Scored = tuple[np.ndarray, np.ndarray, np.ndarray]  # scores, kept (rows x ids), weight (ties)


def ndcg_rows(q: Query, scored: Scored) -> np.ndarray:
    """nDCG@10 of each row, ranked as ``fuse`` ranks: score, then the better rank among lists
    that count (weight 1: dense only, 0: BM25 only), then id; chunks deduplicated to documents."""
    scores, keep, weight = scored
    a, (rows, n) = q.arrays, scores.shape
    if a.idcg <= 0:
        return np.zeros(rows)
    w = weight[:, None]
    tie = np.where(w == 0, a.rank_s, np.where(w == 1, a.rank_d, np.minimum(a.rank_d, a.rank_s)))
    order = np.lexsort((np.broadcast_to(a.by_id, (rows, n)), tie, -scores), axis=-1)
    pos = np.empty((rows, n))
    np.put_along_axis(pos, order, np.broadcast_to(np.arange(n, dtype=float), (rows, n)), axis=-1)
    pos = np.where(keep, pos, np.inf)
    first = np.full((rows, len(q.gain)), np.inf)  # each document's best position
    np.minimum.at(first, (np.repeat(np.arange(rows), n), np.tile(q.doc, rows)), pos.ravel())
    k = min(K, len(q.gain))
    top = np.argsort(first, axis=1, kind="stable")[:, :k]
    found = np.isfinite(np.take_along_axis(first, top, axis=1))
    return (q.gain[top] * found * DISCOUNT[:k]).sum(axis=1) / a.idcg


def convex(q: Query, w: np.ndarray, sn: np.ndarray | None = None) -> Scored:
    """TM2C2 with dense weight ``w`` per row (the same operations as ``fit.QueryArrays.ndcg``)."""
    scores = w[:, None] * q.dn[None] + (1.0 - w)[:, None] * (q.sn if sn is None else sn)[None]
    a = q.arrays
    keep = (a.in_dense[None] & (w[:, None] > 0)) | (a.in_sparse[None] & (w[:, None] < 1))
    return scores, keep, w


def stack(parts: Sequence[Scored]) -> Scored:
    keep = [np.broadcast_to(p[1], p[0].shape) for p in parts]
    return np.vstack([p[0] for p in parts]), np.vstack(keep), np.concatenate([p[2] for p in parts])


# -- families (at most 2 free constants each; the prior is where the one-SE rule leans) ---------

W0 = np.round(np.arange(0.5, 1.3001, 0.05), 2)
NS, PS, BS = (3, 5, 10, 20, 50, 100), (0.25, 0.5, 1.0, 2.0, 3.0), (0.0, 0.02, 0.05, 0.1, 0.2)
KS, TS = (1, 3, 5, 10, 20, 50, 100, NEVER), (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
NG, AS = (10, 20, 50, 100), (0.1, 0.25, 0.5, 0.75, 1.0, 1.5)
SIGNALS = {  # D: signal -> (centre, gains)
    "cos1": (0.6, (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)),
    "bm25_gap": (0.1, (-1.0, -0.5, -0.25, 0.25, 0.5, 1.0)),
    "bm25_match": (1.0, (-0.4, -0.2, -0.1, 0.1, 0.2, 0.4)),
    "frac_top_s": (0.7, (-0.4, -0.2, -0.1, 0.1, 0.2, 0.4)),
}


@dataclass(frozen=True)
class Family:
    name: str
    grid: str
    labels: list[str]
    score: Callable[[Query], Scored]
    distance: Sequence[tuple[float, ...]]  # from the prior (fit.choose)


def by_w(
    name: str,
    key: str,
    values: Sequence[Any],
    one: Callable[[Query, Any], Scored],
    prior: Callable[[Any], float],
    w_first: bool = False,
) -> Family:
    """``one(query, value)`` over the 21 dense weights, for each value of ``key``."""
    dist = [(abs(w - 0.8), prior(v))[:: 1 if w_first else -1] for v in values for w in W]
    return Family(name, f"{key} in {values}, w 0..1 by 0.05",
                  [f"{key}={'inf' if v == NEVER else v},w={w:.2f}" for v in values for w in W],
                  lambda q: stack([one(q, v) for v in values]), dist)  # fmt: skip


def static(name: str, weights: Sequence[float]) -> Family:
    labels, dist = [f"w={w:.2f}" for w in weights], [(abs(w - 0.8),) for w in weights]
    return Family(
        name, f"w {weights[0]}..{weights[-1]}", labels, lambda q: convex(q, np.array(weights)), dist
    )


def dense_led(q: Query, n: int) -> Scored:  # B: dense top N re-ranked, the rest in dense order
    s, _, _ = convex(q, W)
    rest = np.where(q.arrays.in_dense, q.dn, -1.0)[None]
    scores = np.where((q.arrays.rank_d <= n)[None], 10.0 + s, rest)
    return scores, np.broadcast_to(q.arrays.in_dense, scores.shape), np.full(len(W), 0.5)


def agreement(q: Query, b: float) -> Scored:  # E: a bonus where both top 10s hold the chunk
    s, keep, w = convex(q, W)
    return s + b * ((q.arrays.rank_d <= 10) & (q.arrays.rank_s <= 10)), keep, w


def gate(q: Query, on: bool) -> Scored:  # F, H: BM25 counts only when ``on``, else dense alone
    return convex(q, W if on else np.ones_like(W))


def rrf_dense_led(q: Query) -> Scored:  # G: BM25's RRF share only for the dense top N
    rd, rs = q.arrays.rank_d.astype(float), q.arrays.rank_s.astype(float)
    base, extra = np.where(rd < NEVER, 1 / (60 + rd), 0.0), np.where(rs < NEVER, 1 / (60 + rs), 0.0)
    scores = np.vstack([base + a * (rd <= n) * extra for n in NG for a in AS])
    return scores, np.broadcast_to(q.arrays.in_dense, scores.shape), np.full(len(scores), 0.5)


def per_query(signal: str, centre: float, gains: Sequence[float]) -> Family:  # D
    g_all = (0.0, *gains)

    def score(q: Query) -> Scored:
        w = np.concatenate([W0 + g * (q.sig[signal] - centre) for g in g_all])
        return convex(q, np.clip(w, 0, 1))

    return Family(f"D per-query w by {signal} (c={centre})",
                  f"w = clip(w0 + g*({signal} - {centre})), w0 0.5..1.3 by 0.05, g in {g_all}",
                  [f"w0={w0:.2f},g={g:+g}" for g in g_all for w0 in W0], score,
                  [(float(g != 0), abs(w0 - 0.8), abs(g)) for g in g_all for w0 in W0])  # fmt: skip


FAMILIES = [
    static("A convex-bounds static (shipped form)", fit.WEIGHTS),
    by_w("B dense-led top-N rerank", "N", NS, dense_led, lambda n: abs(n - 100) / 1000, True),
    by_w("C convex, BM25 share ^p", "p", PS, lambda q, p: convex(q, W, q.sn**p),
         lambda p: abs(math.log(p)), True),
    *[per_query(s, c, g) for s, (c, g) in SIGNALS.items()],
    by_w("E convex + agreement bonus", "b", BS, agreement, lambda b: b),
    by_w("F gate: BM25 top-1 in dense top-K", "K", KS,
         lambda q, k: gate(q, q.sig["top_s_dense_rank"] <= k), lambda k: -math.log(k)),
    Family("G dense-led RRF k=60 (BM25 adds to dense top-N)", f"N in {NG}, a in {AS}",
           [f"N={n},a={a}" for n in NG for a in AS], rrf_dense_led,
           [(a, 0.0) for _ in NG for a in AS]),
    by_w("H gate: BM25 top-1 gap (s1-s2)/s1 >= t", "t", TS,
         lambda q, t: gate(q, q.sig["bm25_gap"] >= t), lambda t: t),
    static("A2 convex-bounds static, fine w", FINE),
]  # fmt: skip


def score_family(queries: Sequence[Query], fam: Family) -> np.ndarray:
    out = np.empty((len(fam.labels), len(queries)))
    for j, q in enumerate(queries):
        out[:, j] = q.fixed if q.fixed is not None else ndcg_rows(q, fam.score(q))
    return out


# -- goals and selection rules ------------------------------------------------------------------


@dataclass
class SetScores:
    dense: np.ndarray  # per-query nDCG@10 of each retriever alone
    sparse: np.ndarray

    @property
    def better(self) -> np.ndarray:
        return self.dense if self.dense.mean() >= self.sparse.mean() else self.sparse

    @property
    def goal(self) -> float:
        close = abs(self.dense.mean() - self.sparse.mean()) < bf.CLOSE
        return float(self.better.mean()) + (bf.MARGIN if close else 0.0)


@dataclass
class Data:
    names: list[str]
    sets: dict[str, SetScores]
    mats: dict[str, dict[str, np.ndarray]]  # family -> set -> nDCG@10 (constants x queries)


Rule = Callable[[list[np.ndarray], list[SetScores], Sequence[tuple[float, ...]]], int]


def paired_se(m: np.ndarray, base: np.ndarray) -> np.ndarray:
    d = np.atleast_2d(m) - base[None]
    return d.std(axis=1, ddof=1) / math.sqrt(d.shape[1])


def objective(mats: Sequence[np.ndarray]) -> np.ndarray:  # as fit.choose
    w = np.array([fit.set_weight(m.shape[1]) for m in mats])
    return np.sum([wi * m.mean(axis=1) for wi, m in zip(w / w.sum(), mats, strict=True)], axis=0)


def informative(mats: Sequence[np.ndarray]) -> list[int]:
    return [i for i, m in enumerate(mats) if np.ptp(m.mean(axis=1)) > 0]  # not CMRC


def maximin(mats: list[np.ndarray], sets: list[SetScores], _d: Any) -> int:
    obj = objective(mats)
    worst = np.min([mats[i].mean(axis=1) - sets[i].goal for i in informative(mats)], axis=0)
    worst = np.round(worst, 6)
    return int(max(np.flatnonzero(worst == worst.max()), key=lambda i: (obj[i], -i)))


def constrained(ses: float) -> Rule:
    """The best objective among constants with slack >= ``ses`` paired SEs on every informative
    training set; none: the largest worst-case slack less ``ses`` SEs."""

    def rule(mats: list[np.ndarray], sets: list[SetScores], _d: Any) -> int:
        obj = objective(mats)
        low = [mats[i].mean(axis=1) - sets[i].goal - ses * paired_se(mats[i], sets[i].better)
               for i in informative(mats)]  # fmt: skip
        lcb = np.min(np.round(low, 9), axis=0)
        feasible = np.flatnonzero(lcb >= 0)
        if len(feasible):
            return int(max(feasible, key=lambda i: (round(float(obj[i]), 9), -i)))
        return int(np.argmax(lcb))

    return rule


RULES: dict[str, Rule] = {
    "bench: fit.choose (weighted, one-SE towards the prior)": lambda m, _s, d: fit.choose(m, d),
    "maximin slack": maximin,
    "constrained: best objective, slack >= 0 on every training set": constrained(0.0),
    "constrained: slack >= 1 SE on every training set": constrained(1.0),
}


def entry(h: np.ndarray, s: SetScores) -> dict[str, Any]:
    mean, g, se = float(h.mean()), s.goal, bf.margin_se(h, s.dense, s.sparse)
    met = round(mean, 4) >= round(g, 4)
    return {"hybrid": r4(mean), "goal": r4(g), "margin": r4(mean - g), "se": r4(se), "met": met}


def loco(d: Data, fam: Family, rule: Rule) -> dict[str, Any]:
    m, per_set = d.mats[fam.name], {}
    for out in d.names:
        train = [n for n in d.names if n != out]
        pick = rule([m[n] for n in train], [d.sets[n] for n in train], fam.distance)
        per_set[out] = {**entry(m[out][pick], d.sets[out]), "constants": fam.labels[pick]}
    final = rule([m[n] for n in d.names], [d.sets[n] for n in d.names], fam.distance)
    worst = min(d.names, key=lambda n: per_set[n]["margin"])
    return {"all_met": all(e["met"] for e in per_set.values()), "worst_set": worst,
            "worst_margin": per_set[worst]["margin"], "chosen_on_all_sets": fam.labels[final],
            "per_set": per_set}  # fmt: skip


def in_sample(d: Data, fams: Sequence[Family], top: int) -> dict[str, Any]:
    """Constants chosen on all 4 sets at once: the most any fixed constants can do."""
    rows = [(f, i) for f in fams for i in range(len(f.labels))]
    means = {n: np.concatenate([d.mats[f.name][n].mean(axis=1) for f in fams]) for n in d.names}
    met = np.all([np.round(means[n], 4) >= round(d.sets[n].goal, 4) for n in d.names], axis=0)
    slack = np.min([means[n] - d.sets[n].goal for n in d.names if np.ptp(means[n]) > 0], axis=0)

    def row(j: int) -> dict[str, Any]:
        f, i = rows[j]
        per_set = {n: entry(d.mats[f.name][n][i], d.sets[n]) for n in d.names}
        return {"family": f.name, "constants": f.labels[i], "worst_slack": r4(slack[j]),
                "per_set": per_set}  # fmt: skip

    best = [row(int(j)) for j in np.argsort(-slack, kind="stable")[:top]]
    ok = [row(int(j)) for j in np.flatnonzero(met)]
    return {"candidates": len(rows), "meet_every_goal": len(ok), "meeting": ok, "best": best}


# -- item 1 and the self-check: the product's own scorer ----------------------------------------

GRID = [FusionPolicy("convex", "bounds", w) for w in (*fit.WEIGHTS, *FINE)]


def curve(m: np.ndarray, s: SetScores) -> dict[str, Any]:
    """Convex-bounds nDCG@10 by dense weight (rows of ``m``: GRID) against dense alone, which
    a weight beats (or ties) when it is higher (or equal) at 4 decimals, as goals are met."""
    dense = m[len(W) - 1]  # w = 1.00: the dense ranking alone
    at = sorted({p.dense_weight: i for i, p in enumerate(GRID)}.items())
    points = [{"w": w, "ndcg": r4(m[i].mean()), "vs_dense": r4(m[i].mean() - dense.mean()),
               "se": r4(paired_se(m[i], dense)[0])} for w, i in at if w < 1]  # fmt: skip
    base = r4(dense.mean())
    return {
        "ndcg_by_weight": {f"{w:.2f}": r4(m[i].mean()) for w, i in at},
        "dense_alone": base,
        "bm25_alone": r4(s.sparse.mean()),
        "best_below_1": max(points, key=lambda p: p["ndcg"]),
        "weights_below_1_beating_dense": [p for p in points if p["ndcg"] > base],
        "weights_below_1_tying_dense": [p["w"] for p in points if p["ndcg"] == base],
    }


def self_check(d: Data, prod: dict[str, np.ndarray]) -> dict[str, Any]:
    """This scorer against fit.score_grid, and bench_fusion.loco's shipped row on score_grid."""
    a, a2, n_w = FAMILIES[0].name, FAMILIES[-1].name, len(W)
    diff = max(
        float(np.abs(np.vstack([d.mats[a][n], d.mats[a2][n]]) - prod[n]).max()) for n in d.names
    )
    fam = bf.Family("convex, bounds", list(range(n_w)), FusionPolicy("convex", "bounds", 0.5))

    def distances(prior: FusionPolicy) -> list[tuple[float, ...]]:
        return [(0.0, *fit.prior_distance(p, prior)) for p in GRID[:n_w]]

    best = {n: float(d.sets[n].better.mean()) for n in d.names}
    scores = {n: prod[n][:n_w] for n in d.names}
    res = bf.loco(d.names, scores, distances, fam, [p.describe() for p in GRID], best)
    got = {n: res["per_set"][n]["hybrid"] for n in d.names}
    return {"scorer_max_abs_diff_vs_fit_score_grid": diff, "shipped_form_loco_hybrid": got,
            "expected_from_fusion_json": SHIPPED_LOCO, "ok": got == SHIPPED_LOCO and diff < 1e-9,
            "chosen_on_all_sets": res["chosen_on_all_sets"]}  # fmt: skip


def best_rule(tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The selection rule with the best worst-set LOCO margin, without its per-set table."""
    rule = max(tables, key=lambda r: tables[r]["worst_margin"])
    return {"rule": rule, **{k: v for k, v in tables[rule].items() if k != "per_set"}}


def summary(dev: DevSet, s: SetScores) -> dict[str, Any]:
    n, dense, bm25 = len(dev.runs), r4(s.dense.mean()), r4(s.sparse.mean())
    return {"queries": n, "dense": dense, "bm25": bm25, "goal": r4(s.goal)}


def main() -> None:
    args = bf.run_arguments(__doc__ or "", RESULTS)
    t0 = time.perf_counter()
    embedder, names, devs = bf.load_dev_sets(args)
    langs = frozenset(embedder.info.languages)
    t1 = time.perf_counter()
    sets = {n: SetScores(*(np.array(score_runs(devs[n], mode=m)) for m in ("dense", "sparse")))
            for n in names}  # fmt: skip
    queries = {n: prepare(devs[n], langs) for n in names}
    mats = {f.name: {n: score_family(queries[n], f) for n in names} for f in FAMILIES}
    d = Data(names, sets, mats)
    prod = {n: fit.score_grid(devs[n], GRID, langs) for n in names}
    curves = {n: curve(prod[n], sets[n]) for n in names}
    families = {f.name: {"grid": f.grid, "candidates": len(f.labels),
                         "in_sample_best": in_sample(d, [f], 3)["best"],
                         "loco": {r: loco(d, f, rule) for r, rule in RULES.items()}}
                for f in FAMILIES}  # fmt: skip
    best_loco = {name: best_rule(fam["loco"]) for name, fam in families.items()}
    t3 = time.perf_counter()
    out = {
        "bench": "fusion without per-collection tuning, by LOCO (bench/bench_fusion_gates.py)",
        "embedder": embedder.info.model_id,
        "depth": args.depth,
        "sets": {n: summary(devs[n], s) for n, s in sets.items()},
        "self_check": self_check(d, prod),
        "curves_convex_bounds": curves,
        "weight_below_1_beats_dense": {
            n: bool(c["weights_below_1_beating_dense"]) for n, c in curves.items()
        },
        "loco_best_rule_per_family": best_loco,
        "loco_any_family_meets_every_goal": any(b["all_met"] for b in best_loco.values()),
        "in_sample_all_families": in_sample(d, FAMILIES, 5),
        "families": families,
        "seconds": {"runs": round(t1 - t0, 1), "scoring": round(t3 - t1, 1)},
        "cpu_count": os.cpu_count(),
        "load_avg_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    keys = ("self_check", "weight_below_1_beats_dense", "loco_best_rule_per_family", "seconds")
    print(json.dumps({k: out[k] for k in keys}, indent=1))
    print("in-sample, meeting every goal:", out["in_sample_all_families"]["meet_every_goal"])


if __name__ == "__main__":
    main()
