"""What an answer is: its numbered sources, text, mode and timings (shared by every channel)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .retrieve import Passage

SNIPPET_CHARS = 300
EXTRACTIVE_LABEL = {
    "en": "Extractive answer – no language model used",
    "zh": "摘录式回答 – 未使用语言模型",
}
Mode = Literal["generative", "extractive"]


@dataclass(frozen=True)
class Source:
    n: int
    chunk_id: str
    doc_id: str
    document: str
    group: str
    title: str
    section: tuple[str, ...]
    page_start: int | None
    page_end: int | None
    text: str
    snippet: str
    score: float

    @classmethod
    def from_passage(cls, n: int, p: Passage) -> Source:
        snippet = " ".join(p.text.split())
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[: SNIPPET_CHARS - 1].rstrip() + "…"
        return cls(
            n=n,
            chunk_id=p.chunk_id,
            doc_id=p.doc_id,
            document=p.document,
            group=p.group,
            title=p.title,
            section=p.section,
            page_start=p.page_start,
            page_end=p.page_end,
            text=p.text,
            snippet=snippet,
            score=p.score,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "document": self.document,
            "group": self.group,
            "title": self.title,
            "section": list(self.section),
            "page_start": self.page_start,
            "page_end": self.page_end,
            "snippet": self.snippet,
            "text": self.text,
            "score": round(self.score, 6),
        }


@dataclass
class Answer:
    text: str
    mode: Mode
    model: str | None
    sources: list[Source]
    cited: list[int]
    not_found: bool
    fallback_reason: str
    language: str
    tokens: int = 0
    prompt_tokens: int = 0
    retrieval_ms: float = 0.0
    generation_ms: float = 0.0
    first_token_ms: float | None = None
    question_id: str = ""
    question: str = ""  # kept in memory; stored by monitoring only if settings allow

    @property
    def label(self) -> str:
        """What every channel shows about how this answer was made."""
        if self.mode == "generative":
            return f"model {self.model}"
        return EXTRACTIVE_LABEL.get(self.language, EXTRACTIVE_LABEL["en"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "question_id": self.question_id,
            "answer": self.text,
            "mode": self.mode,
            "model": self.model,
            "label": self.label,
            "fallback_reason": self.fallback_reason,
            "not_found": self.not_found,
            "language": self.language,
            "cited": self.cited,
            "sources": [s.to_dict() for s in self.sources],
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "timings_ms": {
                "retrieval": round(self.retrieval_ms, 2),
                "generation": round(self.generation_ms, 2),
                "first_token": None
                if self.first_token_ms is None
                else round(self.first_token_ms, 2),
            },
        }


@dataclass(frozen=True)
class AnswerEvent:
    kind: Literal["sources", "delta", "done"]
    text: str = ""
    sources: tuple[Source, ...] = ()
    answer: Answer | None = None
