"""Hybrid fusion: one ranking from the embedder's list and keyed BM25's list.

Neither retriever is better everywhere. On our development sets the bundled embedder wins on
MS MARCO and DBpedia entity queries, BM25 on SQuAD questions (written from the passage, so they
share its words), and on Chinese the English-only embedder is noise. A fusion fitted to the sets
where the embedder happened to win fell below BM25 on unseen collections. So the form and its
constants are chosen by *leave-one-collection-out*: tuned on all development sets but one, scored
on the one left out, for each set in turn (``bench/bench_fusion.py``, ``docs/benchmarks.md``).

The rules (:attr:`Trust.reason` says which applied):

1. **An empty list has nothing to say.** If BM25 found nothing (no query term is in the index)
   the dense list ranks alone, and the other way round.
2. **The embedder must read the query's language.** :func:`~appliance.rag.lang.detect_language`
   names it from its script; the embedder's model card names the languages it was trained on
   (:attr:`ingest.embed.EmbedderInfo.languages`). When they do not meet, the dense ranking is
   noise (Chinese reaches an English model as unknown sub-words), so its weight is 0 and BM25,
   whose analyzer segments Chinese with jieba, ranks alone (on Chinese questions: BM25 nDCG@10
   0.98, the embedder 0.25, equal-weight RRF 0.57).
3. **Otherwise both lists count**, as :class:`FusionPolicy` says. The default is the convex
   combination of theoretically normalised scores that Bruch, Gai and Ingber ("An Analysis of
   Fusion Functions for Hybrid Retrieval", ACM TOIS 2023) call TM2C2::

       score(doc) = w * N_dense(doc) + (1 - w) * N_bm25(doc)
       N(s) = (s - lower bound) / (top score of the list - lower bound)

   with the lower bounds the scores cannot go below (cosine: -1, BM25: 0) and ``w`` =
   :attr:`FusionPolicy.dense_weight`. A document only one list returned gets, from the other,
   that list's lowest normalised score (its true score is at most that). Min-max and z-score
   normalisation and weighted reciprocal-rank fusion are the alternatives the settings offer
   (and ``appliance eval retrieval --fit`` searches); they lost to TM2C2 by
   leave-one-collection-out. Weights that move per query with each list's score separation, the
   overlap of the two top 10s or the query's length gained nothing beyond noise there (the
   best, score separation, 0.0008 nDCG@10 with a standard error of 0.0011), so none is used.

A document both retrievers rank first is first in every form (its normalised score is the
highest in both lists); ties are broken by the better of the two ranks, then by id.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .lang import detect_language

__all__ = [
    "DEFAULT_FUSION",
    "METHODS",
    "NORMALISATIONS",
    "Fused",
    "FusionPolicy",
    "FusionResult",
    "Ranked",
    "Trust",
    "embedder_reads",
    "fixed_trust",
    "fuse",
    "fuse_lists",
    "normalise",
    "retriever_trust",
]

MULTILINGUAL = "multilingual"  # what a model card declares for "reads every language"
METHODS = ("convex", "rrf")
NORMALISATIONS = ("bounds", "minmax", "zscore")
DENSE_FLOOR = -1.0  # inner product of unit vectors (cosine) is never below -1
SPARSE_FLOOR = 0.0  # BM25 is a sum of non-negative weights


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
    """How much each retriever counts for one query, and why (shown in ``--json`` output)."""

    dense: float
    sparse: float
    reason: str

    def __post_init__(self) -> None:
        for name, weight in (("dense", self.dense), ("sparse", self.sparse)):
            if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
                raise ValueError(f"Trust.{name} must be a weight in [0, 1], got {weight!r}.")
        if self.dense == 0.0 and self.sparse == 0.0:
            raise ValueError("Trust needs at least one retriever with a weight above 0.")


@dataclass(frozen=True)
class FusionPolicy:
    """How the two lists are combined (the ``retrieval.fusion*`` settings).

    ``method``: ``convex`` (weighted sum of normalised scores) or ``rrf`` (weighted reciprocal
    rank, ``w / (rrf_k + rank)``); ``normalisation`` (convex only): ``bounds`` (theoretical lower
    bound to the list's top), ``minmax`` (list's lowest to top) or ``zscore`` (mean 0, standard
    deviation 1 over the list); ``dense_weight``: the embedder's share, BM25 gets the rest.
    """

    method: str = "convex"
    normalisation: str = "bounds"
    dense_weight: float = 0.8
    rrf_k: int = 60

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Fusion method must be one of {METHODS}, not {self.method!r}.")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"Fusion normalisation must be one of {NORMALISATIONS}, not {self.normalisation!r}."
            )
        if not (math.isfinite(self.dense_weight) and 0.0 <= self.dense_weight <= 1.0):
            raise ValueError(f"dense_weight must be in [0, 1], got {self.dense_weight!r}.")
        if isinstance(self.rrf_k, bool) or not isinstance(self.rrf_k, int) or self.rrf_k < 0:
            raise ValueError(f"rrf_k must be a non-negative integer, got {self.rrf_k!r}.")

    def describe(self) -> str:
        """E.g. ``convex, bounds-normalised, dense weight 0.80``."""
        form = (
            f"convex, {self.normalisation}-normalised"
            if self.method == "convex"
            else f"rrf, k {self.rrf_k}"
        )
        return f"{form}, dense weight {self.dense_weight:.2f}"


DEFAULT_FUSION = FusionPolicy()


@dataclass(frozen=True)
class FusionResult:
    hits: list[Fused]
    trust: Trust


def fuse_lists(
    query: str,
    dense: Sequence[Ranked],
    sparse: Sequence[Ranked],
    *,
    policy: FusionPolicy = DEFAULT_FUSION,
    embedder_languages: frozenset[str],
    limit: int,
) -> FusionResult:
    """The hybrid ranking of one query: :func:`retriever_trust`, then :func:`fuse`."""
    trust = retriever_trust(
        query, embedder_languages=embedder_languages, dense=dense, sparse=sparse, policy=policy
    )
    return FusionResult(fuse(dense, sparse, trust=trust, limit=limit, policy=policy), trust)


def retriever_trust(
    query: str,
    *,
    embedder_languages: frozenset[str],
    dense: Sequence[Ranked],
    sparse: Sequence[Ranked],
    policy: FusionPolicy = DEFAULT_FUSION,
) -> Trust:
    """Each retriever's weight for one query (rules 1 to 3 of the module doc)."""
    fixed = fixed_trust(query, embedder_languages=embedder_languages, dense=dense, sparse=sparse)
    if fixed is not None:
        return fixed
    reads = embedder_reads(embedder_languages, detect_language(query))
    unknown = "" if reads else f"; embedder languages unknown, query {detect_language(query)!r}"
    weight = policy.dense_weight
    return Trust(weight, 1.0 - weight, f"{policy.describe()}{unknown}")


def fixed_trust(
    query: str,
    *,
    embedder_languages: frozenset[str],
    dense: Sequence[Ranked],
    sparse: Sequence[Ranked],
) -> Trust | None:
    """The weights rules 1 and 2 impose whatever the policy (an empty list, or a query the
    embedder cannot read); None when neither applies."""
    if not sparse:
        return Trust(1.0, 0.0 if dense else 1.0, "BM25 found nothing; dense ranking alone")
    if not dense:
        return Trust(0.0, 1.0, "dense search returned nothing; BM25 ranking alone")
    language = detect_language(query)
    if embedder_reads(embedder_languages, language) is False:
        readable = ", ".join(sorted(embedder_languages))
        return Trust(0.0, 1.0, f"the embedder reads {readable}, not {language!r}; BM25 ranks alone")
    return None


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


def normalise(scores: Sequence[float], how: str, floor: float) -> list[float]:
    """Scores (best first) mapped to a common scale: ``bounds`` ``(s - floor) / (top - floor)``,
    ``minmax`` ``(s - lowest) / (top - lowest)``, ``zscore`` ``(s - mean) / stdev``.

    A list whose scores are all equal (or whose top is not above ``floor``) maps to 1.0 each
    for ``bounds``/``minmax`` and 0.0 for ``zscore``; non-finite scores count as ``floor``.
    """
    values = [s if math.isfinite(s) else floor for s in scores]
    if not values:
        return []
    if how == "zscore":
        mean, spread = statistics.fmean(values), statistics.pstdev(values)
        return [(s - mean) / spread if spread > 0 else 0.0 for s in values]
    top = max(values)
    low = min(values) if how == "minmax" else min(floor, min(values))
    if how not in ("bounds", "minmax"):
        raise ValueError(f"Unknown normalisation {how!r}.")
    width = top - low
    return [(s - low) / width if width > 0 else 1.0 for s in values]


def fuse(
    dense: Sequence[Ranked],
    sparse: Sequence[Ranked],
    *,
    trust: Trust,
    limit: int,
    policy: FusionPolicy = DEFAULT_FUSION,
) -> list[Fused]:
    """The two lists as one, best first, at most ``limit`` hits, fused as ``policy`` says with
    ``trust``'s weights.

    A document repeated within one list keeps its first (best) rank. Documents that only a
    zero-weight retriever returned are left out, so weights (1, 0) give exactly the dense order.
    Ties are broken by the better of the two ranks (of retrievers with weight > 0), then by id,
    so the output is deterministic.
    """
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}.")
    dense_at, sparse_at = _positions(dense), _positions(sparse)
    if policy.method == "rrf":
        d_share = _rrf_shares(dense_at, trust.dense, policy.rrf_k)
        s_share = _rrf_shares(sparse_at, trust.sparse, policy.rrf_k)
    else:
        d_share = _convex_shares(dense_at, trust.dense, policy.normalisation, DENSE_FLOOR)
        s_share = _convex_shares(sparse_at, trust.sparse, policy.normalisation, SPARSE_FLOOR)
    hits: list[Fused] = []
    for doc_id in _union(dense_at, sparse_at):
        d, s = dense_at.get(doc_id), sparse_at.get(doc_id)
        # Kept when a retriever with weight > 0 returned it.
        if (d is not None and trust.dense > 0.0) or (s is not None and trust.sparse > 0.0):
            score = d_share.get(doc_id, d_share[None]) + s_share.get(doc_id, s_share[None])
            hits.append(_fused(doc_id, score, d, s))
    hits.sort(key=lambda h: (-h.score, _best_rank(h, trust), h.id))
    return hits[:limit]


Shares = dict[str | None, float]  # doc id -> weighted share; None -> share of a missing doc


def _convex_shares(
    at: dict[str, tuple[int, float]], weight: float, how: str, floor: float
) -> Shares:
    if weight == 0.0 or not at:
        return {None: 0.0}
    ids = list(at)
    normalised = normalise([at[i][1] for i in ids], how, floor)
    shares: Shares = {i: weight * n for i, n in zip(ids, normalised, strict=True)}
    shares[None] = weight * min(normalised)  # not returned: at most the list's lowest
    return shares


def _rrf_shares(at: dict[str, tuple[int, float]], weight: float, k: int) -> Shares:
    shares: Shares = {i: weight / (k + rank) for i, (rank, _) in at.items()}
    shares[None] = 0.0
    return shares


def _positions(hits: Sequence[Ranked]) -> dict[str, tuple[int, float]]:
    """Id -> (rank from 1, score), first occurrence only, ranks counted over distinct ids."""
    at: dict[str, tuple[int, float]] = {}
    for hit in hits:
        if hit.id not in at:
            at[hit.id] = (len(at) + 1, hit.score)
    return at


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*first, *second]))


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


def _best_rank(hit: Fused, trust: Trust) -> int:
    """The better rank among the retrievers that count (a zero-weight list breaks no tie)."""
    ranks = (
        hit.dense_rank if trust.dense > 0.0 else None,
        hit.sparse_rank if trust.sparse > 0.0 else None,
    )
    return min(r for r in (*ranks, 1 << 30) if r is not None)
