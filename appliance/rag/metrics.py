"""Ranking metrics as BEIR reports them (pytrec_eval definitions), plus latency percentiles.

We compare our numbers with published BEIR tables and with Milvus' own BM25, so the metrics
follow pytrec_eval exactly rather than a variant that happens to be convenient:

* ``qrels`` maps a document id to its graded judgement; grades of 0 or below are "judged not
  relevant" and count as relevant for nothing. Unjudged documents have gain 0.
* nDCG uses the *linear* gain ``rel / log2(rank + 1)`` (pytrec_eval's ``ndcg_cut``, not the
  ``2**rel - 1`` variant), and the ideal ranking is built from *all* judged relevant documents,
  whether or not the run retrieved them.
* recall@k is the share of relevant (grade > 0) documents found in the top ``k``.
* MRR@k is ``1 / rank`` of the first relevant document within the top ``k``, else 0.

A query with no relevant document scores 0 on every metric (as pytrec_eval does); callers decide
which queries to score (BEIR scores every query that has judgements).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["mrr_at_k", "ndcg_at_k", "recall_at_k", "summarise"]


def _top(ranked_ids: Sequence[str], k: int) -> Sequence[str]:
    """The first ``k`` ids; a repeated id is a bug in the caller's retrieval, so it is refused."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    if len(set(ranked_ids)) != len(ranked_ids):
        raise ValueError("ranked_ids contains a document twice; deduplicate the run first.")
    return ranked_ids[:k]


def ndcg_at_k(ranked_ids: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """Normalised discounted cumulative gain at ``k`` with linear gains (pytrec_eval style)."""
    top = _top(ranked_ids, k)
    dcg = sum(max(qrels.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(top))
    ideal = sorted((r for r in qrels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked_ids: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """Share of the relevant documents (grade > 0) that appear in the top ``k``."""
    top = _top(ranked_ids, k)
    relevant = {d for d, r in qrels.items() if r > 0}
    if not relevant:
        return 0.0
    return sum(1 for d in top if d in relevant) / len(relevant)


def mrr_at_k(ranked_ids: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document in the top ``k`` (0 when none is)."""
    for i, d in enumerate(_top(ranked_ids, k)):
        if qrels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def summarise(latencies_ms: Sequence[float]) -> dict[str, float]:
    """Median and 95th percentile, linearly interpolated between samples (numpy's default)."""
    if not latencies_ms:
        raise ValueError("No latencies to summarise; run at least one query.")
    values = sorted(float(v) for v in latencies_ms)
    return {"p50_ms": _percentile(values, 50.0), "p95_ms": _percentile(values, 95.0)}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac
