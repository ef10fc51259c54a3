"""The parsed-document model handed from `parse` to `chunk` (the contract between them).

A parser turns one file into a list of :class:`Element` in reading order. Chunking is a pure
function of that list and never sees the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ElementKind = Literal["title", "text", "list_item", "table", "code", "caption", "other"]


@dataclass(frozen=True)
class Table:
    """A table as rows of cell *values* (never formulas). ``header`` may be empty."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    name: str = ""  # e.g. the sheet name for spreadsheets


@dataclass(frozen=True)
class Element:
    kind: ElementKind
    text: str
    page: int | None = None  # 1-based page (PDF, slide number for decks), None when unknown
    level: int = 0  # heading depth for titles (1 = top); 0 otherwise
    table: Table | None = None  # set when kind == "table"
    language: str | None = None  # "en", "zh", ... when known
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedDocument:
    """What a parser returns: elements plus facts about the file."""

    elements: tuple[Element, ...]
    title: str
    pages: int  # pages (PDF), sheets (spreadsheets), slides (decks); 1 for flowing text
    warnings: tuple[str, ...] = ()  # e.g. "OCR skipped: Tesseract is not installed"
    ocr_pages: int = 0
