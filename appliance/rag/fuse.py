"""Hybrid fusion that knows when a retriever cannot be trusted.

Plain reciprocal-rank fusion (RRF) treats the embedder and BM25 as equally good on every query.
They are not. The bundled embedder is English-only: on Chinese questions it scored nDCG@10 0.34
against BM25's 0.98, and equal-weight RRF fell to 0.65. On our English tuning sets it beats BM25
(0.80 vs 0.73, 0.51 vs 0.38) and equal RRF lands *between* the two (0.79, 0.48). So
:func:`retriever_trust` decides, per query, how much each list counts, from evidence that needs
no model and no labels, and :func:`fuse` applies it as weighted RRF::

    score(doc) = w_dense / (k + dense_rank) + w_sparse / (k + sparse_rank)      (k = 60)

The rules (:attr:`Trust.reason` says which applied):

1. **An empty list has nothing to say.** If BM25 found nothing (no query term is in the index)
   the dense list ranks alone, and the other way round.
2. **The embedder must read the query's language.** :func:`~appliance.rag.lang.detect_language`
   names it from its script; the embedder's model card names the languages it was trained on
   (:attr:`ingest.embed.EmbedderInfo.languages`). When they do not meet, the dense ranking is
   noise (Chinese reaches an English model as unknown sub-words), so its weight is 0 and BM25,
   whose analyzer segments Chinese with jieba, ranks alone.
3. **Otherwise the embedder leads and BM25 breaks ties**: weights 1 and
   :attr:`TrustPolicy.support` (0.01). That small a weight cannot reorder the embedder's first
   17 ranks; it orders near-ties further down and appends what only BM25 found. Larger supporting
   weights were measured (see below) and only add noise of +-0.003 nDCG@10 whose sign flips with
   the search depth, because where the embedder reads the language it ranked better on every set
   we have. A model card that names no language is assumed to cover English (every
   sentence-transformers model reads it); for other languages such an embedder gets equal
   weights (1, 1): with no evidence either way, neither retriever leads.
4. **A decisive BM25 hit is pinned first.** BM25 is at its best on exact matches (a name, a
   code, a phrase copied from the passage), and there its top score stands far above the rest.
   We measure that, scale-free, as ``z = (s1 - s2) / stdev(s2 .. sn)`` over the top 50 to 100
   retrieved scores; when BM25's ``z`` reaches :attr:`TrustPolicy.decisive_z` (2) and exceeds
   the embedder's own, BM25's top document goes first (:attr:`Trust.pinned`) and the rest keeps
   rule 3's order. Only the top hit is pinned because ``z`` is evidence about it alone. BM25's
   ``z`` reached 2 on 2 of the 83 English tuning queries (both pinned hits were relevant) and on
   87 % of the Chinese questions.

``bench/bench_fusion.py`` measures all of this (``bench/results/fusion.json``). The fusion's
nDCG@10 equals that of the better single retriever on each tuning set (0.798, 0.511, 0.983),
at 20, 50 and 100 hits per retriever. The constants hold from ``support`` 0 to 0.02 and
``decisive_z`` 2 upwards (1.5 already costs 0.003 on MS MARCO). With the language rule removed
(an embedder wrongly declared multilingual), rule 4 alone still reaches 0.90 on Chinese where
RRF gets 0.65. On an exact-match probe (queries copied from a passage, where BM25 reaches 0.84 and
0.94 and the embedder 0.43 and 0.53) the fusion gets 0.56 and 0.83, RRF 0.61 and 0.74: pinning
wins back part of BM25's lead on exact matches without RRF's cost on ordinary queries. Admins
can measure their own data with ``appliance eval retrieval``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .lang import detect_language

__all__ = [
    "DEFAULT_POLICY",
    "Fused",
    "Ranked",
    "Trust",
    "TrustPolicy",
    "embedder_reads",
    "fuse",
    "retriever_trust",
    "top_separation",
]

MULTILINGUAL = "multilingual"  # what a model card declares for "reads every language"


@dataclass(frozen=True)
class Ranked:
    """One hit of one retriever; lists are in rank order and higher scores are better."""

    id: str
    score: float


@dataclass(frozen=True)
class Fused:
    """One fused hit with where each retriever put it (ranks from 1; ``None``: not returned)."""

    id: str
    score: float
    dense_rank: int | None
    sparse_rank: int | None
    dense_score: float | None
    sparse_score: float | None


@dataclass(frozen=True)
class Trust:
    """How much each retriever counts for one query, and why (shown in ``--json`` output).

    ``pinned`` names a document to put first whatever the weights say (rule 4 of the module doc).
    """

    dense: float
    sparse: float
    reason: str
    pinned: str | None = None

    def __post_init__(self) -> None:
        for name, weight in (("dense", self.dense), ("sparse", self.sparse)):
            if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
                raise ValueError(f"Trust.{name} must be a weight in [0, 1], got {weight!r}.")
        if self.dense == 0.0 and self.sparse == 0.0:
            raise ValueError("Trust needs at least one retriever with a weight above 0.")


@dataclass(frozen=True)
class TrustPolicy:
    """The constants of :func:`retriever_trust` (defaults: measured, see the module doc)."""

    support: float = 0.01  # weight of BM25 when the embedder leads: a tie-breaker
    decisive_z: float = 2.0  # BM25 top-hit separation, in standard deviations, that pins it
    min_scores: int = 50  # fewer retrieved scores than this give no separation signal
    max_scores: int = 100  # the separation looks at this many top scores at most


DEFAULT_POLICY = TrustPolicy()


def retriever_trust(
    query: str,
    *,
    embedder_languages: frozenset[str],
    dense: Sequence[Ranked],
    sparse: Sequence[Ranked],
    policy: TrustPolicy = DEFAULT_POLICY,
) -> Trust:
    """Weights for :func:`fuse` from the query's language and the lists' score distributions."""
    if not sparse:
        return Trust(1.0, 0.0 if dense else 1.0, "BM25 found nothing; dense ranking alone")
    if not dense:
        return Trust(0.0, 1.0, "dense search returned nothing; BM25 ranking alone")
    language = detect_language(query)
    reads = embedder_reads(embedder_languages, language)
    if reads is False:
        readable = ", ".join(sorted(embedder_languages))
        return Trust(0.0, 1.0, f"the embedder reads {readable}, not {language!r}; BM25 ranks alone")
    if reads is None:
        weights, why = (1.0, 1.0), f"embedder languages unknown, query {language!r}: equal weights"
    else:
        weights, why = (1.0, policy.support), f"dense leads, BM25 breaks ties ({language!r})"
    z_sparse = top_separation(sparse, policy)
    z_dense = top_separation(dense, policy)
    if z_sparse >= policy.decisive_z and z_sparse > z_dense:
        why += f"; BM25 top hit stands out (z {z_sparse:.1f} > {z_dense:.1f}): pinned"
        return Trust(*weights, why, pinned=sparse[0].id)
    return Trust(*weights, why)


def embedder_reads(languages: frozenset[str], language: str) -> bool | None:
    """Whether an embedder declaring ``languages`` reads ``language``; None when unknowable.

    Codes compare by their primary subtag ("zh-CN" counts as "zh"); ``"multilingual"`` reads
    everything. An embedder that declares nothing is assumed to read English (every
    sentence-transformers model does) and is unknown for anything else.
    """
    declared = {code.lower().replace("_", "-").split("-")[0] for code in languages}
    if not declared:
        return True if language == "en" else None
    return MULTILINGUAL in declared or language in declared


def top_separation(hits: Sequence[Ranked], policy: TrustPolicy = DEFAULT_POLICY) -> float:
    """How far the top score stands above the others: ``(s1 - s2) / stdev(s2 .. sn)``.

    Computed over the first ``policy.max_scores`` scores, so that it means the same whatever
    the search depth beyond that; 0 with fewer than ``policy.min_scores`` scores (too few to
    judge a spread), with any score not finite, or when the top does not lead; infinite when it
    leads and all the others are equal.
    """
    scores = [h.score for h in hits[: policy.max_scores]]
    if len(scores) < max(policy.min_scores, 3) or not all(math.isfinite(s) for s in scores):
        return 0.0
    gap = scores[0] - scores[1]
    if gap <= 0.0:
        return 0.0
    spread = statistics.pstdev(scores[1:])
    return gap / spread if spread > 0.0 else math.inf


def fuse(
    dense: Sequence[Ranked], sparse: Sequence[Ranked], *, trust: Trust, limit: int, k: int = 60
) -> list[Fused]:
    """Weighted reciprocal-rank fusion of two ranked lists, best first, at most ``limit`` hits.

    A document repeated within one list keeps its first (best) rank. Documents that only a
    zero-weight retriever returned are left out, so weights (1, 0) give exactly the dense order.
    Ties are broken by the better of the two ranks, then by id, so the output is deterministic.
    """
    if limit < 0 or k < 0:
        raise ValueError(f"limit and k must not be negative, got limit={limit}, k={k}.")
    dense_at, sparse_at = _positions(dense), _positions(sparse)
    pinned = trust.pinned if trust.pinned in dense_at or trust.pinned in sparse_at else None
    hits: list[Fused] = []
    for doc_id in _union(dense_at, sparse_at):
        d, s = dense_at.get(doc_id), sparse_at.get(doc_id)
        score = _share(trust.dense, d, k) + _share(trust.sparse, s, k)
        if doc_id == pinned:
            score = (trust.dense + trust.sparse) / (k + 1)  # as if both had ranked it first
        # Kept when a retriever with weight > 0 returned it (a tiny weight may underflow the
        # score to 0.0; the tie-break by rank still orders such hits).
        if (d is not None and trust.dense > 0.0) or (s is not None and trust.sparse > 0.0):
            hits.append(_fused(doc_id, score, d, s))
    hits.sort(key=lambda h: (-h.score, h.id != pinned, _best_rank(h), h.id))
    return hits[:limit]


def _positions(hits: Sequence[Ranked]) -> dict[str, tuple[int, float]]:
    """Id -> (rank from 1, score), first occurrence only, ranks counted over distinct ids."""
    at: dict[str, tuple[int, float]] = {}
    for hit in hits:
        if hit.id not in at:
            at[hit.id] = (len(at) + 1, hit.score)
    return at


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*first, *second]))


def _share(weight: float, position: tuple[int, float] | None, k: int) -> float:
    return 0.0 if position is None or weight == 0.0 else weight / (k + position[0])


def _fused(
    doc_id: str, score: float, d: tuple[int, float] | None, s: tuple[int, float] | None
) -> Fused:
    return Fused(
        id=doc_id,
        score=score,
        dense_rank=d[0] if d else None,
        sparse_rank=s[0] if s else None,
        dense_score=d[1] if d else None,
        sparse_score=s[1] if s else None,
    )


def _best_rank(hit: Fused) -> int:
    return min(r for r in (hit.dense_rank, hit.sparse_rank, 1 << 30) if r is not None)
