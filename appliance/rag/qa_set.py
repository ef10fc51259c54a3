"""A question-answering set in the BEIR layout: passages, questions with gold answers, qrels.

The layout of :mod:`appliance.rag.beir`, with each ``queries.jsonl`` row carrying
``metadata.answers`` (the gold answer strings) and optionally ``metadata.impossible`` (true: the
corpus does not hold the answer) and ``metadata.doc`` (the passage the question was written on).
Unlike a retrieval set, every question is kept, judged or not: an unanswerable one has no qrels
row by definition.

A row without ``metadata.answers`` takes them from a SQuAD-format JSON file in the same folder
(``{"data": [{"paragraphs": [{"qas": [{"id", "answers": [{"text"}]}]}]}]}``, as the CMRC 2018
files ship), matched by question id; the files themselves are never changed.

Refused with the file, the line and what to fix (never scored silently wrong): an answerable
question without answers, answers that are not non-empty strings, an unanswerable question with
answers or with a relevant qrels row, a qrels row naming a passage the corpus lacks.

**Split** (:data:`TUNE_ARTICLES`): the answer engine was tuned on questions about these articles
of ``squad2-train-subset``; every other article is *held out* and is what the published numbers
report. The split is by article (passage title), fixed here and never changed after measuring:
Beyoncé, IPod, Spectre (2015 film) (one of the two articles with unanswerable questions) and
2008 Sichuan earthquake are for tuning; Frédéric Chopin, Sino-Tibetan relations during the Ming
dynasty, The Legend of Zelda: Twilight Princess (the other article with unanswerable questions),
New York City and To Kill a Mockingbird are held out. Sets without these titles (CMRC 2018, a
customer's own) are held out entirely.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from appliance.errors import InvalidInput

from .beir import Passage, _bad, _id, _jsonl, _passage, _read_qrels, _text

__all__ = [
    "TUNE_ARTICLES",
    "QaQuestion",
    "QaSet",
    "Split",
    "article_split",
    "load_qa_set",
    "sample_questions",
]

Split = Literal["all", "tune", "held-out"]
TUNE_ARTICLES = frozenset(
    {"Beyoncé", "IPod", "Spectre (2015 film)", "2008 Sichuan earthquake"}
)  # fmt: skip


def article_split(title: str) -> str:
    """``"tune"`` or ``"held-out"`` for an article title, in the BEIR corpus's form (spaces) or
    SQuAD's (``2008_Sichuan_earthquake``, as ``train.jsonl`` names it)."""
    return "tune" if title.replace("_", " ") in TUNE_ARTICLES else "held-out"


@dataclass(frozen=True)
class QaQuestion:
    id: str
    text: str
    answers: tuple[str, ...]  # empty for an unanswerable question
    impossible: bool
    gold_docs: frozenset[str]  # passages judged relevant (grade > 0)
    article: str  # title of the passage it was written on ("" when unknown)

    @property
    def split(self) -> str:
        return article_split(self.article)


@dataclass(frozen=True)
class QaSet:
    name: str
    passages: tuple[Passage, ...]
    questions: tuple[QaQuestion, ...]  # in file order

    def only(self, split: Split) -> QaSet:
        """The questions of one split (the passages stay: they are the search space)."""
        if split == "all":
            return self
        kept = tuple(q for q in self.questions if q.split == split)
        return QaSet(self.name, self.passages, kept)


def load_qa_set(folder: Path, *, split: str = "test") -> QaSet:
    """Load ``folder``; raises :class:`InvalidInput` naming the file and line when malformed."""
    folder = Path(folder)
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for path in (corpus_path, queries_path):
        if not path.is_file():
            raise InvalidInput(
                f"{path} is missing.",
                hint="A question-answering set needs corpus.jsonl, queries.jsonl and "
                "qrels/<split>.tsv (BEIR layout).",
            )
    passages = tuple(_passage(row, corpus_path, n) for n, row in _jsonl(corpus_path))
    titles = {p.id: p.title for p in passages}
    qrels = _read_qrels(qrels_path) if qrels_path.is_file() else {}
    for qid, judged in qrels.items():
        missing = sorted(d for d in judged if d not in titles)
        if missing:
            raise InvalidInput(
                f"{qrels_path} judges query {qid} against passage {missing[0]}, which "
                f"{corpus_path.name} does not hold.",
                hint="Fix the qrels row or add the passage to the corpus.",
            )
    fallback = _SquadAnswers(folder)
    questions = tuple(
        _question(row, n, queries_path, qrels, titles, fallback) for n, row in _jsonl(queries_path)
    )
    if not questions:
        raise InvalidInput(f"{queries_path} holds no questions.", hint="Add questions to it.")
    return QaSet(_set_name(folder), passages, questions)


def _set_name(folder: Path) -> str:
    """The folder's name; a folder called ``beir`` is the BEIR view of its parent's set."""
    resolved = folder.resolve()
    return resolved.parent.name if resolved.name == "beir" else resolved.name


def _question(
    row: dict[str, Any],
    n: int,
    path: Path,
    qrels: dict[str, dict[str, int]],
    titles: dict[str, str],
    fallback: _SquadAnswers,
) -> QaQuestion:
    qid, text = _id(row, path, n), _text(row, path, n)
    meta = row.get("metadata") or {}
    if not isinstance(meta, dict):
        raise _bad(path, n, 'has a "metadata" that is not an object')
    impossible = meta.get("impossible", False)
    if not isinstance(impossible, bool):
        raise _bad(path, n, 'has a "metadata.impossible" that is not true or false')
    answers = meta.get("answers")
    if answers is None and not impossible:
        answers = fallback.get(qid)
    answers = _answers(answers if answers is not None else [], path, n)
    gold = frozenset(d for d, grade in qrels.get(qid, {}).items() if grade > 0)
    if impossible and answers:
        raise _bad(path, n, "is marked impossible but has gold answers")
    if impossible and gold:
        raise _bad(path, n, f"is marked impossible but qrels judge passage {min(gold)} relevant")
    if not impossible and not answers:
        raise _bad(
            path,
            n,
            'has no gold answers ("metadata.answers") and is not marked "metadata.impossible"',
        )
    doc = meta.get("doc")
    source = (
        str(doc) if isinstance(doc, str | int) and str(doc) in titles else min(gold, default="")
    )
    return QaQuestion(qid, text, answers, impossible, gold, titles.get(source, ""))


def _answers(value: Any, path: Path, n: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) and a.strip() for a in value):
        raise _bad(path, n, 'has "metadata.answers" that is not a list of non-empty strings')
    return tuple(dict.fromkeys(value))


class _SquadAnswers:
    """Gold answers by question id from the SQuAD-format JSON files of a folder (read once,
    only when a question needs them)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._by_id: dict[str, list[str]] | None = None

    def get(self, qid: str) -> list[str] | None:
        if self._by_id is None:
            self._by_id = {}
            for path in sorted(self.folder.glob("*.json")):
                self._by_id.update(_squad_answers(path))
        return self._by_id.get(qid)


def _squad_answers(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # not an answers file; the question then reports its missing answers
    found: dict[str, list[str]] = {}
    articles = data.get("data") if isinstance(data, dict) else None
    for article in articles if isinstance(articles, list) else ():
        for paragraph in article.get("paragraphs", ()) if isinstance(article, dict) else ():
            for qa in paragraph.get("qas", ()) if isinstance(paragraph, dict) else ():
                if isinstance(qa, dict) and "id" in qa and isinstance(qa.get("answers"), list):
                    texts = [a.get("text") for a in qa["answers"] if isinstance(a, dict)]
                    found[str(qa["id"])] = [t for t in texts if isinstance(t, str)]
    return found


def sample_questions(
    questions: tuple[QaQuestion, ...], limit: int | None, seed: int
) -> tuple[QaQuestion, ...]:
    """At most ``limit`` questions, drawn with ``seed``; answerable and unanswerable questions
    keep their shares (rounded); the result is in file order. Same input, same output."""
    if limit is None or limit >= len(questions):
        return questions
    if limit < 1:
        raise InvalidInput("--limit must be at least 1.")
    rng = random.Random(seed)
    impossible = [i for i, q in enumerate(questions) if q.impossible]
    answerable = [i for i, q in enumerate(questions) if not q.impossible]
    take_impossible = round(limit * len(impossible) / len(questions))
    chosen = rng.sample(impossible, take_impossible) + rng.sample(
        answerable, limit - take_impossible
    )
    return tuple(questions[i] for i in sorted(chosen))
