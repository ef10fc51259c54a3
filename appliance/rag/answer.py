"""The answer engine: retrieve what the user may see → prompt → stream → validate citations.

Generative mode needs an unlocked model the caller's role may use; without one (or when the
request does not demand a model) the engine answers in the explicit *extractive* mode: the best
sentences of the best passages, cited, and labelled as such in every channel. Every question is
audited (its text as an HMAC by default) whether it was answered, not found or refused.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ingest.errors import StoreUnavailable

from ..errors import Cancelled, Forbidden, InvalidInput, KnowledgeUnavailable, ModelUnavailable
from .answer_types import Answer, AnswerEvent, Mode, Source
from .attribute import supporting_source
from .cite import CitationFilter
from .extractive import extractive_answer
from .lang import detect_language
from .prompt import NOT_FOUND_TEXT, UNSUPPORTED_NOTE, build_prompt, is_not_found
from .retrieve import Passage

if TYPE_CHECKING:
    from secure.home import UnlockedHome

    from ..serve.models import ModelManager
    from ..users import User
    from .retrieve import Retriever

_log = logging.getLogger(__name__)
MAX_QUESTION_CHARS = 4000
Observer = Callable[["Answer", "User", str, str], None]


@dataclass
class EngineOptions:
    passages: int = 6
    min_score: float = 0.0
    extractive_sentences: int = 3
    history_turns: int = 4
    max_new_tokens: int = 512
    context_tokens: int = 0
    temperature: float = 0.0
    request_timeout_s: float = 180.0
    question_logging: str = "hmac"
    threads: int | None = None  # torch threads for generation (None: torch's default)
    best_source_last: bool = True  # write the best passage right before the question
    cite_support: bool = True  # an answer that cites nothing cites the source holding it
    unsupported: str = "keep"  # "flag": an answer nothing supports is marked not found
    stop_repeat_tokens: int = 20  # stop a generation looping over this many tokens (0: never)


@dataclass
class _Turn:
    """Mutable state of one question while it is being answered."""

    question: str
    user: User
    channel: str
    language: str
    qid: str = field(default_factory=lambda: secrets.token_hex(8))
    started: float = field(default_factory=time.perf_counter)


class AnswerEngine:
    def __init__(
        self,
        *,
        retriever: Retriever,
        models: ModelManager | None,
        home: UnlockedHome,
        options: EngineOptions,
        groups_of: Callable[[User], list[str]],
        clock: Callable[[], float] = time.time,
        observers: list[Observer] | None = None,
    ) -> None:
        self.retriever, self.models, self.home = retriever, models, home
        self.options, self.groups_of, self.clock = options, groups_of, clock
        self.observers: list[Observer] = observers if observers is not None else []

    def mode(self) -> tuple[Mode, str | None, str]:
        """How a question would be answered now: ("generative", model, "") or extractive."""
        model = self.models.default_model() if self.models else None
        if model is not None:
            return "generative", model, ""
        reason = self.models.why_unavailable(None).message if self.models else "no model"
        return "extractive", None, reason

    def answer(self, question: str, **kwargs: Any) -> Answer:
        for event in self.stream(question, **kwargs):
            if event.answer is not None:
                return event.answer
        raise Cancelled("The answer was not completed.")  # pragma: no cover - stream always ends

    def stream(
        self,
        question: str,
        *,
        user: User,
        history: Sequence[tuple[str, str]] = (),
        model: str | None = None,
        require_model: bool = False,
        max_tokens: int | None = None,
        cancel: threading.Event | None = None,
        channel: str = "api",
        extractive: bool = False,
    ) -> Iterator[AnswerEvent]:
        question = _check_question(question)
        turn = _Turn(question, user, channel, detect_language(question))
        outcome = "error"
        answer: Answer | None = None
        try:
            lease_cm = self._lease(turn, model, require_model, extractive)
            with lease_cm as lease:
                passages, retrieval_ms = self._retrieve(turn)
                sources = tuple(Source.from_passage(i, p) for i, p in enumerate(passages, 1))
                if lease is None:
                    fallback = "extractive mode requested" if extractive else ""
                    fallback = fallback or self._fallback_reason(model)
                    answer = self._extractive(turn, passages, sources, retrieval_ms, fallback)
                    yield AnswerEvent("sources", sources=sources)
                    yield AnswerEvent("delta", text=answer.text)
                else:
                    gen = self._generative(turn, lease, passages, history, max_tokens, cancel)
                    answer = yield from gen
                    answer.retrieval_ms = retrieval_ms
            outcome = "not_found" if answer.not_found else "answered"
        except (Forbidden, ModelUnavailable) as exc:
            outcome = "refused"
            self._audit(turn, outcome, None, reason=exc.code)
            self._notify(turn, None, outcome)
            raise
        except (GeneratorExit, Cancelled):
            outcome = "cancelled"
            raise
        finally:
            if outcome != "refused":  # recorded before "done": a consumer may stop right there
                self._audit(turn, outcome, answer)
                self._notify(turn, answer, outcome)
        yield AnswerEvent("done", answer=answer)

    # ----- steps ----------------------------------------------------------------------------
    def _lease(self, turn: _Turn, model: str | None, require_model: bool, extractive: bool) -> Any:
        import contextlib

        if extractive:
            return contextlib.nullcontext(None)
        if self.models is None:
            if require_model or model:
                raise ModelUnavailable("This appliance serves no models.", reason_code="NO_MODEL")
            return contextlib.nullcontext(None)
        wants_model = require_model or bool(model)
        if not wants_model and self.models.default_model() is None:
            return contextlib.nullcontext(None)
        try:
            return _entered(self.models.lease(model, user=turn.user.name, role=turn.user.role))
        except Forbidden:
            if wants_model:
                raise
            return contextlib.nullcontext(None)  # the role may not use the model: extractive
        except ModelUnavailable:
            if wants_model:
                raise
            return contextlib.nullcontext(None)

    def _fallback_reason(self, model: str | None) -> str:
        if self.models is None:
            return "no model installed"
        if self.models.default_model() is not None:
            return "your role may not use the unlocked model"
        return self.models.why_unavailable(model).message

    def _retrieve(self, turn: _Turn) -> tuple[list[Passage], float]:
        o = self.options
        groups = self.groups_of(turn.user)
        try:
            result = self.retriever.search(turn.question, groups=groups, limit=o.passages)
        except StoreUnavailable as exc:  # the cause (address, error) is for the server log
            _log.error("retrieval failed [%s]: %s", exc.code, exc.diagnostics())
            raise KnowledgeUnavailable.from_store(exc) from None
        passages = [p for p in result.passages if p.score >= o.min_score]
        return passages, result.timings_ms.get("total_ms", 0.0)

    def _extractive(
        self,
        turn: _Turn,
        passages: list[Passage],
        sources: tuple[Source, ...],
        retrieval_ms: float,
        fallback: str,
    ) -> Answer:
        t0 = time.perf_counter()
        result = extractive_answer(
            turn.question,
            passages,
            sentences=self.options.extractive_sentences,
            language=turn.language,
        )
        return Answer(
            text=result.text,
            mode="extractive",
            model=None,
            sources=list(sources),
            cited=list(result.cited),
            not_found=result.not_found,
            fallback_reason=fallback,
            language=turn.language,
            retrieval_ms=retrieval_ms,
            generation_ms=(time.perf_counter() - t0) * 1e3,
            question_id=turn.qid,
            question=turn.question,
        )

    def _generative(
        self,
        turn: _Turn,
        lease: Any,
        passages: list[Passage],
        history: Sequence[tuple[str, str]],
        max_tokens: int | None,
        cancel: threading.Event | None,
    ) -> Generator[AnswerEvent, None, Answer]:
        from ..serve.generate import GenerationRequest, GenerationStats, stream_generate

        o = self.options
        loaded = lease.model
        max_new = min(max_tokens or o.max_new_tokens, o.max_new_tokens)
        context = o.context_tokens or _model_context(loaded.model)
        turns = list(history)[-o.history_turns :] if o.history_turns else []
        prompt = build_prompt(
            turn.question,
            passages,
            tokenizer=loaded.tokenizer,
            context_tokens=context,
            max_new_tokens=max_new,
            max_passages=o.passages,
            history=turns,
            best_last=o.best_source_last,
        )
        sources = tuple(Source.from_passage(i, p) for i, p in enumerate(prompt.sources, 1))
        yield AnswerEvent("sources", sources=sources)
        if not sources:
            text = NOT_FOUND_TEXT.get(turn.language, NOT_FOUND_TEXT["en"])
            yield AnswerEvent("delta", text=text)
            return self._gen_answer(turn, lease.name, text, [], [], True, GenerationStats())
        request = GenerationRequest(
            prompt.text,
            max_new_tokens=max_new,
            temperature=o.temperature,
            deadline=time.monotonic() + o.request_timeout_s,
            cancel=lease.cancel,
            threads=o.threads,
            stop_repeat_tokens=o.stop_repeat_tokens,
        )
        if cancel is not None:
            _link(cancel, request.cancel)
        stats = GenerationStats()
        filt = CitationFilter(len(sources))
        parts: list[str] = []
        for piece in stream_generate(loaded, request, stats):
            out = filt.feed(piece)
            if out:
                parts.append(out)
                yield AnswerEvent("delta", text=out)
        tail = filt.finish()
        if tail:
            parts.append(tail)
            yield AnswerEvent("delta", text=tail)
        if stats.stopped == "cancelled":
            raise Cancelled("The answer was cancelled (client gone or model unloaded).")
        text = "".join(parts).strip()
        not_found = is_not_found(text, turn.language)
        cited = filt.cited
        if o.cite_support and not cited and not not_found:
            n = supporting_source(text, turn.question, [s.text for s in sources])
            if n is not None:
                text, cited = f"{text} [{n}]", [n]
                yield AnswerEvent("delta", text=f" [{n}]")
        if o.unsupported == "flag" and not cited and not not_found:
            # Nothing the reader could check it against: say so, and count it as not found.
            note = "\n\n" + UNSUPPORTED_NOTE.get(turn.language, UNSUPPORTED_NOTE["en"])
            text, not_found = text + note, True
            yield AnswerEvent("delta", text=note)
        return self._gen_answer(turn, lease.name, text, list(sources), cited, not_found, stats)

    def _gen_answer(
        self,
        turn: _Turn,
        model: str,
        text: str,
        sources: list[Source],
        cited: list[int],
        not_found: bool,
        stats: Any,
    ) -> Answer:
        return Answer(
            text=text,
            mode="generative",
            model=model,
            sources=sources,
            cited=list(cited),
            not_found=not_found,
            fallback_reason="",
            language=turn.language,
            tokens=stats.tokens,
            prompt_tokens=stats.prompt_tokens,
            generation_ms=stats.seconds * 1e3,
            first_token_ms=None if stats.first_token_s is None else stats.first_token_s * 1e3,
            question_id=turn.qid,
            question=turn.question,
        )

    # ----- audit and observers --------------------------------------------------------------
    def _audit(self, turn: _Turn, outcome: str, answer: Answer | None, reason: str = "") -> None:
        details: dict[str, str | int | bool] = {"channel": turn.channel, "result": outcome}
        logging = self.options.question_logging
        if logging == "hmac":
            details["question"] = self.home.audit.protect(turn.question)
        elif logging == "plain":
            details["question"] = turn.question[:1000]
        if answer is not None:
            details.update(
                mode=answer.mode,
                model=answer.model or "",
                sources=len(answer.sources),
                cited=",".join(map(str, answer.cited)),
                tokens=answer.tokens,
            )
        self.home.record(
            "question.answer",
            actor=f"user:{turn.user.name}",
            now=int(self.clock()),
            object=turn.qid,
            outcome="refused" if outcome == "refused" else "ok",
            reason=reason,
            details=details,
        )

    def _notify(self, turn: _Turn, answer: Answer | None, outcome: str) -> None:
        for observer in self.observers:
            try:
                observer(answer, turn.user, turn.channel, outcome)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - monitoring must never break an answer
                _log.exception("answer observer %r failed", observer)


def _check_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise InvalidInput("The question is empty.", hint="Ask a question in words.")
    if len(question) > MAX_QUESTION_CHARS:
        raise InvalidInput(
            f"The question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}.",
            hint="Shorten the question.",
        )
    return question.strip()


def _model_context(model: Any) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", 0) or 2048)


def _link(source: threading.Event, target: threading.Event) -> None:
    """Set ``target`` once ``source`` is set (a client's cancel reaches the generation)."""

    def watch() -> None:
        while not target.is_set():
            if source.wait(0.2):
                target.set()
                return

    threading.Thread(target=watch, name="cancel-link", daemon=True).start()


class _entered:
    """Enter a context manager eagerly so that its refusals raise before any output."""

    def __init__(self, cm: Any) -> None:
        self.cm = cm
        self.value = cm.__enter__()

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: Any) -> Any:
        return self.cm.__exit__(*exc)


__all__ = ["Answer", "AnswerEngine", "AnswerEvent", "EngineOptions", "Source"]
