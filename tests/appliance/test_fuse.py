"""Fusion and trust: hand-computed goldens, each trust rule, and hypothesis properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from appliance.rag.fuse import (
    Fused,
    Ranked,
    Trust,
    TrustPolicy,
    embedder_reads,
    fuse,
    retriever_trust,
    top_separation,
)
from appliance.rag.lang import detect_language

EN = frozenset({"en"})


def ranked(*pairs: tuple[str, float]) -> list[Ranked]:
    return [Ranked(i, s) for i, s in pairs]


def flat(prefix: str, n: int = 60, top: float = 10.0) -> list[Ranked]:
    """Scores that fall evenly: no hit stands out."""
    return [Ranked(f"{prefix}{i}", top - 0.1 * i) for i in range(n)]


# --- fuse: goldens -------------------------------------------------------------------------


def test_weighted_rrf_golden() -> None:
    dense = ranked(("a", 0.9), ("b", 0.8), ("c", 0.7))
    sparse = ranked(("c", 12.0), ("a", 9.0), ("d", 3.0))
    out = fuse(dense, sparse, trust=Trust(1.0, 0.5, "t"), limit=10, k=60)
    # a: 1/61 + .5/62 = .024458   c: 1/63 + .5/61 = .024070   b: 1/62 = .016129   d: .5/63
    assert [h.id for h in out] == ["a", "c", "b", "d"]
    assert [h.score for h in out] == pytest.approx(
        [0.0244580, 0.0240697, 0.0161290, 0.0079365], abs=1e-7
    )
    assert out[0] == Fused("a", out[0].score, 1, 2, 0.9, 9.0)
    assert out[3] == Fused("d", out[3].score, None, 3, None, 3.0)


def test_pinned_document_comes_first_and_unknown_pin_is_ignored() -> None:
    dense = ranked(("a", 0.9), ("b", 0.8))
    sparse = ranked(("d", 40.0), ("a", 9.0))
    out = fuse(dense, sparse, trust=Trust(1.0, 0.02, "t", pinned="d"), limit=3)
    assert [h.id for h in out] == ["d", "a", "b"]
    assert out[0].score == pytest.approx(1.02 / 61)
    same = fuse(dense, sparse, trust=Trust(1.0, 0.02, "t", pinned="zz"), limit=3)
    assert [h.id for h in same] == ["a", "b", "d"]


def test_repeated_ids_keep_their_best_rank_and_limit_applies() -> None:
    dense = ranked(("a", 0.9), ("a", 0.5), ("b", 0.4))
    out = fuse(dense, [], trust=Trust(1.0, 0.0, "t"), limit=5)
    assert [(h.id, h.dense_rank) for h in out] == [("a", 1), ("b", 2)]
    assert fuse(dense, [], trust=Trust(1.0, 0.0, "t"), limit=0) == []
    with pytest.raises(ValueError, match="negative"):
        fuse(dense, [], trust=Trust(1.0, 0.0, "t"), limit=-1)


@pytest.mark.parametrize(
    ("dense", "sparse", "match"),
    [(1.5, 0.0, "Trust.dense"), (0.5, math.nan, "Trust.sparse"), (0.0, 0.0, "at least one")],
)
def test_trust_refuses_bad_weights(dense: float, sparse: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Trust(dense, sparse, "bad")


# --- retriever_trust: one test per rule ----------------------------------------------------


def test_empty_lists_give_all_weight_to_the_other() -> None:
    hits = flat("d")
    assert _weights(retriever_trust("q", embedder_languages=EN, dense=hits, sparse=[])) == (1, 0)
    assert _weights(retriever_trust("q", embedder_languages=EN, dense=[], sparse=hits)) == (0, 1)
    assert _weights(retriever_trust("q", embedder_languages=EN, dense=[], sparse=[])) == (1, 1)


def _weights(t: Trust) -> tuple[float, float]:
    return (t.dense, t.sparse)


def test_embedder_that_cannot_read_the_query_gets_no_weight() -> None:
    query = "生命数耗完即算为什么？"
    t = retriever_trust(query, embedder_languages=EN, dense=flat("d"), sparse=flat("s"))
    assert _weights(t) == (0.0, 1.0)
    assert "'zh'" in t.reason
    for langs in (frozenset({"en", "zh-CN"}), frozenset({"multilingual"})):
        t = retriever_trust(query, embedder_languages=langs, dense=flat("d"), sparse=flat("s"))
        assert _weights(t) == (1.0, TrustPolicy().support)


def test_unknown_embedder_languages_weigh_both_equally_except_for_english() -> None:
    unknown: frozenset[str] = frozenset()
    zh = retriever_trust(
        "长城有多长", embedder_languages=unknown, dense=flat("d"), sparse=flat("s")
    )
    assert _weights(zh) == (1.0, 1.0) and "unknown" in zh.reason
    en = retriever_trust("how long", embedder_languages=unknown, dense=flat("d"), sparse=flat("s"))
    assert _weights(en) == (1.0, TrustPolicy().support)


@pytest.mark.parametrize(
    ("declared", "language", "expected"),
    [
        ({"en"}, "en", True),
        ({"en"}, "zh", False),
        ({"EN", "zh_TW"}, "zh", True),
        ({"multilingual"}, "ko", True),
        (set(), "en", True),
        (set(), "ja", None),
        ({"en"}, "other", False),
    ],
)
def test_embedder_reads(declared: set[str], language: str, expected: bool | None) -> None:
    assert embedder_reads(frozenset(declared), language) is expected


def test_in_language_dense_leads_and_bm25_supports() -> None:
    t = retriever_trust(
        "causes of hypertrophy", embedder_languages=EN, dense=flat("d"), sparse=flat("s")
    )
    assert _weights(t) == (1.0, TrustPolicy().support)
    assert t.pinned is None
    out = fuse(flat("x"), flat("x")[::-1], trust=t, limit=3)
    assert [h.id for h in out] == ["x0", "x1", "x2"]  # BM25 cannot outvote the lead


def test_decisive_bm25_hit_is_pinned_unless_dense_is_more_decisive() -> None:
    decisive = [Ranked("exact", 30.0), *flat("s", top=10.0)]
    t = retriever_trust("part number AX-7", embedder_languages=EN, dense=flat("d"), sparse=decisive)
    assert t.pinned == "exact" and "pinned" in t.reason
    assert fuse(flat("d"), decisive, trust=t, limit=2)[0].id == "exact"
    more = [Ranked("sure", 99.0), *flat("d", top=10.0)]
    t = retriever_trust("part number AX-7", embedder_languages=EN, dense=more, sparse=decisive)
    assert t.pinned is None
    few = decisive[:40]  # below TrustPolicy.min_scores: no signal
    t = retriever_trust("part number AX-7", embedder_languages=EN, dense=flat("d"), sparse=few)
    assert t.pinned is None


def test_top_separation_golden() -> None:
    five = TrustPolicy(min_scores=5)

    def sep(*scores: float, policy: TrustPolicy = five) -> float:
        return top_separation([Ranked(str(i), s) for i, s in enumerate(scores)], policy)

    assert sep(10, 8, 6, 4, 2) == pytest.approx(2 / math.sqrt(5))  # gap 2, stdev of 8,6,4,2
    assert sep(5, 3, 3, 3, 3) == math.inf
    assert sep(3, 3, 2, 1, 0) == 0.0
    assert sep(9, math.nan, 2, 1, 0) == 0.0
    assert sep(10, 8, 6, 4) == 0.0  # fewer than min_scores
    # only the first max_scores count: a long flat tail does not shrink the spread
    capped = TrustPolicy(min_scores=5, max_scores=5)
    assert sep(10, 8, 6, 4, 2, *[2] * 100, policy=capped) == sep(10, 8, 6, 4, 2)


# --- properties ----------------------------------------------------------------------------

ID_POOL = [f"doc{i}" for i in range(12)]
IDS = st.sampled_from(ID_POOL)


@st.composite
def hit_lists(draw: st.DrawFn) -> list[Ranked]:
    ids = draw(st.lists(IDS, max_size=10))
    scores = sorted(
        draw(st.lists(st.floats(-5, 50), min_size=len(ids), max_size=len(ids))), reverse=True
    )
    return [Ranked(i, s) for i, s in zip(ids, scores, strict=True)]


WEIGHTS = st.tuples(st.floats(0, 1), st.floats(0, 1)).filter(lambda w: w != (0.0, 0.0))


def _distinct(hits: list[Ranked]) -> list[str]:
    return list(dict.fromkeys(h.id for h in hits))


@settings(max_examples=300, deadline=None)
@given(hit_lists(), hit_lists(), WEIGHTS, st.integers(0, 100), st.integers(0, 25))
@example(  # a subnormal weight underflowed the score to 0.0 and dropped the shared top hit
    [Ranked("doc0", 0.0)], [Ranked("doc0", 0.0)], (0.0, 5e-324), 1, 1
)
def test_fusion_properties(
    dense: list[Ranked], sparse: list[Ranked], w: tuple[float, float], k: int, limit: int
) -> None:
    trust = Trust(w[0], w[1], "prop")
    out = fuse(dense, sparse, trust=trust, limit=limit, k=k)
    ids = [h.id for h in out]
    assert len(ids) == len(set(ids)) <= limit
    assert all(a.score >= b.score for a, b in itertools.pairwise(out))
    assert out == fuse(dense, sparse, trust=trust, limit=limit, k=k)  # deterministic
    shared_first = dense and sparse and dense[0].id == sparse[0].id
    if shared_first and limit:
        assert ids[0] == dense[0].id
    for h in out:
        assert (h.dense_rank is None) == (h.id not in _distinct(dense))
        assert (h.sparse_rank is None) == (h.id not in _distinct(sparse))


@settings(max_examples=200, deadline=None)
@given(hit_lists(), hit_lists(), st.integers(0, 100), st.integers(0, 25))
def test_single_retriever_trust_reproduces_its_order(
    dense: list[Ranked], sparse: list[Ranked], k: int, limit: int
) -> None:
    only_dense = fuse(dense, sparse, trust=Trust(1.0, 0.0, "d"), limit=limit, k=k)
    only_sparse = fuse(dense, sparse, trust=Trust(0.0, 1.0, "s"), limit=limit, k=k)
    assert [h.id for h in only_dense] == _distinct(dense)[:limit]
    assert [h.id for h in only_sparse] == _distinct(sparse)[:limit]


@settings(max_examples=200, deadline=None)
@given(hit_lists(), hit_lists(), st.sampled_from(ID_POOL), st.integers(2, 25))
def test_pinning_never_loses_the_shared_first_document(
    dense: list[Ranked], sparse: list[Ranked], pin: str, limit: int
) -> None:
    out = fuse(dense, sparse, trust=Trust(1.0, 0.02, "p", pinned=pin), limit=limit)
    ids = [h.id for h in out]
    if pin in ids:
        assert ids[0] == pin
    if dense and sparse and dense[0].id == sparse[0].id:
        assert dense[0].id in ids[:2]


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=40),
    hit_lists(),
    hit_lists(),
    st.sampled_from([EN, frozenset({"zh"}), frozenset()]),
)
def test_trust_is_always_valid_and_pins_only_the_bm25_top_hit(
    query: str, dense: list[Ranked], sparse: list[Ranked], langs: frozenset[str]
) -> None:
    policy = TrustPolicy(min_scores=3)  # short lists, so that the pin rule is exercised too
    t = retriever_trust(query, embedder_languages=langs, dense=dense, sparse=sparse, policy=policy)
    assert 0.0 <= t.dense <= 1.0 and 0.0 <= t.sparse <= 1.0 and t.reason
    assert t.pinned is None or t.pinned == sparse[0].id
    again = retriever_trust(
        query, embedder_languages=langs, dense=dense, sparse=sparse, policy=policy
    )
    assert t == again
    out = fuse(dense, sparse, trust=t, limit=10)
    if t.pinned is not None:
        assert out[0].id == t.pinned


# --- the language the trust rules key on ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("生命数耗完即算为什么？", "zh"),
        ("Nexon开发的游戏叫什么", "zh"),  # a Latin brand name inside a Chinese question
        ("東京タワーはどこですか", "ja"),
        ("서울은 어디입니까", "ko"),
        ("What is the capital of France?", "en"),
        ("Hugh Downs", "en"),
        ("Arènes de Lutèce", "en"),  # accents alone do not make it foreign
        ("Qu'est-ce que la capitale de la France ?", "other"),
        ("Wie ist das Wetter in Berlin", "other"),
        ("Москва", "other"),
        ("2019", "other"),
        ("", "other"),
        ("ＡＢＣ ｆｕｌｌ ｗｉｄｔｈ", "en"),
    ],
)
def test_detect_language(text: str, language: str) -> None:
    assert detect_language(text) == language


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_detect_language_is_total(text: str) -> None:
    assert detect_language(text) in {"zh", "ja", "ko", "en", "other"}
