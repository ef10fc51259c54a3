"""Choosing fusion constants from labelled queries without fooling ourselves.

Used two ways: ``bench/bench_fusion.py`` picks the shipped defaults by leave-one-collection-out
over our development sets, and ``appliance eval retrieval --fit`` fits them to an admin's own
set by k-fold over its queries. Both score many :class:`~appliance.rag.fuse.FusionPolicy`
candidates on kept ranked lists (:class:`~appliance.rag.runs.DevSet`) and select with
:func:`choose`:

* the objective is the mean nDCG@10 over the training queries, each set weighted by
  ``n / (n + 100)`` for its ``n`` queries (a set of 40 queries counts 0.29, one of 4,000 0.98:
  small sets are weak evidence, and no set outweighs the others merely by being large);
* the **one-standard-error rule** (Breiman et al., 1984): among candidates whose objective is
  within one standard error (of the paired per-query differences) of the best, take the one
  closest to the *prior* policy (the shipped or current settings). A difference the training
  queries cannot tell from noise does not move the constants. Without this rule, fitting on the
  83 MS MARCO and DBpedia queries (where the embedder wins) chose the embedder alone, which was
  0.04 below BM25 on SQuAD.

:func:`score_grid` scores every candidate on every query at once (numpy); it ranks exactly as
:func:`~appliance.rag.fuse.fuse_lists` does (a test checks them against each other).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .fuse import (
    DENSE_FLOOR,
    METHODS,
    NORMALISATIONS,
    SPARSE_FLOOR,
    FusionPolicy,
    fixed_trust,
    normalise,
)
from .runs import DevSet, K, QueryRun

__all__ = [
    "MIN_GAIN",
    "FitReport",
    "QueryArrays",
    "candidates",
    "choose",
    "fit_kfold",
    "form_of",
    "prior_distance",
    "score_grid",
    "set_weight",
]

WEIGHTS = tuple(round(0.05 * i, 2) for i in range(21))
RRF_KS = (1, 5, 10, 20, 60, 100)
SHRINK_QUERIES = 100  # a set of n queries weighs n / (n + SHRINK_QUERIES)
MIN_GAIN = 0.001  # --fit writes only when the leave-out nDCG@10 gains at least this much


def candidates(methods: Sequence[str] = METHODS) -> list[FusionPolicy]:
    """Every form and constant searched: convex x 3 normalisations x 21 dense weights, and
    weighted RRF x 6 values of k x 21 weights."""
    out = []
    for method in methods:
        if method == "convex":
            for how in NORMALISATIONS:
                out += [FusionPolicy("convex", how, w) for w in WEIGHTS]
        else:
            for k in RRF_KS:
                out += [FusionPolicy("rrf", "bounds", w, k) for w in WEIGHTS]
    return out


def set_weight(queries: int) -> float:
    return queries / (queries + SHRINK_QUERIES)


def score_grid(
    dev: DevSet, grid: Sequence[FusionPolicy], embedder_languages: frozenset[str]
) -> np.ndarray:
    """nDCG@10 of each policy (rows) on each query of ``dev`` (columns)."""
    out = np.zeros((len(grid), len(dev.runs)))
    groups: dict[tuple[str, str, int], list[int]] = {}
    for row, policy in enumerate(grid):
        groups.setdefault(form_of(policy), []).append(row)
    for col, run in enumerate(dev.runs):
        query = QueryArrays(run, dev.doc_of)
        fixed = fixed_trust(
            run.text, embedder_languages=embedder_languages, dense=run.dense, sparse=run.sparse
        )
        for form, rows in groups.items():
            if fixed is None:
                weights = np.array([grid[r].dense_weight for r in rows])
            else:  # a rule fixed the weights: every candidate ranks alike
                weights = np.full(len(rows), fixed.dense)
            out[rows, col] = query.ndcg(form, weights)
    return out


def form_of(policy: FusionPolicy) -> tuple[str, str, int]:
    if policy.method == "rrf":
        return ("rrf", "", policy.rrf_k)
    return ("convex", policy.normalisation, 0)


class QueryArrays:
    """One query's two lists as arrays over the union of their chunk ids."""

    def __init__(self, run: QueryRun, doc_of: Mapping[str, str]) -> None:
        self.dense = _distinct(run.dense)
        self.sparse = _distinct(run.sparse)
        ids = list(dict.fromkeys([*self.dense, *self.sparse]))
        self.ids = ids
        self.docs = [doc_of[c] for c in ids]
        self.qrels = run.qrels
        d_rank = {c: i + 1 for i, c in enumerate(self.dense)}
        s_rank = {c: i + 1 for i, c in enumerate(self.sparse)}
        self.in_dense = np.array([c in d_rank for c in ids], dtype=bool)
        self.in_sparse = np.array([c in s_rank for c in ids], dtype=bool)
        never = 1 << 30
        self.rank_d = np.array([d_rank.get(c, never) for c in ids], dtype=np.int64)
        self.rank_s = np.array([s_rank.get(c, never) for c in ids], dtype=np.int64)
        self.by_id = np.argsort(np.argsort(np.array(ids, dtype=object)))
        self.d_rank, self.s_rank = d_rank, s_rank
        ideal = sorted((g for g in run.qrels.values() if g > 0), reverse=True)[:K]
        self.idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))

    def ndcg(self, form: tuple[str, str, int], weights: np.ndarray) -> np.ndarray:
        """nDCG@10 of this query fused in ``form`` (:func:`form_of`) with each dense weight."""
        # the same floating-point operations as fuse(): weight * normalised, weight / (k + rank)
        d, s = self._shares(form)
        w_d, w_s = weights[:, None], (1.0 - weights)[:, None]
        if form[0] == "rrf":
            scores = w_d / d[None, :] + w_s / s[None, :]
        else:
            scores = w_d * d[None, :] + w_s * s[None, :]
        keep = (self.in_dense[None, :] & (weights[:, None] > 0)) | (
            self.in_sparse[None, :] & (weights[:, None] < 1)
        )
        out = np.zeros(len(weights))
        if self.idcg <= 0:
            return out
        for row in range(len(weights)):
            w = weights[row]  # ties: the better rank among lists with weight > 0 (as fuse())
            best = (
                self.rank_s
                if w == 0
                else self.rank_d
                if w == 1
                else np.minimum(self.rank_d, self.rank_s)
            )
            order = np.lexsort((self.by_id, best, -scores[row]))
            out[row] = self._ndcg([i for i in order if keep[row, i]])
        return out

    def _shares(self, form: tuple[str, str, int]) -> tuple[np.ndarray, np.ndarray]:
        method, how, k = form
        if method == "rrf":  # denominators k + rank; infinite (share 0) when not returned
            d = np.array([k + self.d_rank[c] if c in self.d_rank else np.inf for c in self.ids])
            s = np.array([k + self.s_rank[c] if c in self.s_rank else np.inf for c in self.ids])
            return d.astype(float), s.astype(float)
        return (
            _spread(self.ids, self.dense, how, DENSE_FLOOR),
            _spread(self.ids, self.sparse, how, SPARSE_FLOOR),
        )

    def _ndcg(self, order: Sequence[int]) -> float:
        seen: set[str] = set()
        dcg = 0.0
        for i in order:
            doc = self.docs[i]
            if doc in seen:
                continue
            dcg += max(self.qrels.get(doc, 0), 0) / math.log2(len(seen) + 2)
            seen.add(doc)
            if len(seen) == K:
                break
        return dcg / self.idcg


def _distinct(hits: Sequence[Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for h in hits:
        out.setdefault(h.id, h.score)
    return out


def _spread(ids: Sequence[str], scores: Mapping[str, float], how: str, floor: float) -> np.ndarray:
    if not scores:
        return np.zeros(len(ids))
    values = normalise(list(scores.values()), how, floor)
    at = dict(zip(scores, values, strict=True))
    low = min(values)
    return np.array([at.get(c, low) for c in ids])


# -- selection ----------------------------------------------------------------------------------


def prior_distance(policy: FusionPolicy, prior: FusionPolicy) -> tuple[float, ...]:
    """How far ``policy`` is from ``prior``: form first, then weight, then k."""
    return (
        float(policy.method != prior.method),
        float(policy.method == "convex" and policy.normalisation != prior.normalisation),
        abs(policy.dense_weight - prior.dense_weight),
        abs(policy.rrf_k - prior.rrf_k) / 100.0 if policy.method == "rrf" else 0.0,
    )


def choose(
    scores: Sequence[np.ndarray], distances: Sequence[tuple[float, ...]], *, one_se: bool = True
) -> int:
    """The candidate (row) the one-standard-error rule picks (module doc).

    ``scores`` holds one ``(candidates, queries)`` matrix per training set (:func:`score_grid`,
    restricted to the training queries); ``distances[i]`` is candidate ``i``'s distance from
    the prior (:func:`prior_distance`), smaller is closer."""
    weights = np.array([set_weight(m.shape[1]) for m in scores])
    weights = weights / weights.sum()
    objective = sum(w * m.mean(axis=1) for w, m in zip(weights, scores, strict=True))
    best = int(np.argmax(objective))
    if not one_se:
        return best
    variance = sum(
        (w**2) * np.var(m - m[best], axis=1, ddof=1) / m.shape[1] if m.shape[1] > 1 else 0.0
        for w, m in zip(weights, scores, strict=True)
    )
    near = np.flatnonzero(objective >= objective[best] - np.sqrt(variance))
    return int(min((int(i) for i in near), key=lambda i: (distances[i], -objective[i], i)))


# -- k-fold fit on one set ----------------------------------------------------------------------


@dataclass(frozen=True)
class FitReport:
    """What ``--fit`` found: scores of the current and the fitted constants, per fold and
    together, and whether the fitted ones should be written."""

    current: FusionPolicy
    fitted: FusionPolicy
    folds: int
    queries: int
    current_ndcg: float  # current constants, mean over every query
    leave_out_ndcg: float  # each fold scored with constants chosen on the other folds
    fitted_in_sample_ndcg: float  # the final constants on every query (optimistic)
    fold_choices: tuple[FusionPolicy, ...]

    @property
    def gain(self) -> float:
        return self.leave_out_ndcg - self.current_ndcg

    @property
    def improves(self) -> bool:
        return self.gain >= MIN_GAIN and self.fitted != self.current

    def to_dict(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            "folds": self.folds,
            "current": _policy_dict(self.current),
            "current_ndcg@10": round(self.current_ndcg, 4),
            "leave_out_ndcg@10": round(self.leave_out_ndcg, 4),
            "gain": round(self.gain, 4),
            "min_gain": MIN_GAIN,
            "fitted": _policy_dict(self.fitted),
            "fitted_in_sample_ndcg@10": round(self.fitted_in_sample_ndcg, 4),
            "fold_choices": [_policy_dict(p) for p in self.fold_choices],
            "improves": self.improves,
        }


def _policy_dict(p: FusionPolicy) -> dict[str, Any]:
    return {
        "method": p.method,
        "normalisation": p.normalisation,
        "dense_weight": p.dense_weight,
        "rrf_k": p.rrf_k,
    }


def fold_of(query_id: str, folds: int) -> int:
    """A query's fold: stable across runs and machines (sha256 of its id)."""
    return int.from_bytes(hashlib.sha256(query_id.encode("utf-8")).digest()[:8], "big") % folds


def fit_kfold(
    dev: DevSet,
    current: FusionPolicy,
    embedder_languages: frozenset[str],
    *,
    folds: int = 5,
    grid: Sequence[FusionPolicy] | None = None,
) -> FitReport:
    """Fit the constants on ``dev`` with ``folds``-fold cross-validation by query.

    Each fold's queries are scored with the constants :func:`choose` picks on the other folds
    (prior: ``current``); the mean over all queries is the leave-out score the fitted
    constants are judged by. The constants reported are then chosen on every query."""
    if len(dev.runs) < folds:
        raise ValueError(f"{len(dev.runs)} judged queries cannot make {folds} folds.")
    grid = list(grid or candidates())
    if current not in grid:
        grid.append(current)
    scores = score_grid(dev, grid, embedder_languages)
    distances = [prior_distance(p, current) for p in grid]
    fold = np.array([fold_of(r.id, folds) for r in dev.runs])
    leave_out = np.zeros(len(dev.runs))
    choices = []
    for f in range(folds):
        test = fold == f
        if not test.any():
            continue
        pick = choose([scores[:, ~test]], distances)
        choices.append(grid[pick])
        leave_out[test] = scores[pick, test]
    final = choose([scores], distances)
    return FitReport(
        current=current,
        fitted=replace(grid[final]),
        folds=folds,
        queries=len(dev.runs),
        current_ndcg=float(scores[grid.index(current)].mean()),
        leave_out_ndcg=float(leave_out.mean()),
        fitted_in_sample_ndcg=float(scores[final].mean()),
        fold_choices=tuple(choices),
    )
