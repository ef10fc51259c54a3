"""Fusion: hand-computed goldens for every form, each trust rule, and hypothesis properties."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from appliance.rag.fuse import (
    DEFAULT_FUSION,
    METHODS,
    NORMALISATIONS,
    Fused,
    FusionPolicy,
    Ranked,
    Trust,
    embedder_reads,
    fuse,
    fuse_lists,
    normalise,
    retriever_trust,
)
from appliance.rag.lang import detect_language

EN = frozenset({"en"})
ZH_QUERY = "生命数耗完即算为什么？"


def ranked(*pairs: tuple[str, float]) -> list[Ranked]:
    return [Ranked(i, s) for i, s in pairs]


def flat(prefix: str, n: int = 60, top: float = 10.0) -> list[Ranked]:
    """Scores that fall evenly: no hit stands out."""
    return [Ranked(f"{prefix}{i}", top - 0.1 * i) for i in range(n)]


def ids(hits: list[Fused]) -> list[str]:
    return [h.id for h in hits]


# --- goldens -------------------------------------------------------------------------------

DENSE = ranked(("a", 0.6), ("b", 0.4), ("c", 0.2))
SPARSE = ranked(("c", 12.0), ("a", 6.0), ("d", 3.0))


def test_convex_bounds_golden() -> None:
    """Dense from -1 to 0.6: a 1.0, b 0.875, c 0.75; BM25 from 0 to 12: c 1.0, a 0.5,
    d 0.25; a missing document gets the list's lowest (dense 0.75 for d, BM25 0.25 for b)."""
    policy = FusionPolicy("convex", "bounds", 0.6)
    out = fuse(DENSE, SPARSE, trust=Trust(0.6, 0.4, "t"), limit=10, policy=policy)
    # a .6*1+.4*.5=.8  c .6*.75+.4*1=.85  b .6*.875+.4*.25=.625  d .6*.75+.4*.25=.55
    assert ids(out) == ["c", "a", "b", "d"]
    assert [h.score for h in out] == pytest.approx([0.85, 0.8, 0.625, 0.55])
    assert out[0] == Fused("c", out[0].score, 3, 1, 0.2, 12.0)
    assert out[3] == Fused("d", out[3].score, None, 3, None, 3.0)


def test_convex_minmax_and_zscore_goldens() -> None:
    minmax = fuse(
        DENSE,
        SPARSE,
        trust=Trust(0.5, 0.5, "t"),
        limit=10,
        policy=FusionPolicy("convex", "minmax", 0.5),
    )
    # dense a 1, b .5, c 0; BM25 c 1, a 1/3, d 0: a .6667, c .5, b .25, d 0
    assert ids(minmax) == ["a", "c", "b", "d"]
    assert [h.score for h in minmax] == pytest.approx([2 / 3, 0.5, 0.25, 0.0])
    zscore = fuse(
        DENSE,
        SPARSE,
        trust=Trust(0.5, 0.5, "t"),
        limit=10,
        policy=FusionPolicy("convex", "zscore", 0.5),
    )
    z = math.sqrt(1.5)  # dense z: a +z, b 0, c -z; BM25 (12, 6, 3; mean 7, sd sqrt(14)): c, a, d
    s = [(12 - 7) / math.sqrt(14), (6 - 7) / math.sqrt(14), (3 - 7) / math.sqrt(14)]
    expected = {
        "a": 0.5 * z + 0.5 * s[1],
        "b": 0.0 + 0.5 * s[2],
        "c": -0.5 * z + 0.5 * s[0],
        "d": -0.5 * z + 0.5 * s[2],
    }
    assert {h.id: h.score for h in zscore} == pytest.approx(expected)
    assert ids(zscore) == sorted(expected, key=lambda k: -expected[k])


def test_weighted_rrf_golden() -> None:
    out = fuse(
        DENSE, SPARSE, trust=Trust(1.0, 0.5, "t"), limit=10, policy=FusionPolicy("rrf", rrf_k=60)
    )
    # a: 1/61 + .5/62 = .024458   c: 1/63 + .5/61 = .024070   b: 1/62 = .016129   d: .5/63
    assert ids(out) == ["a", "c", "b", "d"]
    assert [h.score for h in out] == pytest.approx(
        [0.0244580, 0.0240697, 0.0161290, 0.0079365], abs=1e-7
    )


def test_normalise_goldens_and_edges() -> None:
    assert normalise([4.0, 2.0, 0.0], "minmax", 0.0) == [1.0, 0.5, 0.0]
    assert normalise([0.5, 0.0], "bounds", -1.0) == pytest.approx([1.0, 2 / 3])
    assert normalise([3.0, 1.0], "zscore", 0.0) == [1.0, -1.0]
    assert normalise([2.0, 2.0], "minmax", 0.0) == [1.0, 1.0]  # no spread: all equal top
    assert normalise([2.0, 2.0], "zscore", 0.0) == [0.0, 0.0]
    assert normalise([math.nan, 1.0], "bounds", 0.0) == [0.0, 1.0]  # not finite counts as floor
    assert normalise([], "bounds", 0.0) == []
    with pytest.raises(ValueError, match="normalisation"):
        normalise([1.0], "softmax", 0.0)


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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "combmnz"}, "method"),
        ({"normalisation": "rank"}, "normalisation"),
        ({"dense_weight": 1.2}, "dense_weight"),
        ({"dense_weight": math.inf}, "dense_weight"),
        ({"rrf_k": -1}, "rrf_k"),
        ({"rrf_k": True}, "rrf_k"),
    ],
)
def test_fusion_policy_refuses_bad_constants(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FusionPolicy(**kwargs)  # type: ignore[arg-type]


def test_the_shipped_default_is_the_leave_one_collection_out_choice() -> None:
    """bench/bench_fusion.py chose it (docs/benchmarks.md); settings default to the same."""
    from appliance.config import Settings
    from appliance.wiring import fusion_policy

    assert FusionPolicy("convex", "bounds", 0.8, 60) == DEFAULT_FUSION
    assert fusion_policy(Settings()) == DEFAULT_FUSION


# --- retriever_trust: one test per rule ----------------------------------------------------


def _weights(t: Trust) -> tuple[float, float]:
    return (t.dense, t.sparse)


def test_empty_lists_give_all_weight_to_the_other() -> None:
    hits = flat("d")
    assert _weights(retriever_trust("q", embedder_languages=EN, dense=hits, sparse=[])) == (1, 0)
    assert _weights(retriever_trust("q", embedder_languages=EN, dense=[], sparse=hits)) == (0, 1)
    assert _weights(retriever_trust("q", embedder_languages=EN, dense=[], sparse=[])) == (1, 1)


def test_embedder_that_cannot_read_the_query_gets_no_weight() -> None:
    t = retriever_trust(ZH_QUERY, embedder_languages=EN, dense=flat("d"), sparse=flat("s"))
    assert _weights(t) == (0.0, 1.0)
    assert "'zh'" in t.reason
    policy = FusionPolicy(dense_weight=0.3)
    for langs in (frozenset({"en", "zh-CN"}), frozenset({"multilingual"})):
        t = retriever_trust(
            ZH_QUERY, embedder_languages=langs, dense=flat("d"), sparse=flat("s"), policy=policy
        )
        assert _weights(t) == pytest.approx((0.3, 0.7))


def test_unknown_embedder_languages_use_the_policy_and_say_so() -> None:
    unknown: frozenset[str] = frozenset()
    zh = retriever_trust(ZH_QUERY, embedder_languages=unknown, dense=flat("d"), sparse=flat("s"))
    assert _weights(zh) == pytest.approx((0.8, 0.2)) and "unknown" in zh.reason
    en = retriever_trust("how long", embedder_languages=unknown, dense=flat("d"), sparse=flat("s"))
    assert _weights(en) == pytest.approx((0.8, 0.2)) and "unknown" not in en.reason


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


def test_in_language_both_lists_count_as_the_policy_says() -> None:
    t = retriever_trust(
        "causes of hypertrophy", embedder_languages=EN, dense=flat("d"), sparse=flat("s")
    )
    assert _weights(t) == pytest.approx((0.8, 0.2))
    assert t.reason.startswith("convex, bounds-normalised, dense weight 0.80")
    # Cosines of one query's neighbours lie close together (here 0.55 to 0.43), so on the
    # theoretical scale (-1 to the top) they stay within 0.08 of each other, while a BM25 hit
    # far above the rest keeps its lead: the exact match comes first.
    cosines = [Ranked(f"d{i}", 0.55 - 0.002 * i) for i in range(60)]
    decisive = [Ranked("exact", 30.0), *flat("s", top=10.0)]
    out = fuse_lists("part number AX-7", cosines, decisive, embedder_languages=EN, limit=3)
    assert ids(out.hits) == ["exact", "d0", "d1"]


# --- properties ----------------------------------------------------------------------------

ID_POOL = [f"doc{i}" for i in range(12)]
IDS = st.sampled_from(ID_POOL)


@st.composite
def hit_lists(draw: st.DrawFn, low: float = -5.0, high: float = 50.0) -> list[Ranked]:
    ids_ = draw(st.lists(IDS, max_size=10))
    scores = sorted(
        draw(st.lists(st.floats(low, high), min_size=len(ids_), max_size=len(ids_))), reverse=True
    )
    return [Ranked(i, s) for i, s in zip(ids_, scores, strict=True)]


POLICIES = st.builds(
    FusionPolicy,
    method=st.sampled_from(METHODS),
    normalisation=st.sampled_from(NORMALISATIONS),
    dense_weight=st.floats(0, 1),
    rrf_k=st.integers(0, 100),
)
WEIGHTS = st.tuples(st.floats(0, 1), st.floats(0, 1)).filter(lambda w: w != (0.0, 0.0))


def _distinct(hits: list[Ranked]) -> list[str]:
    return list(dict.fromkeys(h.id for h in hits))


@settings(max_examples=400, deadline=None)
@given(hit_lists(-1.0, 1.0), hit_lists(0.0, 50.0), WEIGHTS, POLICIES, st.integers(0, 25))
@example(  # a subnormal weight underflowed the score to 0.0 and dropped the shared top hit
    [Ranked("doc0", 0.0)], [Ranked("doc0", 0.0)], (0.0, 5e-324), FusionPolicy("rrf", rrf_k=1), 1
)
@example(  # equal scores everywhere: the shared first document must still lead
    [Ranked("doc1", 0.5), Ranked("doc0", 0.5)],
    [Ranked("doc1", 2.0), Ranked("doc2", 2.0)],
    (0.5, 0.5),
    FusionPolicy("convex", "zscore", 0.5),
    2,
)
def test_fusion_properties(
    dense: list[Ranked],
    sparse: list[Ranked],
    w: tuple[float, float],
    policy: FusionPolicy,
    limit: int,
) -> None:
    trust = Trust(w[0], w[1], "prop")
    out = fuse(dense, sparse, trust=trust, limit=limit, policy=policy)
    got = ids(out)
    assert len(got) == len(set(got)) <= limit
    assert all(a.score >= b.score for a, b in itertools.pairwise(out))
    assert out == fuse(dense, sparse, trust=trust, limit=limit, policy=policy)  # deterministic
    # fusion never loses a document that both retrievers ranked first
    if dense and sparse and dense[0].id == sparse[0].id and limit:
        assert got[0] == dense[0].id
    for h in out:
        assert (h.dense_rank is None) == (h.id not in _distinct(dense))
        assert (h.sparse_rank is None) == (h.id not in _distinct(sparse))


@settings(max_examples=200, deadline=None)
@given(hit_lists(-1.0, 1.0), hit_lists(0.0, 50.0), POLICIES, st.integers(0, 25))
def test_single_retriever_trust_reproduces_its_order(
    dense: list[Ranked], sparse: list[Ranked], policy: FusionPolicy, limit: int
) -> None:
    only_dense = fuse(dense, sparse, trust=Trust(1.0, 0.0, "d"), limit=limit, policy=policy)
    only_sparse = fuse(dense, sparse, trust=Trust(0.0, 1.0, "s"), limit=limit, policy=policy)
    assert ids(only_dense) == _distinct(dense)[:limit]
    assert ids(only_sparse) == _distinct(sparse)[:limit]


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=40),
    hit_lists(-1.0, 1.0),
    hit_lists(0.0, 50.0),
    st.sampled_from([EN, frozenset({"zh"}), frozenset()]),
    POLICIES,
)
def test_trust_is_always_valid(
    query: str,
    dense: list[Ranked],
    sparse: list[Ranked],
    langs: frozenset[str],
    policy: FusionPolicy,
) -> None:
    t = retriever_trust(query, embedder_languages=langs, dense=dense, sparse=sparse, policy=policy)
    assert 0.0 <= t.dense <= 1.0 and 0.0 <= t.sparse <= 1.0 and t.reason
    again = retriever_trust(
        query, embedder_languages=langs, dense=dense, sparse=sparse, policy=policy
    )
    assert t == again


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="生命数耗完即算为什么长城有多长？", min_size=2, max_size=20),
    hit_lists(-1.0, 1.0),
    hit_lists(0.0, 50.0),
    POLICIES,
)
def test_an_english_only_embedder_never_reorders_chinese_queries(
    query: str, dense: list[Ranked], sparse: list[Ranked], policy: FusionPolicy
) -> None:
    """The language rule: whatever the policy, a Chinese query ranks by BM25 alone."""
    out = fuse_lists(query, dense, sparse, policy=policy, embedder_languages=EN, limit=25)
    if sparse and dense:
        assert ids(out.hits) == _distinct(sparse)
        assert (out.trust.dense, out.trust.sparse) == (0.0, 1.0)


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
