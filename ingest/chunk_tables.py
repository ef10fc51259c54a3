"""Tables in chunks: GitHub-flavoured Markdown; a table that does not fit one chunk is split
by rows with its header repeated, and a row too big for a chunk by cells under their headers."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

from .chunk_pack import Packer, Unit, append_fitting, split_to_fit
from .elements import Element, Table

__all__ = ["has_cells", "markdown", "table_drafts"]


def table_drafts(table: Table, element: Element, block: int, packer: Packer) -> list[list[Unit]]:
    """A table that does not fit as one chunk: groups of rows, each with the header."""

    def unit(text: str, partial: bool = False) -> list[Unit]:
        return [Unit(text, block, element.page, element.language, table=True, partial=partial)]

    drafts: list[list[Unit]] = []
    rows: list[tuple[str, ...]] = []
    i = _more_rows(table, rows, 0, packer)
    while i < len(table.rows):
        row = table.rows[i]  # the first row that does not fit: a new chunk begins
        i += 1
        if rows:
            drafts.append(unit(markdown(table.header, rows)))
        rows = [row]
        if not packer.fits(unit(markdown(table.header, rows))):
            drafts.extend(
                unit(text, partial) for text, partial in _split_row(table.header, row, packer)
            )
            rows = []
        i += _more_rows(table, rows, i, packer)
    if rows or not drafts:
        drafts.append(unit(markdown(table.header, rows)))
    return drafts


def _more_rows(table: Table, rows: list[tuple[str, ...]], start: int, packer: Packer) -> int:
    """Append to ``rows`` the rows from ``start`` that still fit under the header; how many."""

    def render(some: Sequence[tuple[str, ...]]) -> str:
        return markdown(table.header, some)

    return append_fitting(rows, table.rows, start, packer, render=render, text_of=_row_text)


def _row_text(row: tuple[str, ...]) -> str:
    return markdown((), [row])


def _split_row(
    header: tuple[str, ...], row: tuple[str, ...], packer: Packer
) -> Iterator[tuple[str, bool]]:
    """One row too big for a chunk: groups of its non-empty cells under their headers."""

    def table_of(cols: Sequence[int], cells: Sequence[str] | None = None) -> str:
        head = tuple(header[c] if c < len(header) else "" for c in cols) if header else ()
        return markdown(head, [tuple(cells or [row[c] for c in cols])])

    group: list[int] = []
    for col in (c for c, cell in enumerate(row) if cell.strip()):
        if packer.fits_text(table_of([*group, col])):
            group.append(col)
            continue
        if group:
            yield table_of(group), False
        group = [col]
        if not packer.fits_text(table_of(group)):
            fits = functools.partial(_cell_fits, table_of=table_of, col=col, packer=packer)
            yield from ((table_of([col], [part]), True) for part in split_to_fit(row[col], fits))
            group = []
    if group:
        yield table_of(group), False


def _cell_fits(text: str, *, table_of: Callable[..., str], col: int, packer: Packer) -> bool:
    return packer.fits_text(table_of([col], [text]))


def has_cells(table: Table | None) -> bool:
    return table is not None and any(c.strip() for r in (table.header, *table.rows) for c in r)


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """GitHub-flavoured Markdown; a table without header is written as bare rows."""
    width = max([len(header), *(len(r) for r in rows)])
    lines = [_md_row(header, width), "|" + " --- |" * width] if header else []
    lines.extend(_md_row(r, width) for r in rows)
    return "\n".join(lines)


def _md_row(cells: Sequence[str], width: int) -> str:
    padded = [" ".join(c.split()).replace("|", "\\|") for c in cells] + [""] * (width - len(cells))
    return "| " + " | ".join(padded) + " |"
