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

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from .chunk_pack import (
    MAX_CHARS_PER_TOKEN,
    ChunkParams,
    CountTokens,
    Packer,
    Unit,
    append_fitting,
    render_units,
    split_to_fit,
)
from .chunk_tables import has_cells, markdown, table_drafts
from .elements import Element, ParsedDocument
from .textsplit import count_tokens_whitespace, guess_language, split_lines, split_sentences

__all__ = [
    "FLAG_OVERSIZE",
    "FLAG_SPLIT_SENTENCE",
    "MAX_CHARS_PER_TOKEN",
    "Chunk",
    "ChunkParams",
    "CountTokens",
    "chunk_document",
    "count_tokens_whitespace",
]

FLAG_SPLIT_SENTENCE = "split-sentence"  # holds part of a sentence or cell longer than a chunk
FLAG_OVERSIZE = "oversize"  # token_count > max_tokens (one character did not fit)
MAX_TITLE_CHARS = 200  # a longer "title" is a misdetected paragraph: kept as text


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
        elif element.text.strip() or has_cells(element.table):
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


_Draft = tuple[Packer, list[Unit]]  # a chunk before numbering: its breadcrumb and units


def _chunk_section(
    path: tuple[str, ...], elements: list[Element], params: ChunkParams, count: CountTokens
) -> list[_Draft]:
    """Chunks of one section: a stream of sentences and small tables, broken by big tables."""
    packer = Packer(path, params, count)
    drafts: list[_Draft] = []
    stream: list[Unit] = []
    for block, element in enumerate(elements):
        table = element.table if element.kind == "table" and has_cells(element.table) else None
        if table is None:
            joiner = (
                "\n"
                if block and elements[block - 1].kind == element.kind == "list_item"
                else "\n\n"
            )
            stream.extend(_text_units(element, block, joiner, packer))
            continue
        whole = Unit(
            markdown(table.header, table.rows), block, element.page, element.language, True
        )
        name = " ".join(table.name.split())[:MAX_TITLE_CHARS]
        named = bool(name) and name != (path[-1] if path else None)
        if not named and packer.fits([whole]):
            stream.append(whole)  # a small table travels with the text around it
            continue
        drafts.extend((packer, units) for units in _pack(stream, packer))
        stream = []
        own = Packer((*path, name), params, count) if named else packer
        drafts.extend((own, units) for units in table_drafts(table, element, block, own))
    drafts.extend((packer, units) for units in _pack(stream, packer))
    return drafts


def _text_units(element: Element, block: int, joiner: str, packer: Packer) -> Iterator[Unit]:
    split = split_lines if element.kind == "code" else split_sentences
    for piece in split(element.text):
        if not piece.strip():
            continue
        unit = Unit(
            piece, block, element.page, element.language or guess_language(piece), joiner=joiner
        )
        if packer.fits([unit]):
            yield unit
        else:
            for part in split_to_fit(piece, packer.fits_text):
                yield replace(unit, text=part, partial=True)


def _pack(stream: list[Unit], packer: Packer) -> list[list[Unit]]:
    """Greedy packing with sentence overlap, then the tiny-tail merge."""
    drafts: list[list[Unit]] = []
    fresh: list[int] = []  # per draft: index where its new (non-overlap) units start
    current: list[Unit] = []
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
        if packer.tokens(render_units(tail)) < packer.params.min_tokens and packer.fits(merged):
            drafts[-2:] = [merged]
    return drafts


def _extend(current: list[Unit], stream: Sequence[Unit], start: int, packer: Packer) -> int:
    """Append to ``current`` the units from ``start`` that fit; returns how many."""
    return append_fitting(current, stream, start, packer, render=render_units, text_of=_unit_text)


def _unit_text(unit: Unit) -> str:
    return unit.text


def _overlap_tail(units: list[Unit], packer: Packer) -> list[Unit]:
    """The longest run of trailing text units within ``overlap_tokens`` (never the whole chunk)."""
    tail: list[Unit] = []
    for unit in reversed(units[1:]):
        if unit.table or packer.tokens(render_units([unit, *tail])) > packer.params.overlap_tokens:
            break
        tail.insert(0, unit)
    return tail


# --- tables --------------------------------------------------------------------------------


# --- output --------------------------------------------------------------------------------


def _finish(index: int, units: list[Unit], packer: Packer) -> Chunk:
    text = render_units(units)
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


def _majority_language(units: Sequence[Unit]) -> str | None:
    weights: Counter[str] = Counter()
    for unit in units:
        if unit.language:
            weights[unit.language] += len(unit.text)
    return max(sorted(weights), key=weights.__getitem__) if weights else None
