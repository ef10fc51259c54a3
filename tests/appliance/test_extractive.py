"""Extractive answers on English and Chinese passages: choice, order, citations, not-found."""

from __future__ import annotations

from appliance.rag.cite import validate
from appliance.rag.extractive import PER_PASSAGE, extractive_answer
from appliance.rag.prompt import NOT_FOUND_TEXT
from appliance.rag.retrieve import Passage


def passage(i: int, text: str) -> Passage:
    return Passage(f"c{i}", f"d{i}", f"doc{i}.docx", "staff", "T", ("T",), 1, 1, text, 1 / (i + 1))


HANDBOOK = [
    passage(
        0,
        "Book travel at least two weeks ahead. Dr. Smith approves trips over 500 EUR, e.g. "
        "long-haul flights. Use the portal (see Fig. 2) for all bookings.",
    ),
    passage(
        1,
        "| City | Rate (EUR) |\n| --- | --- |\n| Oslo | 145 |\n| Paris | 80 |\n\n"
        "Per diem rates are paid per day of travel.",
    ),
    passage(2, "Meals:\n- Breakfast: 10 EUR\n- Lunch: 15 EUR\n- Dinner: 25 EUR"),
]
GAME = [
    passage(
        0,
        "泡泡战士是基于《跑跑卡丁车》与《泡泡堂》所开发的游戏，由韩国Nexon开发与发行。"
        "中国大陆由盛大游戏运营，这是Nexon时隔6年再次授予盛大网络其游戏运营权。"
        "台湾由游戏橘子运营！玩家以水枪、小枪、锤子或是水炸弹泡封敌人，即为一泡封；"
        "将水泡击破为一踢爆。",
    ),
    passage(1, "每次泡封会减少生命数，生命数耗完即算为踢爆。以踢爆数计分较多者获胜。"),
]


def test_english_sentence_with_citation() -> None:
    answer = extractive_answer(
        "Who approves trips over 500 EUR?", HANDBOOK, sentences=1, language="en"
    )
    assert answer == type(answer)(
        "Dr. Smith approves trips over 500 EUR, e.g. long-haul flights [1].", [1], False
    )
    assert validate(answer.text, len(HANDBOOK)) == (answer.text, answer.cited)
    assert "extractive" not in answer.text.lower()


def test_table_row_is_one_unit_shown_with_its_header() -> None:
    answer = extractive_answer("What is the rate in Oslo?", HANDBOOK, sentences=3, language="en")
    assert answer.text == "- City: Oslo; Rate (EUR): 145 [2]"
    assert answer.cited == [2]


def test_list_item_is_one_unit() -> None:
    answer = extractive_answer("How much is lunch?", HANDBOOK, sentences=3, language="en")
    assert answer.text == "- Lunch: 15 EUR [3]"


def test_chinese_sentences_keep_their_punctuation() -> None:
    answer = extractive_answer("泡泡战士在台湾由谁运营？", GAME, sentences=2, language="zh")
    assert answer.text == (
        "泡泡战士是基于《跑跑卡丁车》与《泡泡堂》所开发的游戏，由韩国Nexon开发与发行[1]。"
        "台湾由游戏橘子运营[1]！"
    )
    two = extractive_answer("怎样算踢爆，谁获胜？", GAME, sentences=2, language="zh")
    assert two.cited == [2] and two.text.endswith("[2]。")
    assert "生命数耗完即算为踢爆[2]。" in two.text and "获胜[2]。" in two.text


def test_not_found_when_nothing_overlaps() -> None:
    for language in ("en", "zh"):
        answer = extractive_answer(
            "quantum chromodynamics?", HANDBOOK, sentences=3, language=language
        )
        assert answer.not_found and answer.cited == []
        assert answer.text == NOT_FOUND_TEXT[language]
    assert extractive_answer("Who approves trips?", [], sentences=3, language="en").not_found
    assert extractive_answer("the of and?", HANDBOOK, sentences=3, language="en").not_found


def test_rarer_terms_weigh_more() -> None:
    passages = [
        passage(0, "The budget covers travel. The budget covers meals. The budget covers rooms."),
        passage(1, "Audit rules apply to every budget."),
    ]
    answer = extractive_answer("budget audit", passages, sentences=1, language="en")
    assert answer.text == "Audit rules apply to every budget [2]."


def test_at_most_two_per_passage_no_duplicates_document_order() -> None:
    rules = " ".join(f"Rule {i}: approved trips use the city rate." for i in range(1, 8))
    passages = [
        passage(0, "Receipts are kept. Approved trips are booked on the portal."),
        passage(1, rules),
        passage(2, "Approved trips use the city rate. Approved trips use the city rate."),
    ]
    answer = extractive_answer("approved trips city rate", passages, sentences=5, language="en")
    assert answer.text.count("[2]") <= PER_PASSAGE
    assert answer.text.count("Approved trips use the city rate [3].") == 1
    assert not answer.not_found and answer.cited == sorted(answer.cited)  # ordered by source
    assert answer.text.index("[2]") < answer.text.index("[3]")


def test_sentence_budget_is_respected() -> None:
    for n in (1, 2, 3):
        answer = extractive_answer("travel trips EUR rate", HANDBOOK, sentences=n, language="en")
        assert 1 <= sum(answer.text.count(f"[{k}]") for k in (1, 2, 3)) <= n


def test_quoted_markers_links_and_tags_are_neutralised_like_generated_text() -> None:
    """A document's own ``[2]``, links and tags are not the engine's citations (review 12.11)."""
    passages = [
        passage(
            0,
            "Travel rules: see [2] and [click](http://evil.example/), <b>www.evil.example</b>, "
            "【3】 or ![x](https://evil.example/p.png) before you book.",
        ),
        passage(1, "Travel rules: meals are paid per day."),
        passage(2, "Parking is free."),
    ]
    answer = extractive_answer("travel rules", passages, sentences=3, language="en")
    assert answer.text == (
        "Travel rules: see and click, www[.]evil[.]example, or x before you book [1]. "
        "Travel rules: meals are paid per day [2]."
    )
    assert answer.cited == [1, 2]
    # the markers left are exactly the engine's own, one per quoted unit
    assert validate(answer.text, len(passages)) == (answer.text, answer.cited)
    for quoted in ("[2] and", "【3】", "](", "http", "<b>", "evil.example"):
        assert quoted not in answer.text
