"""Reads a retrieval test set in the BEIR layout, the format public IR benchmarks ship in.

A BEIR folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}`` per line), ``queries.jsonl``
(``{"_id", "text"}``) and ``qrels/<split>.tsv`` (``query-id corpus-id score``, tab-separated,
normally with that header line). Only *judged* queries are kept, as BEIR scores them: a query
that appears in the qrels, even if every judgement is a 0 grade. A qrels file without a header
loses no judgement: the first line counts as a header only when its score is not a number.

Admins point ``appliance eval retrieval --beir DIR`` at their own sets, so a malformed file fails
with the file, the line and what to fix, never with a bare ``KeyError``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import InvalidInput

__all__ = ["BeirSet", "Passage", "load_beir"]


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """Title and text as one string, the way we index them (title first, on its own line)."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class BeirSet:
    """A loaded set: every passage, the judged queries and their graded judgements."""

    name: str
    passages: tuple[Passage, ...]
    queries: dict[str, str]  # judged queries only: id -> text
    qrels: dict[str, dict[str, int]]  # query id -> document id -> grade
    unjudged_queries: int  # queries in queries.jsonl without any judgement (not scored)


def load_beir(folder: Path, *, split: str = "test") -> BeirSet:
    """Load ``folder`` (a BEIR-layout directory); raises :class:`InvalidInput` when malformed."""
    folder = Path(folder)
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for path in (corpus_path, queries_path, qrels_path):
        if not path.is_file():
            raise InvalidInput(
                f"{path} is missing.",
                hint="A BEIR folder needs corpus.jsonl, queries.jsonl and qrels/<split>.tsv.",
            )
    passages = tuple(_passage(row, corpus_path, n) for n, row in _jsonl(corpus_path))
    all_queries = {
        _id(row, queries_path, n): _text(row, queries_path, n) for n, row in _jsonl(queries_path)
    }
    qrels = _read_qrels(qrels_path)
    judged = {q: all_queries[q] for q in qrels if q in all_queries}
    return BeirSet(
        name=folder.name,
        passages=passages,
        queries=judged,
        qrels={q: qrels[q] for q in judged},
        unjudged_queries=len(all_queries) - len(judged),
    )


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise _bad(path, n, f"is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise _bad(path, n, "is not a JSON object")
            yield n, row


def _passage(row: dict[str, Any], path: Path, n: int) -> Passage:
    title = row.get("title") or ""
    if not isinstance(title, str):
        raise _bad(path, n, 'has a "title" that is not a string')
    return Passage(id=_id(row, path, n), title=title, text=_text(row, path, n))


def _id(row: dict[str, Any], path: Path, n: int) -> str:
    value = row.get("_id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise _bad(path, n, 'has no "_id" (a non-empty string)')
    return str(value)


def _text(row: dict[str, Any], path: Path, n: int) -> str:
    value = row.get("text")
    if not isinstance(value, str):
        raise _bad(path, n, 'has no "text" string')
    return value


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            if len(fields) != 3:
                raise _bad(
                    path, n, "does not have 3 tab-separated fields (query-id corpus-id score)"
                )
            grade = _grade(fields[2])
            if grade is None:
                if n == 1:
                    continue  # the header line
                raise _bad(path, n, f"has a score {fields[2]!r} that is not a whole number")
            qrels.setdefault(fields[0], {})[fields[1]] = grade
    return qrels


def _grade(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _bad(path: Path, line: int, what: str) -> InvalidInput:
    return InvalidInput(
        f"{path}, line {line} {what}.",
        hint="Fix that line (BEIR layout) and run the command again.",
    )
