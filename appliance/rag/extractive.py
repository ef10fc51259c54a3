"""Extractive answers: the best sentences of the best passages, each with its citation.

Used when no model is unlocked (or a model was refused). No model and no I/O: passages are cut
into units, each unit is scored against the question, the best few are shown in document order.

* **Units**: each line of a passage goes through the same filter as generated text
  (:func:`~appliance.rag.cite.validate`, with no sources: a document's own ``[2]`` or
  ``【1】`` is not a citation of ours and goes, links become their text, tags are stripped,
  addresses are defanged), so the only citations are the ones added here. Prose is split into
  sentences (English ``.!?`` and Chinese ``。！？；``, via
  :func:`ingest.textsplit.split_sentences`); each list item and each table row is one unit, a
  table row shown with its header (``City: Oslo; Rate (EUR): 145``), header and separator rows
  are not units of their own.
* **Score**: the question's terms (:func:`ingest.sparse.analyze`: stemmed English words, jieba
  words for Chinese) found in the unit, a word counted once even when jieba also yields its
  parts, each weighted by its BM25 idf among all units of these
  passages (rarer terms count more), times a small bonus for the passage's rank
  (``1 + RANK_BONUS / (rank + 1)``); units under :data:`MIN_RELATIVE` of the best score are
  left out (a question's common word alone does not make a unit worth showing).
* **Choice**: the ``sentences`` best units with a positive score, at most
  :data:`PER_PASSAGE` from one passage, none a near-duplicate of a chosen one (term sets with
  Jaccard similarity >= :data:`NEAR_DUPLICATE`; neighbouring chunks overlap), then ordered by
  source and position. Each ends with its citation, ``... [n].`` / ``...[n]。``.
* **Not found**: when no unit shares a term with the question, the answer is
  :data:`~appliance.rag.prompt.NOT_FOUND_TEXT` in the question's language.

The text carries no "extractive" label: the engine and each channel add it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ingest.sparse import analyze, idf
from ingest.textsplit import split_sentences

from .cite import validate
from .prompt import NOT_FOUND_TEXT
from .retrieve import Passage

__all__ = [
    "MIN_RELATIVE",
    "NEAR_DUPLICATE",
    "PER_PASSAGE",
    "RANK_BONUS",
    "Extractive",
    "extractive_answer",
]

PER_PASSAGE = 2
NEAR_DUPLICATE = 0.8
RANK_BONUS = 0.1
MIN_RELATIVE = 0.5  # units scoring under this share of the best unit are left out
MAX_UNIT_CHARS = 400

_TABLE_ROW = re.compile(r"^\s*\|(.*)\|\s*$")
_TABLE_SEPARATOR = re.compile(r"^[\s|:\-]+$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•·▪●]|\d{1,3}[.)、]|[（(]\d{1,3}[)）])\s+")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_TRAILING_PUNCT = re.compile(r"[\s.!?;:。！？；：…]*$")
_CJK_END = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]$")


@dataclass(frozen=True)
class Extractive:
    text: str
    cited: list[int]  # source numbers (1-based, as in ``sources``), in order of appearance
    not_found: bool


@dataclass(frozen=True)
class _Unit:
    source: int  # 0-based index into sources
    position: int
    text: str
    kind: str  # "sentence" | "item" (list item or table row)
    terms: frozenset[str]


def extractive_answer(
    question: str, sources: Sequence[Passage], *, sentences: int, language: str
) -> Extractive:
    """The best ``sentences`` units of ``sources`` for ``question`` (see the module doc)."""
    wanted = set(analyze(question))
    units = [u for i, p in enumerate(sources) for u in _units(i, p.text)]
    scored = _score(units, wanted)
    chosen = _choose(scored, sentences)
    if not chosen:
        return Extractive(NOT_FOUND_TEXT.get(language, NOT_FOUND_TEXT["en"]), [], True)
    chosen.sort(key=lambda u: (u.source, u.position))
    cited = list(dict.fromkeys(u.source + 1 for u in chosen))
    return Extractive(_render(chosen), cited, False)


# --- units ----------------------------------------------------------------------------------


def _units(source: int, text: str) -> list[_Unit]:
    pieces: list[tuple[str, str]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        line = _neutral(line)
        row = _TABLE_ROW.match(line)
        if row is None:
            header = None
            pieces.extend(_line_units(line))
        elif _TABLE_SEPARATOR.fullmatch(row.group(1)):
            continue
        elif header is None:
            header = _cells(row.group(1))
        else:
            pieces.append(("item", _row_text(header, _cells(row.group(1)))))
    units: list[_Unit] = []
    for kind, piece in pieces:
        terms = frozenset(analyze(piece))
        if terms:
            units.append(_Unit(source, len(units), _shorten(piece), kind, terms))
    return units


def _neutral(line: str) -> str:
    """``line`` as the citation filter shows generated text that cites nothing: quoted
    markers, links, tags and addresses cannot pass for the engine's citations or live links."""
    return validate(line, 0)[0]


def _line_units(line: str) -> list[tuple[str, str]]:
    item = _LIST_ITEM.match(line)
    if item is not None:
        return [("item", line[item.end() :].strip())]
    return [("sentence", s.strip()) for s in split_sentences(line) if s.strip()]


def _cells(row: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(row)]


def _row_text(header: list[str], cells: list[str]) -> str:
    pairs = [(h, c) for h, c in zip(header, cells, strict=False) if c]
    return "; ".join(f"{h}: {c}" if h else c for h, c in pairs)


def _shorten(text: str) -> str:
    if len(text) <= MAX_UNIT_CHARS:
        return text
    cut = text[:MAX_UNIT_CHARS]
    space = cut.rfind(" ")
    return (cut[:space] if space > MAX_UNIT_CHARS // 2 else cut).rstrip() + "…"


# --- scoring and choice ---------------------------------------------------------------------


def _score(units: list[_Unit], wanted: set[str]) -> list[tuple[float, _Unit]]:
    df: dict[str, int] = {}
    for unit in units:
        for term in unit.terms & wanted:
            df[term] = df.get(term, 0) + 1
    scored = []
    for unit in units:
        overlap = sum(idf(df[t], len(units)) for t in _longest_terms(unit.terms & wanted))
        if overlap > 0:
            scored.append((overlap * (1.0 + RANK_BONUS / (unit.source + 1)), unit))
    scored.sort(key=lambda su: (-su[0], su[1].source, su[1].position))
    return [su for su in scored if su[0] >= MIN_RELATIVE * scored[0][0]]


def _longest_terms(terms: frozenset[str]) -> set[str]:
    """``terms`` without those inside a longer one (jieba's search mode yields 泡泡, 战士 and
    泡泡战士 for one word; the word should count once)."""
    return {t for t in terms if not any(t != o and t in o for o in terms)}


def _choose(scored: list[tuple[float, _Unit]], limit: int) -> list[_Unit]:
    chosen: list[_Unit] = []
    per_source: dict[int, int] = {}
    for _, unit in scored:
        if len(chosen) >= limit:
            break
        if per_source.get(unit.source, 0) >= PER_PASSAGE:
            continue
        if any(_jaccard(unit.terms, c.terms) >= NEAR_DUPLICATE for c in chosen):
            continue
        chosen.append(unit)
        per_source[unit.source] = per_source.get(unit.source, 0) + 1
    return chosen


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b)


# --- rendering ------------------------------------------------------------------------------


def _render(units: list[_Unit]) -> str:
    out = ""
    for unit in units:
        line = _with_citation(unit.text, unit.source + 1)
        if unit.kind == "item":
            out += ("\n" if out and not out.endswith("\n") else "") + "- " + line + "\n"
        elif not out or out.endswith("\n") or _CJK_END.search(out):
            out += line
        else:
            out += " " + line
    return out.strip()


def _with_citation(text: str, n: int) -> str:
    """``"Revenue rose."`` -> ``"Revenue rose [1]."``; ``"收入增长。"`` -> ``"收入增长[1]。"``."""
    punct = _TRAILING_PUNCT.search(text)
    cut = punct.start() if punct else len(text)
    body, tail = text[:cut], text[cut:].strip()
    space = "" if _CJK_END.search(body) else " "
    return f"{body}{space}[{n}]{tail}"
