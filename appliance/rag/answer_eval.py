"""`appliance eval answers`: how right the appliance's answers are, on a question-answering set.

The set (:mod:`appliance.rag.qa_set`) is ingested into a scratch appliance
(:mod:`appliance.rag.eval_home`), then every question is asked as a staff user through the real
:class:`~appliance.rag.answer.AnswerEngine`: retrieval over the user's groups, the prompt, the
model (served encrypted under a policy) and the citation filter, or the extractive mode. Each
mode gets, over the sampled questions (:mod:`appliance.rag.answer_metrics` for the
definitions):

* ``em``, ``f1``: mean over answerable questions of the best score against the gold answers
  (an abstention scores as the empty answer);
* ``citation_precision``: of all sources cited in answers to answerable questions, the share
  that is the gold passage or holds a gold answer (None when nothing was cited);
  ``right_citation_rate``: the share of answerable questions whose answer cites such a source;
* ``abstention_accuracy``: the share of unanswerable questions answered with the engine's
  structured not-found outcome (``Answer.not_found``; None without unanswerable questions);
  ``false_abstention``: the share of answerable questions that got it;
  ``gold_shown_rate``: the share of answerable questions where a source offered to the model
  was the gold passage or held a gold answer (what retrieval made possible), and
  ``false_abstention_gold_shown``: the false abstentions among those (the model's own share);
* ``p50_s``, ``p95_s``: latency of one whole answer (retrieval, prompt, generation, filter);
  ``tokens_per_s``: generated tokens after the first per second of decoding, over all answers
  (None in extractive mode); ``first_token_p50_s``: median time to the first token.

A question the engine refuses as input (too long, say) is counted under ``errors`` and scores
0; any other refusal (the model locked, the role refused) stops the run: the setup is wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import Settings
from ..errors import InvalidInput
from .answer_metrics import QuestionScore, score_answer
from .eval_home import EvalWorld, eval_world
from .lang import detect_language
from .metrics import summarise
from .qa_set import QaQuestion, Split, load_qa_set, sample_questions

__all__ = ["MODES", "AnswerRecord", "evaluate_answers", "run_mode", "summarise_mode"]

EvalMode = Literal["generative", "extractive"]
MODES: tuple[EvalMode, ...] = ("generative", "extractive")
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class AnswerRecord:
    """One asked question: its score and what the engine measured."""

    question: QaQuestion
    score: QuestionScore
    seconds: float
    tokens: int = 0
    decode_s: float = 0.0
    first_token_s: float | None = None
    error: str = ""


def evaluate_answers(
    folder: Path,
    *,
    modes: Sequence[EvalMode],
    model_source: Path | None,
    base: Settings | None,
    limit: int | None = None,
    seed: int = 0,
    split: Split = "all",
    embedder: Any = None,
    workdir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Load, sample, build the scratch appliance once, run each mode; the report as a dict."""
    data = load_qa_set(folder).only(split)
    if not data.questions:
        raise InvalidInput(
            f"{folder} has no questions in the {split!r} split.",
            hint="Use --split all for a set without the tuning articles.",
        )
    questions = sample_questions(data.questions, limit, seed)
    source = model_source if "generative" in modes else None
    index_progress = _stage(progress, "indexing")
    report: dict[str, Any] = {
        "dataset": data.name,
        "split": split,
        "seed": seed,
        "limit": limit,
        "counts": _counts(questions, len(data.passages)),
    }
    with eval_world(
        data.passages,
        base=base,
        model_source=source,
        embedder=embedder,
        workdir=workdir,
        progress=index_progress,
    ) as world:
        report["counts"]["passages_not_indexed"] = world.index_failures
        report["model"] = str(model_source) if source is not None else None
        report["timings_s"] = {k: round(v, 1) for k, v in world.timings.items()}
        for mode in modes:
            records = run_mode(world, questions, mode, progress=_stage(progress, mode))
            report[mode] = summarise_mode(records, mode)
    return report


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _counts(questions: Sequence[QaQuestion], passages: int) -> dict[str, int]:
    impossible = sum(1 for q in questions if q.impossible)
    return {
        "questions": len(questions),
        "answerable": len(questions) - impossible,
        "unanswerable": impossible,
        "passages": passages,
    }


def run_mode(
    world: EvalWorld,
    questions: Sequence[QaQuestion],
    mode: EvalMode,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[AnswerRecord]:
    """Ask every question in ``mode`` as the scratch staff user; one record per question."""
    records = []
    for i, question in enumerate(questions, 1):
        records.append(_ask(world, question, mode))
        if progress is not None:
            progress(i, len(questions))
    return records


def _ask(world: EvalWorld, question: QaQuestion, mode: EvalMode) -> AnswerRecord:
    language = "zh" if detect_language(question.text) == "zh" else "en"
    t0 = time.perf_counter()
    try:
        answer = world.engine.answer(
            question.text,
            user=world.user,
            channel="eval",
            extractive=mode == "extractive",
            require_model=mode == "generative",
        )
    except InvalidInput as exc:
        failed = score_answer(
            text="",
            not_found=False,
            cited_sources=(),
            golds=question.answers,
            gold_docs=question.gold_docs,
            impossible=question.impossible,
            language=language,
        )
        return AnswerRecord(question, failed, time.perf_counter() - t0, error=exc.code)
    seconds = time.perf_counter() - t0
    by_number = {s.n: s for s in answer.sources}
    cited = [(by_number[n].document, by_number[n].text) for n in answer.cited if n in by_number]
    score = score_answer(
        text=answer.text,
        not_found=answer.not_found,
        cited_sources=cited,
        shown_sources=[(s.document, s.text) for s in answer.sources],
        golds=question.answers,
        gold_docs=question.gold_docs,
        impossible=question.impossible,
        language=language,
    )
    first = None if answer.first_token_ms is None else answer.first_token_ms / 1e3
    decode = max(answer.generation_ms / 1e3 - (first or 0.0), 0.0)
    return AnswerRecord(question, score, seconds, answer.tokens, decode, first)


def summarise_mode(records: Sequence[AnswerRecord], mode: EvalMode) -> dict[str, Any]:
    """The metric table of one mode (see the module doc)."""
    answerable = [r for r in records if not r.question.impossible]
    unanswerable = [r for r in records if r.question.impossible]
    cited = sum(r.score.cited for r in answerable)
    right = sum(r.score.cited_right for r in answerable)
    latencies = summarise([r.seconds for r in records]) if records else {}
    out: dict[str, Any] = {
        "em": _mean([r.score.em or 0.0 for r in answerable]),
        "f1": _mean([r.score.f1 or 0.0 for r in answerable]),
        "citation_precision": _ratio(right, cited),
        "right_citation_rate": _mean([float(r.score.cited_right > 0) for r in answerable]),
        "abstention_accuracy": _mean([float(r.score.abstained) for r in unanswerable]),
        "false_abstention": _mean([float(r.score.abstained) for r in answerable]),
        "gold_shown_rate": _mean([float(bool(r.score.gold_shown)) for r in answerable]),
        "false_abstention_gold_shown": _mean(
            [float(r.score.abstained) for r in answerable if r.score.gold_shown]
        ),
        "p50_s": _round(latencies.get("p50_ms"), 3),
        "p95_s": _round(latencies.get("p95_ms"), 3),
        "tokens_per_s": None,
        "errors": sum(1 for r in records if r.error),
    }
    if mode == "generative":
        decoded = sum(max(r.tokens - 1, 0) for r in records)
        decode_s = sum(r.decode_s for r in records if r.tokens > 1)
        firsts = [r.first_token_s for r in records if r.first_token_s is not None]
        out["tokens_per_s"] = round(decoded / decode_s, 2) if decode_s > 0 else None
        out["first_token_p50_s"] = _round(summarise(firsts)["p50_ms"] if firsts else None, 3)
        out["mean_tokens"] = _mean([float(r.tokens) for r in records])
    return out


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value: float | None, digits: int) -> float | None:
    # latencies are summarised in the unit they were given (seconds), despite the key names
    return None if value is None else round(value, digits)
