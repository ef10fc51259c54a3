"""Helpers for ingest tests: the shared real-document corpus and cached parses.

The corpus lives beside the repository (``/work/shared/data/docs``, never copied in). Parsing
the same file in several tests would cost seconds each, so `parsed` caches per session.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.elements import ParsedDocument
from ingest.parse import ParseLimits, parse_file

DOCS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "docs"


def corpus_file(relative: str) -> Path:
    """A file of the shared corpus; the test is skipped when the corpus is not mounted."""
    path = (DOCS / relative).resolve()
    if not DOCS.is_dir():
        pytest.skip(f"shared document corpus not found at {DOCS}")
    assert path.is_file(), f"corpus file missing: {relative}"
    return path


def require_tool(name: str, package: str) -> None:
    """Skip (with the reason) only when an optional system tool is truly absent."""
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")


_CACHE: dict[tuple[str, ParseLimits], ParsedDocument] = {}


@pytest.fixture(scope="session")
def parsed() -> Callable[..., ParsedDocument]:
    """parsed("unstructured/fake.docx") → ParsedDocument, parsed once per session."""

    def parse(relative: str, limits: ParseLimits | None = None) -> ParsedDocument:
        limits = limits or ParseLimits()
        key = (relative, limits)
        if key not in _CACHE:
            _CACHE[key] = parse_file(corpus_file(relative), limits=limits)
        return _CACHE[key]

    return parse


def all_text(document: ParsedDocument) -> str:
    """Every element's text, one per line (tables rendered), for phrase assertions."""
    return "\n".join(element.text for element in document.elements)
