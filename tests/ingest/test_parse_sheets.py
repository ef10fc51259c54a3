"""Spreadsheets: every sheet, values not formulas, merged cells, headers, refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import parse_sheets
from ingest.elements import ParsedDocument, Table
from ingest.errors import Rejected
from ingest.parse import ParseLimits, parse_file
from ingest.parse_sheet_layout import SheetGrid, propagate_merges, sheet_elements
from tests.ingest.conftest import all_text, corpus_file

Parsed = Callable[..., ParsedDocument]


def tables(document: ParsedDocument) -> list[Table]:
    return [e.table for e in document.elements if e.table is not None]


def test_every_sheet_is_read_with_its_name_as_page_title(parsed: Parsed) -> None:
    document = parsed("unstructured/2023-half-year-analyses-by-segment.xlsx")
    sheets = [(e.text, e.page) for e in document.elements if e.kind == "title" and e.level == 1]
    assert sheets == [
        ("OS-Rev.and results 30 06 2023", 1),
        ("OS-Other information 30 06 2023", 2),
        ("Prod.Rev.and results 30 06 2023", 3),
        ("Prod.-Other inform. 30 06 23", 4),
        ("Reconciliation 30 06 2023", 5),
    ]
    assert document.pages == 5
    assert all(t.name for t in tables(document))


def test_banner_cells_become_titles_and_header_rows_are_combined(parsed: Parsed) -> None:
    document = parsed("unstructured/2023-half-year-analyses-by-segment.xlsx")
    captions = [e.text for e in document.elements if e.kind == "title" and e.level == 2]
    assert captions[:3] == [
        "3. Analyses by segment",
        "3.1 Operating segments",
        "Revenue and results",
    ]
    first = tables(document)[0]
    assert first.header[:2] == ("In millions of CHF", "Sales (a)")
    assert first.rows[0][:2] == ("Zone NA", "12553")
    other = tables(document)[3]  # a header row above the column names: "period / column"
    assert "January–June 2023 / Impairment of intangible assets (d)" in other.header


def test_merged_cells_propagate_to_every_covered_cell(parsed: Parsed) -> None:
    rows = tables(parsed("openpyxl/reader/tests/data/complex-styles.xlsx"))[0].rows
    merged = next(row for row in rows if row[0] == "Merged Cells")  # merged A18:B18, C18:D18
    assert merged[:4] == ("Merged Cells",) * 4
    plain = next(row for row in rows if row[0] == "Green Border (#006600)")
    assert plain[1] == ""  # not merged: stays empty
    assert ("12.34%", "", "12.34%", "") in {row[:4] for row in rows}  # percent format kept


def test_formulas_give_their_saved_values(parsed: Parsed) -> None:
    document = parsed("openpyxl/tests/data/reader/formulae.xlsx")
    cells = [cell for table in tables(document) for row in table.rows for cell in row]
    assert "24690" in cells  # =A2*2 in the file, value saved by Excel
    assert "#VALUE!" in cells
    assert not [cell for cell in cells if cell.startswith("=")]
    assert not document.warnings


def test_formula_without_saved_value_is_reported_not_emitted(tmp_path: Path) -> None:
    # openpyxl writes formulas without cached values, like many report generators do.
    source = tmp_path / "generated.xlsx"
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "收入"
    sheet.append(["项目", "金额"])
    sheet.append(["销售额", 1200])
    sheet.append(["合计", "=SUM(B2:B2)"])
    workbook.save(source)
    document = parse_file(source, limits=ParseLimits())
    table = tables(document)[0]
    assert table.name == "收入" and table.header == ("项目", "金额")
    assert table.rows == (("销售额", "1200"), ("合计", ""))
    assert "=SUM" not in all_text(document)
    assert "B3" in document.warnings[0] and "no saved value" in document.warnings[0]
    assert {e.language for e in document.elements} == {"zh"}


def test_xls_every_sheet_and_headers(parsed: Parsed) -> None:
    document = parsed("unstructured/tests-example.xls")
    names = [e.text for e in document.elements if e.kind == "title" and e.level == 1]
    assert names == ["Example Test", "Format Abbr.", "Readme"]
    abbreviations = tables(document)[1]
    assert abbreviations.header == ("Abbreviation", "Question Type")
    assert ("MC", "Multiple Choice") in abbreviations.rows


def test_dates_use_the_workbook_date_system(parsed: Parsed) -> None:
    assert "2011-10-31" in all_text(parsed("openpyxl/reader/tests/data/date_1904.xlsx"))
    assert ("Huber", "1907-07-03") in tables(parsed("xlrd/Formate.xls"))[0].rows


def test_biff4_xls_and_xlsm(parsed: Parsed) -> None:
    biff4 = tables(parsed("xlrd/biff4_no_format_no_window2.xls"))[0]
    assert biff4.header == ("ID", "TOTAL", "MAIN", "SUB")
    assert ("A", "DOG & CAT PRODUCTS", "Dog & Cat Product", "") in biff4.rows
    assert "Form Controls" in all_text(parsed("openpyxl/tests/data/reader/vba+comments.xlsm"))


@pytest.mark.parametrize(
    ("relative", "code", "words"),
    [
        ("unstructured/password_protected.xlsx", "password-protected", "password"),
        ("openpyxl/tests/data/reader/null_archive.xlsx", "corrupt", "ZIP container"),
        ("xlrd/corrupted_error.xls", "corrupt", "damaged"),
        ("xlrd/sample.xlsx", "empty", "no cell values"),
    ],
)
def test_refused_workbooks(relative: str, code: str, words: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_file(corpus_file(relative), limits=ParseLimits())
    assert info.value.code == code
    assert words in info.value.message


def test_cell_budget_stops_huge_workbooks_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parse_sheets, "MAX_CELLS", 100)
    document = parse_file(corpus_file("unstructured/more-than-1k-cells.xlsx"), limits=ParseLimits())
    assert sum(len(row) for t in tables(document) for row in t.rows) <= 100
    assert "Stopped reading after 100 cells" in document.warnings[-1]


def test_label_block_above_blank_row_becomes_the_header() -> None:
    rows: list[tuple[str, ...]] = [("Region", "Sales"), ("", ""), ("North", "10"), ("South", "12")]
    elements = sheet_elements(SheetGrid("S", 1, rows))
    table = elements[1].table
    assert table == Table(
        header=("Region", "Sales"), rows=(("North", "10"), ("South", "12")), name="S"
    )


cells = st.text(alphabet="ab1", max_size=2)


@settings(max_examples=60, deadline=None)
@given(
    grid=st.lists(st.lists(cells, min_size=1, max_size=5), min_size=1, max_size=6),
    merge=st.tuples(*(st.integers(0, 5) for _ in range(4))),
)
def test_propagation_fills_exactly_the_merged_range(
    grid: list[list[str]], merge: tuple[int, ...]
) -> None:
    r0, c0 = min(merge[0], merge[2]), min(merge[1], merge[3])
    r1, c1 = max(merge[0], merge[2]), max(merge[1], merge[3])
    rows = [tuple(row) for row in grid]
    out = propagate_merges(rows, [(r0, c0, r1, c1)])
    anchor = rows[r0][c0] if r0 < len(rows) and c0 < len(rows[r0]) else ""
    for r, row in enumerate(out):
        for c, value in enumerate(row):
            inside = r0 <= r <= r1 and c0 <= c <= c1
            if inside and anchor:
                assert value == anchor
            elif c < len(rows[r]):
                assert value == rows[r][c] or (inside and not anchor)
