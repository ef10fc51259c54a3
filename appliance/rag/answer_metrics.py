"""Answer-quality metrics: exact match and F1 as the public reading-comprehension benchmarks
define them, citation precision and abstention. Pure functions, no model and no I/O.

**English** (SQuAD, ``evaluate-v2.0.py``): lower-case, drop ASCII punctuation
(``string.punctuation``), drop the articles *a*, *an*, *the*, collapse whitespace; EM is
equality of the normalised strings; F1 is the harmonic mean of precision and recall of the
bag of whitespace tokens shared by prediction and gold. Two empty token lists agree (F1 1).

**Chinese** (CMRC 2018, ``cmrc2018_evaluate.py``): the text is lower-cased and stripped, then
*segmented*: every Chinese character (``\\u4e00``–``\\u9fa5``) and every mark of the script's
punctuation list :data:`CMRC_PUNCTUATION` is a segment of its own, and the runs between them
are split into words (the script uses NLTK's word tokenizer there; we split runs into words,
numbers and single punctuation marks, which agrees with it on words and numbers). For F1 the
punctuation segments are removed, and precision and recall come from the *longest common
substring* of the two segment lists (contiguous, not a bag); no common segment gives 0. EM
compares the strings with the punctuation marks removed.

The score of a prediction is the maximum over the gold answers. Which definition applies is
decided per question by its language (:func:`appliance.rag.lang.detect_language`).

Before scoring, :func:`answer_text` strips what the engine adds around an answer: citation
markers (``[1]``, ``【2】``), the extractive label, list bullets and a leading "Answer:".
"""

from __future__ import annotations

import collections
import re
import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .answer_types import EXTRACTIVE_LABEL

__all__ = [
    "CMRC_PUNCTUATION",
    "QuestionScore",
    "answer_text",
    "cmrc_em",
    "cmrc_f1",
    "cmrc_segments",
    "contains_answer",
    "exact_match",
    "f1_score",
    "score_answer",
    "squad_em",
    "squad_f1",
    "squad_normalize",
]

#: The punctuation list of ``cmrc2018_evaluate.py`` (``sp_char``), in its order.
CMRC_PUNCTUATION: tuple[str, ...] = (
    "-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=",
    "，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、",
    "「", "」", "（", "）", "－", "～", "『", "』",
)  # fmt: skip
_CMRC_PUNCT_CHARS = frozenset(CMRC_PUNCTUATION)  # "……" is two characters: never one char
_CMRC_HAN = re.compile(r"[\u4e00-\u9fa5]")
_LATIN_RUN_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:'[^\W\d_]+)?|[^\w\s]|_", re.UNICODE)
_SQUAD_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)

_CITATION = re.compile(r"[ \t]*[\[【［]\s*\d{1,4}(?:\s*[,，、\-–]\s*\d{1,4})*\s*[\]】］]")
_LEAD_LABEL = re.compile(r"^\s*(?:answer|final answer|答案|回答)\s*[:：]\s*", re.IGNORECASE)
_BULLET = re.compile(r"^\s*[-*•]\s+", re.MULTILINE)
_LABELS = tuple(EXTRACTIVE_LABEL.values())


# --- what is scored -------------------------------------------------------------------------


def answer_text(text: str) -> str:
    """``text`` without citation markers, the extractive label, bullets or an "Answer:" lead."""
    for label in _LABELS:
        text = text.replace(label, " ")
    text = _CITATION.sub("", text)
    text = _BULLET.sub("", text)
    text = _LEAD_LABEL.sub("", text)
    return " ".join(text.split())


# --- English: SQuAD ---------------------------------------------------------------------------


def squad_normalize(text: str) -> str:
    """Lower-case, no ASCII punctuation, no articles, single spaces (SQuAD's normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_em(prediction: str, gold: str) -> float:
    return float(squad_normalize(prediction) == squad_normalize(gold))


def squad_f1(prediction: str, gold: str) -> float:
    pred, ref = squad_normalize(prediction).split(), squad_normalize(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


# --- Chinese: CMRC 2018 -----------------------------------------------------------------------


def cmrc_segments(text: str, *, drop_punctuation: bool = False) -> list[str]:
    """CMRC 2018's ``mixed_segmentation``: one segment per Chinese character or listed
    punctuation mark, the runs between them split into words (see the module doc)."""
    segments: list[str] = []
    run = ""
    for ch in text.lower().strip():
        if drop_punctuation and ch in _CMRC_PUNCT_CHARS:
            continue
        if _CMRC_HAN.match(ch) or ch in _CMRC_PUNCT_CHARS:
            segments.extend(_LATIN_RUN_TOKEN.findall(run))
            run = ""
            segments.append(ch)
        else:
            run += ch
    segments.extend(_LATIN_RUN_TOKEN.findall(run))
    return segments


def _cmrc_strip(text: str) -> str:
    return "".join(ch for ch in text.lower().strip() if ch not in _CMRC_PUNCT_CHARS)


def cmrc_em(prediction: str, gold: str) -> float:
    return float(_cmrc_strip(prediction) == _cmrc_strip(gold))


def cmrc_f1(prediction: str, gold: str) -> float:
    ref = cmrc_segments(gold, drop_punctuation=True)
    pred = cmrc_segments(prediction, drop_punctuation=True)
    common = _longest_common_run(ref, pred)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common contiguous run of ``a`` and ``b`` (CMRC's ``find_lcs``)."""
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


# --- per question -----------------------------------------------------------------------------


def exact_match(prediction: str, golds: Iterable[str], language: str) -> float:
    """Best EM over ``golds`` (CMRC rules for ``language == "zh"``, else SQuAD)."""
    em = cmrc_em if language == "zh" else squad_em
    return max((em(prediction, g) for g in golds), default=0.0)


def f1_score(prediction: str, golds: Iterable[str], language: str) -> float:
    """Best F1 over ``golds`` (CMRC rules for ``language == "zh"``, else SQuAD)."""
    f1 = cmrc_f1 if language == "zh" else squad_f1
    return max((f1(prediction, g) for g in golds), default=0.0)


def contains_answer(passage: str, golds: Iterable[str], language: str) -> bool:
    """Whether ``passage`` holds one of ``golds`` after the language's normalisation."""
    if language == "zh":
        text = _cmrc_strip(unicodedata.normalize("NFKC", passage))
        return any(
            g.strip() and _cmrc_strip(unicodedata.normalize("NFKC", g)) in text for g in golds
        )
    text = f" {squad_normalize(passage)} "
    return any(squad_normalize(g) and f" {squad_normalize(g)} " in text for g in golds)


@dataclass(frozen=True)
class QuestionScore:
    """How one answer scored; ``em``/``f1`` are None for a question without an answer."""

    em: float | None
    f1: float | None
    abstained: bool
    cited: int  # sources the answer cited
    cited_right: int  # of those, the gold passage or one holding a gold answer
    gold_shown: bool | None = None  # whether such a source was among those offered to the model


def score_answer(
    *,
    text: str,
    not_found: bool,
    cited_sources: Sequence[tuple[str, str]],
    golds: Sequence[str],
    shown_sources: Sequence[tuple[str, str]] = (),
    gold_docs: Iterable[str],
    impossible: bool,
    language: str,
) -> QuestionScore:
    """Score one answer. ``cited_sources`` are (document id, passage text) of what it cited,
    ``shown_sources`` of every source offered to the model.

    An abstention (the engine's structured not-found outcome) is scored as the empty answer;
    its citations, and those of any answer to an unanswerable question, are not counted.
    """
    if impossible:
        return QuestionScore(None, None, not_found, 0, 0)
    prediction = "" if not_found else answer_text(text)
    docs = set(gold_docs)
    cited = [] if not_found else list(cited_sources)

    def is_gold(doc: str, body: str) -> bool:
        return doc in docs or contains_answer(body, golds, language)

    right = sum(1 for doc, body in cited if is_gold(doc, body))
    return QuestionScore(
        em=exact_match(prediction, golds, language),
        f1=f1_score(prediction, golds, language),
        abstained=not_found,
        cited=len(cited),
        cited_right=right,
        gold_shown=any(is_gold(doc, body) for doc, body in shown_sources),
    )
