"""Structure-aware chunking: a pure function from a :class:`ParsedDocument` to passages.

Titles open sections; a chunk never spans two sections, and its breadcrumb (document title,
when it differs from the first heading, then the stack of headings) is prefixed to the text the
embedder sees (``embed_text``) but not to the text users see (``text``). Text of a section is
packed up to ``max_tokens`` of ``embed_text``, cut at sentence ends first, then clause ends,
and only a single over-long sentence is cut at words or characters (the chunk is then flagged
``split-sentence``). Consecutive chunks of a section share ``overlap_tokens`` of whole
trailing sentences. A tiny last chunk (< ``min_tokens`` of new text) is merged into the one
before when the result still fits. Tables are Markdown; one that does not fit is split by rows
with the header repeated (and by cells when one row is too big); a named table (a sheet) gets
its name in the breadcrumb. A heading with nothing under it becomes a chunk of its own, so no
text of the document is lost.

Token counter contract: ``count_tokens(text) -> int`` counts the embedder's tokens for ``text``
*without* special tokens, and ``max_tokens`` is the room the model leaves for text: the pipeline
passes :meth:`ingest.embed.Embedder.count_tokens` and at most ``embedder.info.max_tokens`` (its
window minus [CLS]/[SEP]); tests pass :func:`count_tokens_whitespace`. Counts are assumed to grow
with the text. A chunk only exceeds ``max_tokens`` when even one character with the shortened
breadcrumb does not fit; it is then flagged ``oversize``.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from .elements import Element, ParsedDocument, Table
from .textsplit import (
    count_tokens_whitespace,
    guess_language,
    split_clauses,
    split_lines,
    split_sentences,
    split_words,
)

__all__ = ["Chunk", "ChunkParams", "chunk_document", "count_tokens_whitespace"]

CountTokens = Callable[[str], int]
P = TypeVar("P")  # what is packed: a text unit or a table row
FLAG_SPLIT_SENTENCE = "split-sentence"  # holds part of a sentence or cell longer than a chunk
FLAG_OVERSIZE = "oversize"  # token_count > max_tokens (one character did not fit)
# A chunk holds at most max_tokens * MAX_CHARS_PER_TOKEN characters. Prose is 1-6 characters a
# token, but BERT-style tokenizers turn any "word" over 100 characters (base64, hex dumps) into
# one [UNK]: without this cap such a blob would count as one token and make a megabyte chunk.
MAX_CHARS_PER_TOKEN = 12
MAX_TITLE_CHARS = 200  # a longer "title" is a misdetected paragraph: kept as text


@dataclass(frozen=True)
class ChunkParams:
    max_tokens: int = 256
    overlap_tokens: int = 32
    min_tokens: int = 16

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ValueError(f"max_tokens must be at least 8, not {self.max_tokens}.")
        if not 0 <= self.overlap_tokens <= self.max_tokens // 2:
            raise ValueError("overlap_tokens must be between 0 and half of max_tokens.")
        if not 0 <= self.min_tokens <= self.max_tokens // 2:
            raise ValueError("min_tokens must be between 0 and half of max_tokens.")


@dataclass(frozen=True)
class Chunk:
    index: int  # 0..n-1 within the document
    text: str  # the passage as shown to users (no breadcrumb prefix)
    embed_text: str  # breadcrumb-prefixed text used for embedding
    section_path: tuple[str, ...]
    page_start: int | None
    page_end: int | None
    kind: str  # "text" | "table" | "mixed"
    language: str | None
    token_count: int  # of embed_text, counted by the injected counter
    flags: tuple[str, ...] = ()  # FLAG_SPLIT_SENTENCE, FLAG_OVERSIZE


@dataclass(frozen=True)
class _Unit:
    """A piece that is never cut again: a sentence (or part of one) or a whole rendered table."""

    text: str  # raw, with trailing whitespace; pieces of one block are joined as they are
    block: int  # source element; different blocks are joined by ``joiner``
    page: int | None
    language: str | None
    table: bool = False
    partial: bool = False
    joiner: str = "\n\n"


def chunk_document(
    doc: ParsedDocument, *, params: ChunkParams, count_tokens: CountTokens
) -> list[Chunk]:
    """Split ``doc`` into chunks; deterministic, no I/O."""
    drafts: list[_Draft] = []
    for path, elements in _sections(doc):
        drafts.extend(_chunk_section(path, elements, params, count_tokens))
    return [_finish(i, units, packer) for i, (packer, units) in enumerate(drafts)]


# --- sections ------------------------------------------------------------------------------


def _sections(doc: ParsedDocument) -> Iterator[tuple[tuple[str, ...], list[Element]]]:
    """(breadcrumb, body elements) per section, in reading order; empty headings become bodies."""
    stack: list[tuple[int, str, Element]] = []
    covered: list[bool] = []  # per stack entry: some chunk will carry it in its breadcrumb
    body: list[Element] = []

    def flush() -> Iterator[tuple[tuple[str, ...], list[Element]]]:
        if body:
            yield _path(doc.title, stack), list(body)
            covered[:] = [True] * len(covered)
            body.clear()

    def pop() -> Iterator[tuple[tuple[str, ...], list[Element]]]:
        if not covered[-1]:  # a heading with nothing under it: keep its words as a body
            _, text, element = stack[-1]
            yield _path(doc.title, stack), [replace(element, kind="text", text=text)]
            covered[:] = [True] * len(covered)
        stack.pop()
        covered.pop()

    for element in doc.elements:
        title = " ".join(element.text.split())
        if element.kind == "title" and 0 < len(title) <= MAX_TITLE_CHARS:
            yield from flush()
            level = max(element.level, 1)
            while stack and stack[-1][0] >= level:
                yield from pop()
            stack.append((level, title, element))
            covered.append(False)
        elif element.text.strip() or _has_cells(element.table):
            body.append(element)
    yield from flush()
    while stack:
        yield from pop()


def _path(doc_title: str, stack: Sequence[tuple[int, str, Element]]) -> tuple[str, ...]:
    titles = tuple(text for _, text, _ in stack)
    doc_title = " ".join(doc_title.split())
    if len(doc_title) > MAX_TITLE_CHARS:
        doc_title = doc_title[: MAX_TITLE_CHARS - 1] + "…"
    if doc_title and (not titles or titles[0].casefold() != doc_title.casefold()):
        return (doc_title, *titles)
    return titles


# --- packing -------------------------------------------------------------------------------


class _Packer:
    """Measures candidate chunks of one breadcrumb against the budget.

    Greedy packing asks "does one more unit fit?" for every unit; counting each candidate
    afresh costs one tokenizer pass over the growing chunk per unit (most of the chunking
    time). :func:`_append_fitting` instead guesses the run from per-unit counts (each unit
    counted once) and checks the guess with exact counts at its edge, which gives the same
    answer because counts grow with the text; every exact count is remembered.
    """

    def __init__(self, path: tuple[str, ...], params: ChunkParams, count: CountTokens) -> None:
        self.path, self.params, self.count = path, params, count
        self._counts: dict[str, int] = {}
        half = params.max_tokens // 2  # the breadcrumb takes at most half of the budget

        def crumb_fits(crumb: str) -> bool:
            crumb += "\n\n"
            return len(crumb) <= half * MAX_CHARS_PER_TOKEN and count(crumb) <= half

        crumb = _breadcrumb(path, crumb_fits)
        self.prefix = f"{crumb}\n\n" if crumb else ""
        self.prefix_tokens = self.tokens(self.prefix) if crumb else 0

    def tokens(self, text: str) -> int:
        """``count(text)``, remembered (the same candidate is measured more than once)."""
        n = self._counts.get(text)
        if n is None:
            n = self._counts[text] = self.count(text)
        return n

    def fits(self, units: Sequence[_Unit]) -> bool:
        return self.fits_text(_render(units))

    def fits_text(self, text: str) -> bool:
        """Within budget; the character cap first, so huge strings are never counted."""
        text = self.prefix + text.strip()
        max_tokens = self.params.max_tokens
        return len(text) <= max_tokens * MAX_CHARS_PER_TOKEN and self.tokens(text) <= max_tokens

    def estimate(self, text: str) -> int:
        """Tokens ``text`` adds to a chunk, from its count alone behind the breadcrumb."""
        return max(0, self.tokens(self.prefix + text.strip()) - self.prefix_tokens)


def _guess(costs: Iterable[int], room: int) -> int:
    """How many of ``costs``, in order, fit in ``room``."""
    n = 0
    for cost in costs:
        room -= cost
        if room < 0:
            break
        n += 1
    return n


def _longest_fit(n: int, fits: Callable[[int], bool], guess: int) -> int:
    """The largest k in 0..n with ``fits(k)``, where ``fits(0)`` holds and once false stays
    false: the guess is checked, then the search gallops up or bisects down from it."""
    lo = min(max(guess, 0), n)
    if lo and not fits(lo):
        hi = lo - 1
        lo = 0
    else:
        step = 1
        while lo < n and fits(min(lo + step, n)):
            lo, step = min(lo + step, n), step * 2
        if lo == n:
            return n
        hi = min(lo + step, n) - 1
    while lo < hi:  # fits(lo) holds, fits(hi + 1) does not
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


_Draft = tuple[_Packer, list[_Unit]]  # a chunk before numbering: its breadcrumb and units


def _chunk_section(
    path: tuple[str, ...], elements: list[Element], params: ChunkParams, count: CountTokens
) -> list[_Draft]:
    """Chunks of one section: a stream of sentences and small tables, broken by big tables."""
    packer = _Packer(path, params, count)
    drafts: list[_Draft] = []
    stream: list[_Unit] = []
    for block, element in enumerate(elements):
        table = element.table if element.kind == "table" and _has_cells(element.table) else None
        if table is None:
            joiner = (
                "\n"
                if block and elements[block - 1].kind == element.kind == "list_item"
                else "\n\n"
            )
            stream.extend(_text_units(element, block, joiner, packer))
            continue
        whole = _Unit(
            _markdown(table.header, table.rows), block, element.page, element.language, True
        )
        name = " ".join(table.name.split())[:MAX_TITLE_CHARS]
        named = bool(name) and name != (path[-1] if path else None)
        if not named and packer.fits([whole]):
            stream.append(whole)  # a small table travels with the text around it
            continue
        drafts.extend((packer, units) for units in _pack(stream, packer))
        stream = []
        own = _Packer((*path, name), params, count) if named else packer
        drafts.extend((own, units) for units in _table_drafts(table, element, block, own))
    drafts.extend((packer, units) for units in _pack(stream, packer))
    return drafts


def _text_units(element: Element, block: int, joiner: str, packer: _Packer) -> Iterator[_Unit]:
    split = split_lines if element.kind == "code" else split_sentences
    for piece in split(element.text):
        if not piece.strip():
            continue
        unit = _Unit(
            piece, block, element.page, element.language or guess_language(piece), joiner=joiner
        )
        if packer.fits([unit]):
            yield unit
        else:
            for part in _split_to_fit(piece, packer.fits_text):
                yield replace(unit, text=part, partial=True)


def _pack(stream: list[_Unit], packer: _Packer) -> list[list[_Unit]]:
    """Greedy packing with sentence overlap, then the tiny-tail merge."""
    drafts: list[list[_Unit]] = []
    fresh: list[int] = []  # per draft: index where its new (non-overlap) units start
    current: list[_Unit] = []
    start = 0
    i = _extend(current, stream, 0, packer)
    while i < len(stream):
        unit = stream[i]  # the first unit that does not fit: a new chunk begins
        i += 1
        if len(current) > start:
            drafts.append(current)
            fresh.append(start)
            current = _overlap_tail(current, packer)
        while current and not packer.fits([*current, unit]):
            current = current[1:]
        start = len(current)
        current = [*current, unit]
        i += _extend(current, stream, i, packer)
    if len(current) > start:
        drafts.append(current)
        fresh.append(start)
    if len(drafts) >= 2:
        tail = drafts[-1][fresh[-1] :]
        merged = drafts[-2] + tail
        if packer.tokens(_render(tail)) < packer.params.min_tokens and packer.fits(merged):
            drafts[-2:] = [merged]
    return drafts


def _extend(current: list[_Unit], stream: Sequence[_Unit], start: int, packer: _Packer) -> int:
    """Append to ``current`` the units from ``start`` that fit; returns how many."""
    return _append_fitting(current, stream, start, packer, render=_render, text_of=_unit_text)


def _unit_text(unit: _Unit) -> str:
    return unit.text


def _append_fitting(
    current: list[P],
    items: Sequence[P],
    start: int,
    packer: _Packer,
    *,
    render: Callable[[Sequence[P]], str],
    text_of: Callable[[P], str],
) -> int:
    """Append to ``current`` the items from ``start`` that greedy packing would still add
    (stopping at the first that does not fit); returns how many. The run is guessed from
    each item's own count and checked with exact counts of ``render`` at its edge."""
    room = packer.params.max_tokens - packer.prefix_tokens - packer.estimate(render(current))
    n = _longest_fit(
        len(items) - start,
        lambda k: packer.fits_text(render([*current, *items[start : start + k]])),
        _guess((packer.estimate(text_of(x)) for x in items[start:]), room),
    )
    current.extend(items[start : start + n])
    return n


def _overlap_tail(units: list[_Unit], packer: _Packer) -> list[_Unit]:
    """The longest run of trailing text units within ``overlap_tokens`` (never the whole chunk)."""
    tail: list[_Unit] = []
    for unit in reversed(units[1:]):
        if unit.table or packer.tokens(_render([unit, *tail])) > packer.params.overlap_tokens:
            break
        tail.insert(0, unit)
    return tail


def _split_to_fit(text: str, fits: Callable[[str], bool]) -> list[str]:
    """Cut one over-long sentence at clause ends, then words, then characters."""
    for splitter in (split_clauses, split_words):
        parts = splitter(text)
        if len(parts) > 1:
            return [
                p for part in parts for p in ([part] if fits(part) else _split_to_fit(part, fits))
            ]
    return _split_chars(text, fits)


def _split_chars(text: str, fits: Callable[[str], bool]) -> list[str]:
    pieces: list[str] = []
    while text:
        lo, hi = 1, len(text)  # find the longest fitting prefix (at least one character)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(text[:mid]) else (lo, mid - 1)
        pieces.append(text[:lo])
        text = text[lo:]
    return pieces


# --- tables --------------------------------------------------------------------------------


def _table_drafts(table: Table, element: Element, block: int, packer: _Packer) -> list[list[_Unit]]:
    """A table that does not fit as one chunk: groups of rows, each with the header."""

    def unit(text: str, partial: bool = False) -> list[_Unit]:
        return [_Unit(text, block, element.page, element.language, table=True, partial=partial)]

    drafts: list[list[_Unit]] = []
    rows: list[tuple[str, ...]] = []
    i = _more_rows(table, rows, 0, packer)
    while i < len(table.rows):
        row = table.rows[i]  # the first row that does not fit: a new chunk begins
        i += 1
        if rows:
            drafts.append(unit(_markdown(table.header, rows)))
        rows = [row]
        if not packer.fits(unit(_markdown(table.header, rows))):
            drafts.extend(
                unit(text, partial) for text, partial in _split_row(table.header, row, packer)
            )
            rows = []
        i += _more_rows(table, rows, i, packer)
    if rows or not drafts:
        drafts.append(unit(_markdown(table.header, rows)))
    return drafts


def _more_rows(table: Table, rows: list[tuple[str, ...]], start: int, packer: _Packer) -> int:
    """Append to ``rows`` the rows from ``start`` that still fit under the header; how many."""

    def render(some: Sequence[tuple[str, ...]]) -> str:
        return _markdown(table.header, some)

    return _append_fitting(rows, table.rows, start, packer, render=render, text_of=_row_text)


def _row_text(row: tuple[str, ...]) -> str:
    return _markdown((), [row])


def _split_row(
    header: tuple[str, ...], row: tuple[str, ...], packer: _Packer
) -> Iterator[tuple[str, bool]]:
    """One row too big for a chunk: groups of its non-empty cells under their headers."""

    def table_of(cols: Sequence[int], cells: Sequence[str] | None = None) -> str:
        head = tuple(header[c] if c < len(header) else "" for c in cols) if header else ()
        return _markdown(head, [tuple(cells or [row[c] for c in cols])])

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
            yield from ((table_of([col], [part]), True) for part in _split_to_fit(row[col], fits))
            group = []
    if group:
        yield table_of(group), False


def _cell_fits(text: str, *, table_of: Callable[..., str], col: int, packer: _Packer) -> bool:
    return packer.fits_text(table_of([col], [text]))


def _has_cells(table: Table | None) -> bool:
    return table is not None and any(c.strip() for r in (table.header, *table.rows) for c in r)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """GitHub-flavoured Markdown; a table without header is written as bare rows."""
    width = max([len(header), *(len(r) for r in rows)])
    lines = [_md_row(header, width), "|" + " --- |" * width] if header else []
    lines.extend(_md_row(r, width) for r in rows)
    return "\n".join(lines)


def _md_row(cells: Sequence[str], width: int) -> str:
    padded = [" ".join(c.split()).replace("|", "\\|") for c in cells] + [""] * (width - len(cells))
    return "| " + " | ".join(padded) + " |"


# --- output --------------------------------------------------------------------------------


def _render(units: Sequence[_Unit]) -> str:
    parts: list[str] = []
    for _, group in itertools.groupby(units, key=lambda u: u.block):
        pieces = list(group)
        if parts:
            parts.append(pieces[0].joiner)
        parts.append("".join(u.text for u in pieces).strip())
    return "".join(parts)


def _finish(index: int, units: list[_Unit], packer: _Packer) -> Chunk:
    text = _render(units)
    embed_text = packer.prefix + text
    tokens = packer.tokens(embed_text)
    pages = [u.page for u in units if u.page is not None]
    tables = sum(u.table for u in units)
    flags = [FLAG_SPLIT_SENTENCE] if any(u.partial for u in units) else []
    if tokens > packer.params.max_tokens:
        flags.append(FLAG_OVERSIZE)
    return Chunk(
        index=index,
        text=text,
        embed_text=embed_text,
        section_path=packer.path,
        page_start=min(pages) if pages else None,
        page_end=max(pages) if pages else None,
        kind="table" if tables == len(units) else "mixed" if tables else "text",
        language=_majority_language(units),
        token_count=tokens,
        flags=tuple(flags),
    )


def _majority_language(units: Sequence[_Unit]) -> str | None:
    weights: Counter[str] = Counter()
    for unit in units:
        if unit.language:
            weights[unit.language] += len(unit.text)
    return max(sorted(weights), key=weights.__getitem__) if weights else None


def _breadcrumb(path: tuple[str, ...], fits: Callable[[str], bool]) -> str:
    """`` > ``-joined path; outer headings, then characters, are dropped to stay in budget."""
    parts = list(path)
    crumb = " > ".join(parts)
    while len(parts) > 1 and not fits(crumb):
        parts = parts[1:]
        crumb = "… > " + " > ".join(parts)
    if crumb and not fits(crumb):
        crumb = _split_chars(crumb, lambda t: fits(t + "…"))[0] + "…"
    return crumb
