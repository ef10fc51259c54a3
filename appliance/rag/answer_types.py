"""What an answer is: its numbered sources, text, mode and timings (shared by every channel)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .passage_fields import PassageFields
from .retrieve import Passage

SNIPPET_CHARS = 300
EXTRACTIVE_LABEL = {
    "en": "Extractive answer – no language model used",
    "zh": "摘录式回答 – 未使用语言模型",
}
Mode = Literal["generative", "extractive"]


@dataclass(frozen=True)
class Source(PassageFields):
    """An answer's source ``[n]``: the passage and a short snippet of it for the sources panel."""

    n: int
    snippet: str
    score: float

    @classmethod
    def from_passage(cls, n: int, p: Passage) -> Source:
        snippet = " ".join(p.text.split())
        if len(snippet) > SNIPPET_CHARS:
            snippet = snippet[: SNIPPET_CHARS - 1].rstrip() + "…"
        return cls(n=n, snippet=snippet, score=p.score, **p.passage_fields())

    def to_dict(self) -> dict[str, Any]:
        out = {"n": self.n, **self.fields_dict()}
        text = out.pop("text")  # keys in the order clients have always seen
        return out | {"snippet": self.snippet, "text": text, "score": round(self.score, 6)}


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
