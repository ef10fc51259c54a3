"""Ranking metrics against values computed by hand (pytrec_eval definitions)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.rag.metrics import mrr_at_k, ndcg_at_k, recall_at_k, summarise

RUN = ["a", "b", "c", "d"]
QRELS = {"b": 2, "d": 1, "x": 3}  # "x" is relevant but never retrieved


def test_ndcg_golden_linear_gain_and_ideal_from_all_judged() -> None:
    # DCG@3  = 0/log2(2) + 2/log2(3) + 0/log2(4)           = 1.261860
    # IDCG@3 = 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.261860 + 0.5 = 4.761860
    assert ndcg_at_k(RUN, QRELS, k=3) == pytest.approx(0.2649935, abs=1e-6)
    # at k=4 "d" (grade 1) adds 1/log2(5) = 0.430677; the ideal is unchanged (3 relevant docs)
    assert ndcg_at_k(RUN, QRELS, k=4) == pytest.approx(0.355436, abs=1e-6)  # 1.692536 / 4.761860


def test_ndcg_uses_linear_not_exponential_gain() -> None:
    # ideal order is [x(3), b(2)]; run [b, x]: (2 + 3/log2 3) / (3 + 2/log2 3)
    expected = (2 + 3 / math.log2(3)) / (3 + 2 / math.log2(3))
    assert ndcg_at_k(["b", "x"], {"b": 2, "x": 3}) == pytest.approx(expected)
    assert expected == pytest.approx(0.9134, abs=1e-4)  # the 2**rel - 1 variant gives 0.8340


def test_zero_grades_count_as_not_relevant() -> None:
    qrels = {"a": 0, "b": 1}
    assert ndcg_at_k(["a", "b"], qrels) == pytest.approx(1 / math.log2(3))
    assert mrr_at_k(["a", "b"], qrels) == 0.5
    assert recall_at_k(["a", "b"], qrels) == 1.0


def test_recall_golden() -> None:
    assert recall_at_k(RUN, QRELS, k=3) == pytest.approx(1 / 3)
    assert recall_at_k(RUN, QRELS, k=4) == pytest.approx(2 / 3)
    assert recall_at_k(RUN, QRELS, k=1) == 0.0


def test_mrr_golden() -> None:
    assert mrr_at_k(RUN, QRELS, k=3) == 0.5
    assert mrr_at_k(RUN, QRELS, k=1) == 0.0
    assert mrr_at_k(["d", "b"], QRELS) == 1.0


def test_query_without_relevant_documents_scores_zero() -> None:
    for metric in (ndcg_at_k, recall_at_k, mrr_at_k):
        assert metric(RUN, {"a": 0}) == 0.0
        assert metric([], QRELS) == 0.0


def test_repeated_ids_and_bad_k_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        ndcg_at_k(["b", "b"], QRELS)
    with pytest.raises(ValueError, match="at least 1"):
        recall_at_k(RUN, QRELS, k=0)


def test_summarise_interpolates_like_numpy() -> None:
    assert summarise([40.0, 10.0, 30.0, 20.0]) == {"p50_ms": 25.0, "p95_ms": 38.5}
    assert summarise([7.0]) == {"p50_ms": 7.0, "p95_ms": 7.0}
    with pytest.raises(ValueError, match="at least one"):
        summarise([])


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3), min_size=1),
    st.permutations("abcdefgh"),
    st.integers(1, 10),
)
def test_metrics_are_bounded_and_ideal_order_scores_one(
    qrels: dict[str, int], order: list[str], k: int
) -> None:
    for metric in (ndcg_at_k, recall_at_k, mrr_at_k):
        assert 0.0 <= metric(order, qrels, k) <= 1.0 + 1e-12
    ideal = sorted(qrels, key=lambda d: -qrels[d])
    if any(r > 0 for r in qrels.values()):
        assert ndcg_at_k(ideal, qrels, k) == pytest.approx(1.0)
        assert mrr_at_k(ideal, qrels, k) == 1.0
