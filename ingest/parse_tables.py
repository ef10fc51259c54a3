"""Tables from any source (spreadsheets, CSV, HTML tables from docx/pptx/html) as `Table`s.

Pure functions. The one judgement call is the header: the first rows are a header when they hold
only labels (no numbers, no dates) and the rows below them do not, or when the HTML says so
(``<th>``/``<thead>``). A multi-row header (a merged group label above column names) becomes one
header row with "group / column" labels, so each value keeps its full column meaning.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter

from ingest.elements import Element, Table

MAX_HEADER_ROWS = 3
_NUMBER_RE = re.compile(r"^[\s(+\-−]*[$€£¥]?\s*[\d.,]+\s*%?\)?\s*$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?$")


def is_data_value(cell: str) -> bool:
    """Numbers, amounts, percentages, ISO dates and booleans are data; words are labels."""
    cell = cell.strip()
    if cell in {"TRUE", "FALSE"}:
        return True
    return bool(cell) and bool(_NUMBER_RE.match(cell) or _DATE_RE.match(cell))


def is_label_row(row: tuple[str, ...]) -> bool:
    filled = [cell for cell in row if cell.strip()]
    return bool(filled) and not any(is_data_value(cell) for cell in filled)


def header_row_count(rows: list[tuple[str, ...]]) -> int:
    """How many leading rows form the header (0 when the table has none we can tell)."""
    if len(rows) < 2:
        return 0
    width = max(len(row) for row in rows)
    count = 0
    while count < min(MAX_HEADER_ROWS, len(rows) - 1) and is_label_row(rows[count]):
        count += 1
    if count == 0:
        return 0
    body_has_data = any(is_data_value(cell) for row in rows[count:] for cell in row)
    if body_has_data:
        return count
    # All-text table: only a first row that fills most columns with distinct labels.
    first = [cell.strip() for cell in rows[0] if cell.strip()]
    distinct = len(set(first)) == len(first) and rows[0] not in rows[1:]
    return 1 if distinct and len(first) >= max(2, 0.6 * width) else 0


def combine_header(rows: list[tuple[str, ...]], width: int) -> tuple[str, ...]:
    """Stack header rows column by column: ("2023", "Sales") → "2023 / Sales"."""
    combined: list[str] = []
    for col in range(width):
        parts: list[str] = []
        for row in rows:
            cell = row[col].strip() if col < len(row) else ""
            if cell and cell not in parts:
                parts.append(cell)
        combined.append(" / ".join(parts))
    return tuple(combined)


def make_table(
    rows: list[tuple[str, ...]], *, name: str = "", header_rows: int | None = None
) -> Table:
    """A `Table` with rows padded to one width, empty columns dropped, header detected."""
    rows = [tuple(" ".join(cell.split()) for cell in row) for row in rows]
    width = max((len(row) for row in rows), default=0)
    padded = [row + ("",) * (width - len(row)) for row in rows]
    keep = [c for c in range(width) if any(row[c] for row in padded)]
    trimmed = [tuple(row[c] for c in keep) for row in padded if any(row[c] for c in keep)]
    count = header_row_count(trimmed) if header_rows is None else header_rows
    header = combine_header(trimmed[:count], len(keep)) if count else ()
    return Table(header=header, rows=tuple(trimmed[count:]), name=name)


def render_table(table: Table) -> str:
    """Text of a table element: one line per row, cells separated by " | "."""
    lines = [" | ".join(table.header)] if table.header else []
    lines.extend(" | ".join(row) for row in table.rows)
    return "\n".join(lines)


def table_element(
    table: Table, *, page: int | None = None, extra: dict[str, str] | None = None
) -> Element:
    return Element(
        kind="table", text=render_table(table), page=page, table=table, extra=dict(extra or {})
    )


def table_from_html(html: str, *, name: str = "") -> Table | None:
    """Parse one ``<table>`` (as unstructured's ``text_as_html`` gives it) into a `Table`.

    Cells spanning several columns are repeated in each column they cover, like merged cells in
    spreadsheets. Returns None when the HTML holds no rows.
    """
    from lxml import html as lxml_html

    try:
        root = lxml_html.fromstring(html)
    except (ValueError, TypeError, SyntaxError):
        return None
    rows: list[tuple[str, ...]] = []
    header_rows = 0
    for tr in root.iter("tr"):
        cells: list[str] = []
        for cell in tr:
            if not isinstance(cell.tag, str) or cell.tag not in {"td", "th"}:
                continue
            text = " ".join(cell.text_content().split())
            span = _int_attr(cell.get("colspan"))
            cells.extend([text] * span)
        if not cells:
            continue
        in_thead = any(a.tag == "thead" for a in tr.iterancestors())
        if len(rows) == header_rows and (in_thead or _all_th(tr)):
            header_rows += 1
        rows.append(tuple(cells))
    if not rows:
        return None
    return make_table(rows, name=name, header_rows=header_rows or None)


def _all_th(tr: object) -> bool:
    cells = [c for c in tr if isinstance(c.tag, str) and c.tag in {"td", "th"}]  # type: ignore[attr-defined]
    return bool(cells) and all(c.tag == "th" for c in cells)


def _int_attr(value: str | None) -> int:
    try:
        return max(1, min(int(value or 1), 100))
    except ValueError:
        return 1


def csv_rows(text: str) -> list[tuple[str, ...]]:
    """Rows of CSV/TSV text, guessing the delimiter (comma, semicolon, tab, pipe)."""
    sample = text[:20000]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if sample.count("\t") > sample.count(",") else csv.excel
    csv.field_size_limit(max(csv.field_size_limit(), 64 * 2**20))
    lines_as_rows: list[tuple[str, ...]] = [(line,) for line in text.splitlines()]
    try:
        rows = [tuple(row) for row in csv.reader(io.StringIO(text), dialect)]
    except csv.Error:  # unbalanced quotes: one cell per line
        return lines_as_rows
    widths = Counter(len(row) for row in rows if any(cell.strip() for cell in row))
    if widths and widths.most_common(1)[0][1] < 0.6 * sum(widths.values()):
        return lines_as_rows  # no consistent column count: it is a list, not a table
    return rows
