"""Lossless splitting of text into sentences, clauses, words and lines (English and Chinese).

Every function returns non-empty pieces whose concatenation is exactly the input: each piece
keeps its trailing whitespace, so a chunker can re-join pieces of one paragraph without
guessing spaces (Chinese has none) and tests can check that nothing was lost.

Sentence ends:

* a newline (a run of blank lines is kept with the piece before it);
* Chinese ``。！？；`` and their half- and full-width forms, with closing quotes/brackets, no
  space needed; ASCII ``.!?;`` right after a Han character count too;
* English ``.!?`` (with closing quotes/brackets) followed by whitespace and then not a
  lower-case letter, unless the word before a single ``.`` is a known abbreviation ("Dr.",
  "e.g."), an initial ("J."), dotted initials ("U.S.") or a list number at the start of a line.

Clause ends (used only for sentences too long for one chunk): ``,;:`` followed by whitespace,
Chinese ``，、：；``, and spaced dashes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "count_tokens_whitespace",
    "guess_language",
    "split_clauses",
    "split_lines",
    "split_sentences",
    "split_words",
]

_CLOSE = "\"')\\]}”’」』）》〉】"
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"

_NEWLINE = re.compile(r"\n\s*")
_ZH_END = re.compile(rf"[。！？；｡．！？；]+[{_CLOSE}]*\s*")
_HAN_ASCII_END = re.compile(rf"(?<=[{_HAN}])[.!?;]+[{_CLOSE}]*\s*")
_EN_END = re.compile(rf"[.!?]+[{_CLOSE}]*\s+")
_CLAUSE_END = re.compile(
    rf"[,;:]+[{_CLOSE}]*\s+|[，、：；]+[{_CLOSE}]*\s*|\s+[-–—]{{1,2}}\s+|——\s*"
)
_WORD = re.compile(r"\S+\s*")
_LINE = re.compile(r"[^\n]*\n+|[^\n]+")
_LAST_WORD = re.compile(r"(\S+)$")
_INITIALS = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0003134f"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_HAN_CHAR = re.compile(f"[{_HAN}]")

# Lower-case words that end with "." without ending a sentence. "etc." is left out on purpose:
# it ends sentences as often as not, and a following lower-case word already blocks a split.
_ABBREVIATIONS = """
mr mrs ms dr prof sr jr st mt vs cf al ed eds approx dept est inc ltd co corp jan feb mar apr
jun jul aug sep sept oct nov dec gen gov sen rep rev hon capt col lt sgt ave blvd rd ca
"""
# These are abbreviations only before a number ("No. 5", "Fig. 3"); "I said no. Then" splits.
_NUMBER_ABBREVIATIONS = "no nos vol vols pp p fig figs sec art para ch op"

ABBREVIATIONS: frozenset[str] = frozenset(_ABBREVIATIONS.split())
NUMBER_ABBREVIATIONS: frozenset[str] = frozenset(_NUMBER_ABBREVIATIONS.split())


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (see the module doc for the rules); ``"".join`` gives ``text``."""
    ends = [m.end() for m in _NEWLINE.finditer(text)]
    ends += [m.end() for m in _ZH_END.finditer(text)]
    ends += [m.end() for m in _HAN_ASCII_END.finditer(text)]
    ends += [m.end() for m in _EN_END.finditer(text) if _english_end(text, m.start(), m.end())]
    return _cut(text, ends)


def split_clauses(text: str) -> list[str]:
    """Clauses of one sentence, for sentences too long to keep whole."""
    return _cut(text, (m.end() for m in _CLAUSE_END.finditer(text)))


def split_words(text: str) -> list[str]:
    """Whitespace-separated words, each with its trailing whitespace."""
    return _cut(text, (m.end() for m in _WORD.finditer(text)))


def split_lines(text: str) -> list[str]:
    """Lines (for code and pre-formatted text, where sentence rules do not apply)."""
    return _cut(text, (m.end() for m in _LINE.finditer(text)))


def count_tokens_whitespace(text: str) -> int:
    """A token counter for tests: whitespace-separated words, and each CJK character (CJK has no
    spaces, and real tokenizers give its characters about one token each)."""
    return len(_TOKEN.findall(text))


def guess_language(text: str) -> str | None:
    """``"zh"`` when Han characters are at least a third of the letters, else ``None`` (unknown)."""
    letters = sum(ch.isalpha() for ch in text)
    return "zh" if letters and len(_HAN_CHAR.findall(text)) * 3 >= letters else None


def _english_end(text: str, start: int, end: int) -> bool:
    """Whether the terminator run at ``text[start:end]`` (ending in whitespace) ends a sentence."""
    if end < len(text) and text[end].islower():
        return False
    if text[start] != "." or text[start + 1 : start + 2] == ".":
        return True
    found = _LAST_WORD.search(text, 0, start)
    if found is None:
        return True
    word = found.group(1).lstrip(_CLOSE + "\"'(“‘[{«").lower()
    if word in ABBREVIATIONS or _INITIALS.fullmatch(word):
        return False
    if word in NUMBER_ABBREVIATIONS and text[end : end + 1].isdigit():
        return False
    return not (word.isdigit() and len(word) <= 3 and _starts_line(text, found.start()))


def _starts_line(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" \t")
    return not before or before.endswith("\n")


def _cut(text: str, ends: Iterable[int]) -> list[str]:
    pieces: list[str] = []
    last = 0
    for end in sorted(set(ends)):
        if last < end < len(text):
            pieces.append(text[last:end])
            last = end
    if last < len(text):
        pieces.append(text[last:])
    return pieces
