"""Packing text into chunks that fit the embedder's window: the measuring and cutting that
`ingest.chunk` (sections and sentences) and `ingest.chunk_tables` (tables by rows and cells)
share. Token counts are assumed to grow with the text (see `ingest.chunk`'s contract)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .textsplit import split_clauses, split_words

__all__ = [
    "MAX_CHARS_PER_TOKEN",
    "ChunkParams",
    "CountTokens",
    "Packer",
    "Unit",
    "append_fitting",
    "breadcrumb",
    "longest_fit",
    "render_units",
    "split_chars",
    "split_to_fit",
]

CountTokens = Callable[[str], int]
P = TypeVar("P")  # what is packed: a text unit or a table row
# A chunk holds at most max_tokens * MAX_CHARS_PER_TOKEN characters. Prose is 1-6 characters a
# token, but BERT-style tokenizers turn any "word" over 100 characters (base64, hex dumps) into
# one [UNK]: without this cap such a blob would count as one token and make a megabyte chunk.
MAX_CHARS_PER_TOKEN = 12


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
class Unit:
    """A piece that is never cut again: a sentence (or part of one) or a whole rendered table."""

    text: str  # raw, with trailing whitespace; pieces of one block are joined as they are
    block: int  # source element; different blocks are joined by ``joiner``
    page: int | None
    language: str | None
    table: bool = False
    partial: bool = False
    joiner: str = "\n\n"


class Packer:
    """Measures candidate chunks of one breadcrumb against the budget.

    Greedy packing asks "does one more unit fit?" for every unit; counting each candidate
    afresh costs one tokenizer pass over the growing chunk per unit (most of the chunking
    time). :func:`append_fitting` instead guesses the run from per-unit counts (each unit
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

        crumb = breadcrumb(path, crumb_fits)
        self.prefix = f"{crumb}\n\n" if crumb else ""
        self.prefix_tokens = self.tokens(self.prefix) if crumb else 0

    def tokens(self, text: str) -> int:
        """``count(text)``, remembered (the same candidate is measured more than once)."""
        n = self._counts.get(text)
        if n is None:
            n = self._counts[text] = self.count(text)
        return n

    def fits(self, units: Sequence[Unit]) -> bool:
        return self.fits_text(render_units(units))

    def fits_text(self, text: str) -> bool:
        """Within budget; the character cap first, so huge strings are never counted."""
        text = self.prefix + text.strip()
        max_tokens = self.params.max_tokens
        return len(text) <= max_tokens * MAX_CHARS_PER_TOKEN and self.tokens(text) <= max_tokens

    def estimate(self, text: str) -> int:
        """Tokens ``text`` adds to a chunk, from its count alone behind the breadcrumb."""
        return max(0, self.tokens(self.prefix + text.strip()) - self.prefix_tokens)


def guess(costs: Iterable[int], room: int) -> int:
    """How many of ``costs``, in order, fit in ``room``."""
    n = 0
    for cost in costs:
        room -= cost
        if room < 0:
            break
        n += 1
    return n


def longest_fit(n: int, fits: Callable[[int], bool], guess: int) -> int:
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


def append_fitting(
    current: list[P],
    items: Sequence[P],
    start: int,
    packer: Packer,
    *,
    render: Callable[[Sequence[P]], str],
    text_of: Callable[[P], str],
) -> int:
    """Append to ``current`` the items from ``start`` that greedy packing would still add
    (stopping at the first that does not fit); returns how many. The run is guessed from
    each item's own count and checked with exact counts of ``render`` at its edge."""
    room = packer.params.max_tokens - packer.prefix_tokens - packer.estimate(render(current))
    n = longest_fit(
        len(items) - start,
        lambda k: packer.fits_text(render([*current, *items[start : start + k]])),
        guess((packer.estimate(text_of(x)) for x in items[start:]), room),
    )
    current.extend(items[start : start + n])
    return n


def split_to_fit(text: str, fits: Callable[[str], bool]) -> list[str]:
    """Cut one over-long sentence at clause ends, then words, then characters."""
    for splitter in (split_clauses, split_words):
        parts = splitter(text)
        if len(parts) > 1:
            return [
                p for part in parts for p in ([part] if fits(part) else split_to_fit(part, fits))
            ]
    return split_chars(text, fits)


def split_chars(text: str, fits: Callable[[str], bool]) -> list[str]:
    pieces: list[str] = []
    while text:
        lo, hi = 1, len(text)  # find the longest fitting prefix (at least one character)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(text[:mid]) else (lo, mid - 1)
        pieces.append(text[:lo])
        text = text[lo:]
    return pieces


def render_units(units: Sequence[Unit]) -> str:
    parts: list[str] = []
    for _, group in itertools.groupby(units, key=lambda u: u.block):
        pieces = list(group)
        if parts:
            parts.append(pieces[0].joiner)
        parts.append("".join(u.text for u in pieces).strip())
    return "".join(parts)


def breadcrumb(path: tuple[str, ...], fits: Callable[[str], bool]) -> str:
    """`` > ``-joined path; outer headings, then characters, are dropped to stay in budget."""
    parts = list(path)
    crumb = " > ".join(parts)
    while len(parts) > 1 and not fits(crumb):
        parts = parts[1:]
        crumb = "… > " + " > ".join(parts)
    if crumb and not fits(crumb):
        crumb = split_chars(crumb, lambda t: fits(t + "…"))[0] + "…"
    return crumb
