"""Turn one sheet's grid of cell texts into elements: section titles, notes and tables.

Pure functions. A sheet is cut into *regions* at blank rows. Inside a region, lone cells above
the table (a banner like "3.1 Operating segments") become titles, lone cells below it (footnotes)
become text, and the rest is one `Table`. A short label-only region right above a data region
(a header separated from its numbers by a blank row) is joined to it as its header.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest.elements import Element
from ingest.parse_plain import MAX_HEADING_CHARS
from ingest.parse_tables import (
    MAX_HEADER_ROWS,
    is_data_value,
    is_label_row,
    make_table,
    table_element,
)
from ingest.parse_text import has_letters

Row = tuple[str, ...]
MAX_HEADER_GAP = 2  # blank rows allowed between a header block and its data
MAX_TITLE_ROWS = 3
MIN_NOTE_CHARS = 25


@dataclass
class SheetGrid:
    """Cell texts of one sheet ("" for empty), row-major and 0-based, plus merged ranges."""

    name: str
    index: int  # 1-based position in the workbook: the element's page
    rows: list[Row]
    merges: list[tuple[int, int, int, int]] = field(default_factory=list)  # r0, c0, r1, c1


@dataclass
class _Region:
    numbers: list[int]  # 0-based sheet row of each row below
    rows: list[Row]  # merged values propagated
    lone: list[bool]  # the row had at most one filled cell before propagation


def propagate_merges(rows: list[Row], merges: list[tuple[int, int, int, int]]) -> list[Row]:
    """Copy each merged range's top-left value into every cell it covers (within the data)."""
    if not merges:
        return rows
    grid = [list(row) for row in rows]
    height = len(grid)
    width = max((len(row) for row in grid), default=0)
    for r0, c0, r1, c1 in merges:
        if r0 >= height or c0 >= len(grid[r0]) or not grid[r0][c0]:
            continue
        value = grid[r0][c0]
        for r in range(r0, min(r1, height - 1) + 1):
            row = grid[r]
            last = min(c1, width - 1)
            if len(row) <= last:
                row.extend([""] * (last + 1 - len(row)))
            for c in range(c0, last + 1):
                row[c] = value
    return [tuple(row) for row in grid]


def _filled(row: Row) -> int:
    return sum(1 for cell in row if cell)


def _regions(raw: list[Row], full: list[Row]) -> list[_Region]:
    regions: list[_Region] = []
    current: _Region | None = None
    for index, (raw_row, row) in enumerate(zip(raw, full, strict=True)):
        if not _filled(row):
            current = None
            continue
        if current is None:
            current = _Region(numbers=[], rows=[], lone=[])
            regions.append(current)
        elif not _filled(raw_row) and current.rows[-1] == row:
            continue  # the lower rows of a vertically merged banner repeat it
        current.numbers.append(index)
        current.rows.append(row)
        current.lone.append(_filled(raw_row) <= 1)
    return _join_headers(regions)


def _join_headers(regions: list[_Region]) -> list[_Region]:
    """Glue a small all-label block onto the data block just below it."""
    out: list[_Region] = []
    for region in regions:
        previous = out[-1] if out else None
        if previous is not None and _is_header_block(previous) and _has_data(region):
            gap = region.numbers[0] - previous.numbers[-1] - 1
            if gap <= MAX_HEADER_GAP:
                previous.numbers.extend(region.numbers)
                previous.rows.extend(region.rows)
                previous.lone.extend(region.lone)
                continue
        out.append(region)
    return out


def _is_header_block(region: _Region) -> bool:
    multi = [row for row, lone in zip(region.rows, region.lone, strict=True) if not lone]
    return 0 < len(multi) <= MAX_HEADER_ROWS and all(is_label_row(row) for row in region.rows)


def _has_data(region: _Region) -> bool:
    return any(not is_label_row(row) for row in region.rows)


def _lone_text(row: Row) -> str:
    return next(cell for cell in row if cell)


def _lone_element(text: str, page: int, *, heading: bool) -> Element:
    """A cell standing alone: a caption-like title when short and worded, else a note."""
    captionlike = (
        len(text) <= MAX_HEADING_CHARS
        and "\n" not in text
        and has_letters(text)
        and not is_data_value(text)
        and not text.endswith((".", "。"))
    )
    if heading and captionlike:
        return Element(kind="title", text=text, page=page, level=2)
    return Element(kind="text", text=text, page=page)


def _is_note(text: str) -> bool:
    """Footnotes below a table are sentences or long; row labels are short words."""
    return len(text) >= MIN_NOTE_CHARS or text.rstrip().endswith((".", "。", ")", "）"))


def _lone_rows_elements(rows: list[Row], grid: SheetGrid) -> list[Element]:
    """A block of single cells: a few are captions or notes; many short ones are a list."""
    texts = [_lone_text(row) for row in rows]
    if len(texts) <= MAX_TITLE_ROWS or sum(map(len, texts)) > MAX_HEADING_CHARS * len(texts):
        return [
            _lone_element(text, grid.index, heading=len(texts) <= MAX_TITLE_ROWS) for text in texts
        ]
    table = make_table([(text,) for text in texts], name=grid.name)
    return [table_element(table, page=grid.index, extra={"sheet": grid.name})]


def _region_elements(region: _Region, grid: SheetGrid) -> list[Element]:
    rows, lone = region.rows, region.lone
    if all(lone):
        return _lone_rows_elements(rows, grid)
    first = lone.index(False)
    last = len(rows) - lone[::-1].index(False)
    while last < len(rows) and not _is_note(_lone_text(rows[last])):
        last += 1  # a short label below the table ("Total" with an empty value) is a table row
    elements = [_lone_element(_lone_text(row), grid.index, heading=True) for row in rows[:first]]
    table = make_table(rows[first:last], name=grid.name)
    if table.rows or table.header:
        span = f"{region.numbers[first] + 1}-{region.numbers[last - 1] + 1}"
        extra = {"sheet": grid.name, "rows": span}
        elements.append(table_element(table, page=grid.index, extra=extra))
    elements.extend(
        _lone_element(_lone_text(row), grid.index, heading=False) for row in rows[last:]
    )
    return elements


def sheet_elements(grid: SheetGrid) -> list[Element]:
    """The sheet's name as a level-1 title, then its regions in order; [] for an empty sheet."""
    full = propagate_merges(grid.rows, grid.merges)
    raw = [
        row + ("",) * (len(full_row) - len(row))
        for row, full_row in zip(grid.rows, full, strict=True)
    ]
    elements: list[Element] = []
    for region in _regions(raw, full):
        elements.extend(_region_elements(region, grid))
    if not elements:
        return []
    sheet_title = Element(kind="title", text=grid.name, page=grid.index, level=1)
    return [sheet_title, *elements]
