"""Citing the source that supports an uncited answer: only on real support, never invented."""

from __future__ import annotations

from appliance.rag.attribute import MIN_SUPPORT, supporting_source

SOURCES = [
    "Reginald DesRoches is a professor of civil and environmental engineering at Georgia Tech.",
    "The earthquake damaged schools; engineers studied the collapsed buildings.",
]


def test_cites_the_source_holding_what_the_answer_adds() -> None:
    question = "What is the profession of Reginald DesRoches?"
    answer = "Reginald DesRoches is a professor of civil engineering."
    assert supporting_source(answer, question, SOURCES) == 1
    # the second source holds "engineering" only: 1 of the 3 added terms
    assert supporting_source(answer, question, SOURCES[::-1]) == 2


def test_unsupported_answers_stay_uncited() -> None:
    question = "What is the name of Beyoncé's documentary film?"
    assert supporting_source("It is called The Power of Love.", question, SOURCES) is None
    assert supporting_source("", question, SOURCES) is None
    assert supporting_source("the of and", question, SOURCES) is None  # stop words only
    assert supporting_source("civil engineering", question, []) is None


def test_an_answer_that_only_repeats_the_question_uses_all_its_terms() -> None:
    question = "Who studied the collapsed buildings?"
    assert supporting_source("They studied the buildings.", question, SOURCES) == 2


def test_threshold_and_ties() -> None:
    # 3 of 5 added terms = 0.6 passes; 2 of 5 does not
    sources = ["alpha beta gamma", "alpha beta"]
    assert MIN_SUPPORT == 0.6
    assert supporting_source("alpha beta gamma delta epsilon", "q?", sources) == 1
    assert supporting_source("alpha beta zeta delta epsilon", "q?", sources) is None
    assert supporting_source("alpha beta", "q?", ["alpha beta", "alpha beta"]) == 1  # better rank


def test_chinese_answers() -> None:
    sources = ["每位员工每年有二十八天年假。", "食堂十一点半开门。"]
    assert supporting_source("二十八天年假", "员工有多少天年假？", sources) == 1
