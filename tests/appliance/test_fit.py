"""Fitting fusion constants: the fast scorer agrees with the product's fusion, the selection
rule, k-fold fitting that improves only when left-out queries say so, and kept runs."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.rag.fit import (
    candidates,
    choose,
    fit_kfold,
    fold_of,
    prior_distance,
    score_grid,
)
from appliance.rag.fuse import DEFAULT_FUSION, FusionPolicy, Ranked
from appliance.rag.runs import DevSet, QueryRun, ranked_documents, score_runs

EN = frozenset({"en"})


def synthetic(
    seed: int, queries: int, *, dense_good: float, sparse_good: float, chinese: int = 0
) -> DevSet:
    """Queries whose relevant document each retriever puts near the top with the given
    probability (else somewhere below rank 10); chunks ``c<doc>-<n>`` map to ``doc<doc>``."""
    rng = random.Random(seed)
    runs, doc_of = [], {}
    for q in range(queries):
        docs = [f"doc{q}-{i}" for i in range(30)]
        for d in docs:
            for n in range(2):
                doc_of[f"{d}#{n}"] = d

        def ranking(
            good: float, top: float, spread: float, docs: list[str] = docs
        ) -> tuple[Ranked, ...]:
            relevant = docs[0]
            order = docs[1:]
            rng.shuffle(order)
            at = rng.randint(0, 2) if rng.random() < good else rng.randint(10, 25)
            order.insert(at, relevant)
            chunks = [f"{d}#{rng.randint(0, 1)}" for d in order]
            return tuple(Ranked(c, top - spread * i) for i, c in enumerate(chunks))

        text = "为什么长城这么长" if q < chinese else f"question number {q} about things"
        runs.append(
            QueryRun(
                f"q{q}",
                text,
                ranking(dense_good, 0.7, 0.004),
                ranking(sparse_good, 20.0, 0.5),
                {docs[0]: 1, docs[5]: 0},
            )
        )
    return DevSet("synthetic", tuple(runs), doc_of, 30)


def test_the_fast_scorer_ranks_exactly_as_the_product_fusion() -> None:
    dev = synthetic(1, 25, dense_good=0.6, sparse_good=0.6, chinese=5)
    grid = candidates()
    fast = score_grid(dev, grid, EN)
    for row in random.Random(2).sample(range(len(grid)), 40):
        slow = score_runs(dev, policy=grid[row], embedder_languages=EN)
        assert fast[row].tolist() == slow, grid[row]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(candidates()))
def test_fast_scorer_agrees_on_random_sets(seed: int, policy: FusionPolicy) -> None:
    dev = synthetic(seed, 6, dense_good=0.5, sparse_good=0.5, chinese=1)
    assert score_grid(dev, [policy], EN)[0].tolist() == score_runs(
        dev, policy=policy, embedder_languages=EN
    )


def test_single_modes_and_document_dedup() -> None:
    dev = synthetic(3, 10, dense_good=1.0, sparse_good=0.0)
    assert all(s >= 0.5 for s in score_runs(dev, mode="dense"))  # relevant within the top 3
    assert all(s < 0.5 for s in score_runs(dev, mode="sparse"))  # below rank 10
    assert ranked_documents(["a#0", "a#1", "b#0"], {"a#0": "a", "a#1": "a", "b#0": "b"}) == [
        "a",
        "b",
    ]


def test_one_standard_error_rule_prefers_the_prior_within_noise() -> None:
    grid = [FusionPolicy(dense_weight=w) for w in (0.5, 0.6, 0.9)]
    distances = [prior_distance(p, FusionPolicy(dense_weight=0.5)) for p in grid]
    noisy = np.array([[0.5, 0.7, 0.6, 0.45], [0.6, 0.6, 0.6, 0.6], [0.7, 0.8, 0.5, 0.45]])
    assert choose([noisy], distances, one_se=False) == 2  # highest mean
    assert choose([noisy], distances) == 0  # but within one SE of the prior
    clear = np.array([[0.1] * 50, [0.2] * 50, [0.9] * 50])
    assert choose([clear], distances) == 2  # a real difference moves it


def test_small_sets_weigh_less_than_large_ones() -> None:
    distances = [(0.0,), (0.0,)]
    small = np.array([[0.0] * 10, [1.0] * 10])  # 10 queries prefer the second
    large = np.array([[0.7] * 1000, [0.5] * 1000])  # 1,000 prefer the first, less strongly
    # weights 10/110 and 1000/1100 (0.09, 0.91): 0.09 * 1.0 + 0.91 * 0.5 < 0.09 * 0 + 0.91 * 0.7
    assert choose([small, large], distances, one_se=False) == 0


def test_fit_moves_to_bm25_when_it_is_the_better_retriever() -> None:
    dev = synthetic(4, 60, dense_good=0.2, sparse_good=0.95)
    current = FusionPolicy(dense_weight=1.0)
    report = fit_kfold(dev, current, EN, folds=5)
    dense_alone = np.mean(score_runs(dev, mode="dense"))
    assert report.current_ndcg == pytest.approx(dense_alone)  # weight 1: the dense order
    assert report.fitted.dense_weight < 1.0
    assert report.leave_out_ndcg > dense_alone + 0.2
    assert report.improves and len(report.fold_choices) == 5
    assert report.to_dict()["improves"] is True


def test_fit_that_cannot_improve_keeps_the_current_constants() -> None:
    """Both retrievers rank every relevant document first: nothing can beat the current."""
    dev = synthetic(5, 40, dense_good=1.0, sparse_good=1.0)
    for run in dev.runs:  # relevant first in both lists, whatever the draw said
        assert run.qrels
    perfect = DevSet(
        dev.name,
        tuple(
            QueryRun(r.id, r.text, _first(r.dense, r.qrels), _first(r.sparse, r.qrels), r.qrels)
            for r in dev.runs
        ),
        dev.doc_of,
        dev.depth,
    )
    report = fit_kfold(perfect, DEFAULT_FUSION, EN, folds=4)
    assert report.current_ndcg == pytest.approx(1.0)
    assert report.gain == pytest.approx(0.0)
    assert not report.improves
    assert report.fitted == DEFAULT_FUSION  # the prior wins every tie


def _first(hits: tuple[Ranked, ...], qrels: Mapping[str, int]) -> tuple[Ranked, ...]:
    """The same list with the relevant document's first chunk on top."""
    relevant = [f"{d}#0" for d, grade in qrels.items() if grade > 0]
    rest = [h.id for h in hits if h.id.split("#")[0] not in qrels]
    return tuple(Ranked(c, 0.9 - 0.01 * i) for i, c in enumerate([*relevant, *rest]))


def test_fit_refuses_fewer_queries_than_folds() -> None:
    with pytest.raises(ValueError, match="cannot make 5 folds"):
        fit_kfold(synthetic(6, 3, dense_good=1, sparse_good=1), DEFAULT_FUSION, EN)


def test_folds_are_stable_and_spread() -> None:
    assert fold_of("q-17", 5) == fold_of("q-17", 5)
    counts = np.bincount([fold_of(f"q{i}", 5) for i in range(1000)], minlength=5)
    assert counts.min() > 150


def test_dev_sets_survive_a_round_trip(tmp_path: Path) -> None:
    dev = synthetic(7, 5, dense_good=0.5, sparse_good=0.5, chinese=2)
    dev.save(tmp_path / "dev.json.gz")
    again = DevSet.load(tmp_path / "dev.json.gz")
    assert again == dev
    assert score_runs(again) == score_runs(dev)
    assert len(dev.subset(lambda r: r.id != "q0").runs) == 4
    with pytest.raises(ValueError, match="kapp-devset"):
        DevSet.from_json({"format": "other"})
