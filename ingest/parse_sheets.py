"""Spreadsheets (xlsx/xlsm/xltx/xltm via openpyxl, xls via xlrd) → titles and `Table`s.

Every sheet is read, cell *values* only: formulas contribute the value the spreadsheet program
saved, never the formula text, and a formula without a saved value is reported in warnings.
openpyxl's read-only mode streams rows (a 1M-row sheet does not build a million cell objects),
but it does not expose merged ranges, so one light streaming pass over each sheet's XML collects
the merges and the formulas without values. A merged value is copied into every cell it covers,
so a row read on its own still says which group it belongs to.
"""

from __future__ import annotations

import datetime as dt
import io
import posixpath
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.elements import Element, ParsedDocument
from ingest.errors import Rejected
from ingest.parse_sheet_layout import SheetGrid, sheet_elements

MAX_CELLS = 5_000_000  # per workbook; beyond this the rest is skipped with a warning
_NS_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_NS_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_NS_PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"


@dataclass
class _SheetXmlFacts:
    merges: list[tuple[int, int, int, int]] = field(default_factory=list)  # 0-based, inclusive
    formulas_without_value: list[str] = field(default_factory=list)


def format_value(value: Any, number_format: str = "General") -> str:
    """A cell value as text: integers without ".0", dates in ISO form, percentages with %."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float) and "%" in number_format:
        return f"{value * 100:.10g}%"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.15g}"
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value).strip()


def parse_xlsx(path: Path) -> ParsedDocument:
    with warnings.catch_warnings(), path.open("rb") as handle:
        # openpyxl warns about every extension it drops (slicers, data validation): noise here.
        warnings.simplefilter("ignore", UserWarning)
        workbook = _open_xlsx(handle)  # a file object skips openpyxl's extension check
        try:
            grids, notes = _read_workbook(workbook, _xml_facts(path))
            sheet_count = len(workbook.sheetnames)
        finally:
            workbook.close()
    return _document(path, grids, notes, sheet_count=sheet_count)


def _open_xlsx(handle: Any) -> Any:
    import openpyxl

    try:
        return openpyxl.load_workbook(handle, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, TypeError) as exc:
        raise Rejected(
            f"The workbook's parts are damaged or missing ({type(exc).__name__}: {exc}).",
            code="corrupt",
        ) from exc


def _read_workbook(
    workbook: Any, facts: dict[str, _SheetXmlFacts]
) -> tuple[list[SheetGrid], list[str]]:
    grids: list[SheetGrid] = []
    notes: list[str] = []
    budget = MAX_CELLS
    for index, sheet in enumerate(workbook.worksheets, start=1):
        sheet.reset_dimensions()  # trust the cells, not the stored dimension tag
        sheet_facts = facts.get(sheet.title, _SheetXmlFacts())
        rows, budget = _read_openpyxl_rows(sheet, budget)
        grids.append(SheetGrid(sheet.title, index, rows, sheet_facts.merges))
        notes.extend(_formula_warning(sheet.title, sheet_facts.formulas_without_value))
        if budget <= 0:
            notes.append(f"Stopped reading after {MAX_CELLS} cells (sheet {sheet.title!r}).")
            break
    return grids, notes


def _read_openpyxl_rows(sheet: Any, budget: int) -> tuple[list[tuple[str, ...]], int]:
    rows: list[tuple[str, ...]] = []
    for row in sheet.iter_rows():
        values = tuple(
            format_value(getattr(cell, "value", None), getattr(cell, "number_format", "General"))
            for cell in row
        )
        if len(values) > budget:
            return rows, 0
        rows.append(values)
        budget -= len(values)
    return rows, budget


def _formula_warning(sheet: str, cells: list[str]) -> list[str]:
    if not cells:
        return []
    shown = ", ".join(cells[:5]) + (" …" if len(cells) > 5 else "")
    return [
        f"Sheet {sheet!r}: {len(cells)} formula cell(s) have no saved value ({shown}) and were "
        "indexed as empty. Open and save the file in Excel or LibreOffice to store the values."
    ]


def _xml_facts(path: Path) -> dict[str, _SheetXmlFacts]:
    """Merged ranges and value-less formulas per sheet name, from one streaming XML pass."""
    facts: dict[str, _SheetXmlFacts] = {}
    with zipfile.ZipFile(path) as archive:
        for name, part in _sheet_parts(archive).items():
            if part in archive.namelist():
                with archive.open(part) as stream:
                    facts[name] = _scan_sheet(stream)
    return facts


def _sheet_parts(archive: zipfile.ZipFile) -> dict[str, str]:
    """Sheet name → worksheet part path, following the package relationships."""
    from lxml import etree

    rels = etree.fromstring(archive.read("_rels/.rels"), _parser())
    workbook = next(
        (r.get("Target", "") for r in rels if r.get("Type", "").endswith("/officeDocument")),
        "xl/workbook.xml",
    ).lstrip("/")
    base = posixpath.dirname(workbook)
    wb_rels_part = posixpath.join(base, "_rels", posixpath.basename(workbook) + ".rels")
    targets = {
        r.get("Id"): _resolve(base, r.get("Target", ""))
        for r in etree.fromstring(archive.read(wb_rels_part), _parser())
        if r.tag == f"{_NS_PKG_REL}Relationship"
    }
    book = etree.fromstring(archive.read(workbook), _parser())
    return {
        sheet.get("name", ""): targets.get(sheet.get(f"{_NS_REL}id"), "")
        for sheet in book.iter(f"{_NS_MAIN}sheet")
    }


def _resolve(base: str, target: str) -> str:
    if target.startswith("/"):
        return target.lstrip("/")
    return posixpath.normpath(posixpath.join(base, target))


def _parser() -> Any:
    from lxml import etree

    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _scan_sheet(stream: Any) -> _SheetXmlFacts:
    from lxml import etree
    from openpyxl.utils.cell import range_boundaries

    facts = _SheetXmlFacts()
    tags = (f"{_NS_MAIN}c", f"{_NS_MAIN}mergeCell")
    for _, elem in etree.iterparse(stream, events=("end",), tag=tags, resolve_entities=False):
        if elem.tag == f"{_NS_MAIN}mergeCell":
            min_col, min_row, max_col, max_row = range_boundaries(elem.get("ref", "A1"))
            facts.merges.append((min_row - 1, min_col - 1, max_row - 1, max_col - 1))
        elif elem.find(f"{_NS_MAIN}f") is not None:
            value = elem.find(f"{_NS_MAIN}v")
            if value is None or not (value.text or "").strip():  # absent or <v></v>
                facts.formulas_without_value.append(elem.get("r", "?"))
        elem.clear(keep_tail=False)
    return facts


def parse_xls(path: Path) -> ParsedDocument:
    import xlrd

    book = _open_xls(path)
    grids: list[SheetGrid] = []
    try:
        for index in range(book.nsheets):
            sheet = book.sheet_by_index(index)
            rows = [
                tuple(_xls_value(book, sheet.cell(r, c)) for c in range(sheet.row_len(r)))
                for r in range(sheet.nrows)
            ]
            merges = [(rlo, clo, rhi - 1, chi - 1) for rlo, rhi, clo, chi in sheet.merged_cells]
            grids.append(SheetGrid(sheet.name, index + 1, rows, merges))
            book.unload_sheet(index)
    except (xlrd.XLRDError, AssertionError, IndexError, KeyError, ValueError) as exc:
        raise Rejected(f"The .xls workbook is damaged: {exc}", code="corrupt") from exc
    finally:
        book.release_resources()
    return _document(path, grids, [], sheet_count=len(grids))


def _open_xls(path: Path) -> Any:
    import xlrd

    try:
        try:
            return xlrd.open_workbook(
                str(path), formatting_info=True, on_demand=True, logfile=io.StringIO()
            )
        except NotImplementedError:  # BIFF2-4 files: merges need formatting_info, values do not
            return xlrd.open_workbook(str(path), on_demand=True, logfile=io.StringIO())
    except xlrd.XLRDError as exc:
        if "encrypt" in str(exc).lower():
            raise Rejected(
                "The .xls workbook is password-protected; it cannot be read without its password.",
                code="password-protected",
                hint="Save an unprotected copy and drop that copy instead.",
            ) from exc
        raise Rejected(f"The .xls workbook is damaged: {exc}", code="corrupt") from exc
    except (xlrd.compdoc.CompDocError, AssertionError, IndexError, KeyError, ValueError) as exc:
        raise Rejected(f"The .xls workbook is damaged: {exc}", code="corrupt") from exc


def _xls_value(book: Any, cell: Any) -> str:
    import xlrd

    if cell.ctype == xlrd.XL_CELL_DATE:
        try:
            return format_value(xlrd.xldate.xldate_as_datetime(cell.value, book.datemode))
        except (xlrd.xldate.XLDateError, OverflowError, ValueError):
            return format_value(cell.value)
    if cell.ctype == xlrd.XL_CELL_BOOLEAN:
        return "TRUE" if cell.value else "FALSE"
    if cell.ctype == xlrd.XL_CELL_ERROR:
        return str(xlrd.error_text_from_code.get(cell.value, "#ERROR"))
    return format_value(cell.value)


def _document(
    path: Path, grids: list[SheetGrid], notes: list[str], *, sheet_count: int
) -> ParsedDocument:
    elements: list[Element] = []
    for grid in grids:
        elements.extend(sheet_elements(grid))
    if not any(e.kind != "title" or e.level > 1 for e in elements):
        raise Rejected(
            f"The workbook has {sheet_count} sheet(s) but no cell values.",
            code="empty",
        )
    return ParsedDocument(
        elements=tuple(elements),
        title=path.stem,
        pages=max(sheet_count, 1),
        warnings=tuple(notes),
    )
