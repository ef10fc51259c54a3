"""Sentence, clause, word and line splitting: examples for the rules, and losslessness."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.textsplit import split_clauses, split_lines, split_sentences, split_words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Dr. Smith went to Washington. He arrived at 5 p.m. on Monday. Why? Because!",
            [
                "Dr. Smith went to Washington. ",
                "He arrived at 5 p.m. on Monday. ",
                "Why? ",
                "Because!",
            ],
        ),
        ("Use a cab, e.g. a taxi. Then pay.", ["Use a cab, e.g. a taxi. ", "Then pay."]),
        (
            "The U.S. Army is big. J. R. Tolkien wrote.",
            ["The U.S. Army is big. ", "J. R. Tolkien wrote."],
        ),
        ("Pi is 3.14 exactly. See Fig. 3 below.", ["Pi is 3.14 exactly. ", "See Fig. 3 below."]),
        ("I said no. Then I left.", ["I said no. ", "Then I left."]),
        ("See No. 5 in the list.", ["See No. 5 in the list."]),
        ('He said "Stop." Then left.', ['He said "Stop." ', "Then left."]),
        (
            "1. Introduction\n2. Scope of work. Next.",
            ["1. Introduction\n", "2. Scope of work. ", "Next."],
        ),
        ("Wait... what? Done.", ["Wait... what? ", "Done."]),
        ("line one\nline two\n\n\nnext para", ["line one\n", "line two\n\n\n", "next para"]),
    ],
)
def test_english_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "今天天气很好。我们去公园吧！你去吗？好的；再见。",
            ["今天天气很好。", "我们去公园吧！", "你去吗？", "好的；", "再见。"],
        ),
        ("他说：“你好。”然后走了。", ["他说：“你好。”", "然后走了。"]),
        ("版本2.0发布了。新功能很多!下一句", ["版本2.0发布了。", "新功能很多!", "下一句"]),
        ("全角句号．半角句号｡结束", ["全角句号．", "半角句号｡", "结束"]),
        (
            "由韩国Nexon开发。Nexon is Korean. 中文",
            ["由韩国Nexon开发。", "Nexon is Korean. ", "中文"],
        ),
        ("第一句，第二部分、第三部分", ["第一句，第二部分、第三部分"]),  # clauses are not sentences
    ],
)
def test_chinese_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_clauses_words_and_lines() -> None:
    assert split_clauses("first, second; third: fourth — fifth") == [
        "first, ",
        "second; ",
        "third: ",
        "fourth — ",
        "fifth",
    ]
    assert split_clauses("第一，第二、第三：第四；第五——第六") == [
        "第一，",
        "第二、",
        "第三：",
        "第四；",
        "第五——",
        "第六",
    ]
    assert split_clauses("1,000 and 3:30 stay") == ["1,000 and 3:30 stay"]
    assert split_words("  a b  c ") == ["  a ", "b  ", "c "]
    assert split_lines("a\nb\n\nc") == ["a\n", "b\n\n", "c"]


PIECES = [*"ab Z9.!?;:,，。！？；、“”\"')\n\t —", "e.g.", "Dr.", "中文", "No."]
TEXT = st.lists(st.sampled_from(PIECES), max_size=40).map("".join) | st.text(max_size=80)


@settings(max_examples=400, deadline=None)
@given(TEXT)
def test_splitting_is_lossless_and_never_yields_empty_pieces(text: str) -> None:
    for split in (split_sentences, split_clauses, split_words, split_lines):
        pieces = split(text)
        assert "".join(pieces) == text
        assert all(pieces)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="的一是在不了有和人这中大为上", min_size=1, max_size=10), max_size=8)
)
def test_chinese_sentences_end_at_their_punctuation(bodies: list[str]) -> None:
    text = "".join(b + "。" for b in bodies)
    assert split_sentences(text) == [b + "。" for b in bodies]
