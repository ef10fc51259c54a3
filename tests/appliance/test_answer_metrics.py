"""Answer metrics against values computed by hand from the SQuAD and CMRC 2018 definitions."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.rag.answer_eval import AnswerRecord, summarise_mode
from appliance.rag.answer_metrics import (
    QuestionScore,
    answer_text,
    cmrc_em,
    cmrc_f1,
    cmrc_segments,
    contains_answer,
    exact_match,
    f1_score,
    score_answer,
    squad_em,
    squad_f1,
    squad_normalize,
)
from appliance.rag.qa_set import QaQuestion

# --- English: SQuAD ---------------------------------------------------------------------------


def test_squad_normalisation() -> None:
    assert squad_normalize("The  Quick, brown fox!") == "quick brown fox"
    assert squad_normalize("An apple a day") == "apple day"
    assert squad_normalize("theory of the atom") == "theory of atom"  # "the" only as a word
    assert squad_normalize("“curly” quotes") == "“curly” quotes"  # only ASCII punctuation goes


def test_squad_em() -> None:
    assert squad_em("The Eiffel Tower.", "eiffel tower") == 1.0
    assert squad_em("Eiffel Tower in Paris", "Eiffel Tower") == 0.0


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        # pred: cat sat on mat (4), gold: cat on mat (3), common 3: P 3/4, R 1 -> 6/7
        ("the cat sat on the mat", "a cat on a mat", 6 / 7),
        # multiplicities: x x y vs x y y: common min(2,1) + min(1,2) = 2: P = R = 2/3
        ("x x y", "x y y", 2 / 3),
        ("nothing shared", "Saudi Arabia", 0.0),
        ("", "Saudi Arabia", 0.0),
        ("", "", 1.0),  # both empty agree
        ("the", "", 1.0),  # "the" normalises to nothing
    ],
)
def test_squad_f1(prediction: str, gold: str, expected: float) -> None:
    assert squad_f1(prediction, gold) == pytest.approx(expected)


def test_best_over_gold_answers() -> None:
    golds = ["in the late 1990s", "late 1990s", "1997"]
    assert exact_match("Late 1990s.", golds, "en") == 1.0
    # "she rose in 1997": tokens she rose in 1997; vs "1997": P 1/4, R 1 -> 0.4
    # vs "in the late 1990s" (in late 1990s): common "in": P 1/4 R 1/3 -> 2/7
    assert f1_score("she rose in 1997", golds, "en") == pytest.approx(0.4)
    assert f1_score("anything", [], "en") == 0.0


# --- Chinese: CMRC 2018 -----------------------------------------------------------------------


def test_cmrc_segmentation() -> None:
    assert cmrc_segments("北京2008年奥运会") == ["北", "京", "2008", "年", "奥", "运", "会"]
    assert cmrc_segments("苹果iPod Nano。") == ["苹", "果", "ipod", "nano", "。"]
    assert cmrc_segments("苹果iPod Nano。", drop_punctuation=True) == ["苹", "果", "ipod", "nano"]
    assert cmrc_segments("售价4.5万元") == ["售", "价", "4.5", "万", "元"]
    # ASCII punctuation is not on the script's list: it stays a segment of its own
    assert cmrc_segments("a,b", drop_punctuation=True) == ["a", ",", "b"]


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        # gold 4 分 钟 (3); pred 在 4 分 钟 内 (5); longest common run 3: P 3/5, R 1 -> 0.75
        ("在4分钟内", "4分钟", 0.75),
        # a contiguous run, not a bag: 红黄蓝绿 vs 红蓝黄绿 share runs of length 1 only
        ("红蓝黄绿", "红黄蓝绿", 0.25),
        ("4分钟。", "4分钟", 1.0),  # listed punctuation is dropped
        ("完全不同", "踢爆", 0.0),
        ("", "踢爆", 0.0),
    ],
)
def test_cmrc_f1(prediction: str, gold: str, expected: float) -> None:
    assert cmrc_f1(prediction, gold) == pytest.approx(expected)


def test_cmrc_em() -> None:
    assert cmrc_em("4分钟。", "4分钟") == 1.0
    assert cmrc_em("《泡泡堂》", "泡泡堂") == 1.0
    assert cmrc_em("4 分钟", "4分钟") == 0.0  # spaces are not removed by the script
    assert cmrc_em("a,b", "ab") == 0.0  # nor is an ASCII comma
    assert exact_match("踢爆。", ["踢爆", "击破"], "zh") == 1.0
    assert f1_score("在4分钟内", ["4分钟", "完全不同"], "zh") == pytest.approx(0.75)


# --- what is scored ---------------------------------------------------------------------------


def test_answer_text_strips_citations_labels_and_bullets() -> None:
    assert answer_text("Paris [1][2].") == "Paris."
    assert answer_text("- Rome [2]\n- Milan【3】") == "Rome Milan"
    assert answer_text("Answer: 1983 [1]") == "1983"
    label = "Extractive answer – no language model used"
    assert answer_text(f"{label}\nThe budget is 48,000 euros [1].") == "The budget is 48,000 euros."
    assert answer_text("踢爆[1]。") == "踢爆。"
    assert answer_text("in 2015 (see [2, 3])") == "in 2015 (see)"


def test_contains_answer() -> None:
    passage = "The tower stands in Paris, France, since 1889."
    assert contains_answer(passage, ["paris"], "en")
    assert contains_answer(passage, ["nothing", "The Paris"], "en")  # articles normalised away
    assert not contains_answer(passage, ["Par"], "en")  # whole tokens only
    assert contains_answer("若游戏中离，则4分钟内不得进行配对", ["4分钟"], "zh")
    assert not contains_answer("若游戏中离", ["4分钟"], "zh")


GOLD: dict[str, Any] = {"golds": ["Saudi Arabia"], "gold_docs": {"p1"}, "language": "en"}


def test_score_answer_counts_right_citations() -> None:
    cited = [("p1", "unrelated text"), ("p2", "Aid came from Saudi Arabia."), ("p3", "no")]
    s = score_answer(
        text="Saudi Arabia [1][2][3].",
        not_found=False,
        cited_sources=cited,
        impossible=False,
        **GOLD,
    )
    assert (s.em, s.f1, s.abstained, s.cited, s.cited_right) == (1.0, 1.0, False, 3, 2)


def test_score_answer_says_whether_a_right_source_was_shown() -> None:
    shown = [("p7", "no"), ("p8", "Aid came from Saudi Arabia.")]
    s = score_answer(
        text="x", not_found=True, cited_sources=(), shown_sources=shown, impossible=False, **GOLD
    )
    assert s.gold_shown is True and s.abstained  # a false abstention the model is to blame for
    s = score_answer(
        text="x",
        not_found=True,
        cited_sources=(),
        shown_sources=shown[:1],
        impossible=False,
        **GOLD,
    )
    assert s.gold_shown is False  # retrieval did not find it
    s = score_answer(
        text="x",
        not_found=True,
        cited_sources=(),
        shown_sources=[("p1", "?")],
        impossible=True,
        **GOLD,
    )
    assert s.gold_shown is None  # no gold for an unanswerable question


def test_abstention_scores_as_the_empty_answer() -> None:
    # the not-found sentence shares no credit, and its citations are not counted
    s = score_answer(
        text="The documents do not contain the answer to this question. [1]",
        not_found=True,
        cited_sources=[("p1", "x")],
        impossible=False,
        **GOLD,
    )
    assert (s.em, s.f1, s.abstained, s.cited, s.cited_right) == (0.0, 0.0, True, 0, 0)
    s = score_answer(text="x", not_found=True, cited_sources=(), impossible=True, **GOLD)
    assert (s.em, s.f1, s.abstained) == (None, None, True)


def _record(
    impossible: bool, score: QuestionScore, seconds: float, tokens: int = 0
) -> AnswerRecord:
    q = QaQuestion("q", "?", () if impossible else ("a",), impossible, frozenset(), "")
    return AnswerRecord(q, score, seconds, tokens=tokens, decode_s=tokens / 10, first_token_s=0.5)


def test_mode_summary_by_hand() -> None:
    records = [
        _record(False, QuestionScore(1.0, 1.0, False, 2, 1, True), 1.0, tokens=11),
        _record(False, QuestionScore(0.0, 0.5, False, 1, 1, False), 2.0, tokens=21),
        _record(False, QuestionScore(0.0, 0.0, True, 0, 0, True), 3.0, tokens=11),
        _record(True, QuestionScore(None, None, True, 0, 0), 4.0, tokens=11),
        _record(True, QuestionScore(None, None, False, 0, 0), 5.0, tokens=1),
    ]
    s = summarise_mode(records, "generative")
    assert s["em"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["f1"] == pytest.approx(0.5)
    assert s["citation_precision"] == pytest.approx(2 / 3, abs=1e-4)  # 2 right of 3 cited
    assert s["right_citation_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["abstention_accuracy"] == 0.5 and s["false_abstention"] == pytest.approx(
        1 / 3, abs=1e-4
    )
    assert s["gold_shown_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["false_abstention_gold_shown"] == 0.5  # 1 of the 2 shown their gold abstained
    assert s["p50_s"] == 3.0 and s["p95_s"] == pytest.approx(4.8)
    # decoded tokens after the first: 10 + 20 + 10 + 10 + 0 = 50 over 1.1+2.1+1.1+1.1 s
    assert s["tokens_per_s"] == pytest.approx(50 / 5.4, abs=0.01)
    e = summarise_mode(records[3:], "extractive")
    assert e["em"] is None and e["citation_precision"] is None and e["tokens_per_s"] is None
