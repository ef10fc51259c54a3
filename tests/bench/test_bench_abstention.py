"""The abstention benchmark's statistics on hand-computed cases (no appliance is built)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import bench_abstention as ba  # noqa: E402


def _rows(unanswerable: list[float], answerable: list[float]) -> list[dict[str, object]]:
    return [{"impossible": True, "s": v} for v in unanswerable] + [
        {"impossible": False, "s": v} for v in answerable
    ]


def test_auc_counts_pairs_and_ties() -> None:
    assert ba.auc([0.1, 0.2], [0.3, 0.4]) == 1.0  # every answerable above every unanswerable
    assert ba.auc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert ba.auc([0.5], [0.5]) == 0.5  # a tie counts half
    # pairs (u, a): (0.1, 0.2) yes, (0.1, 0.05) no, (0.3, 0.2) no, (0.3, 0.05) no -> 1/4
    assert ba.auc([0.1, 0.3], [0.2, 0.05]) == 0.25
    assert ba.auc([], [0.1]) is None


def test_rates_abstain_below_the_threshold() -> None:
    rows = _rows([0.1, 0.2, 0.9], [0.15, 0.5, 0.6, 0.7])
    assert ba.rates(rows, "s", 0.3) == {"abstention_accuracy": 0.6667, "false_abstention": 0.25}
    assert ba.rates(rows, "s", 0.0) == {"abstention_accuracy": 0.0, "false_abstention": 0.0}


def test_best_threshold_respects_the_false_abstention_cap() -> None:
    rows = _rows([0.1, 0.2, 0.9], [0.15, 0.5, 0.6, 0.7])
    # without a cap on false abstention everything can be refused
    assert ba.best_threshold(rows, "s", 1.0)["abstention_accuracy"] == 1.0
    capped = ba.best_threshold(rows, "s", 0.25)  # one answerable of four may be refused
    assert capped["abstention_accuracy"] == 0.6667 and capped["false_abstention"] == 0.25
    assert 0.2 < capped["threshold"] <= 0.5
    strict = ba.best_threshold(rows, "s", 0.0)
    assert strict["abstention_accuracy"] == 0.3333 and strict["false_abstention"] == 0.0
