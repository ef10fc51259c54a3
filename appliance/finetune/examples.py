"""Training examples: token ids, and the spans whose tokens carry the loss (the answers only).

A **QA row** becomes exactly what the answer engine would send the model: the prompt comes from
:func:`appliance.rag.prompt.build_prompt` (the serving code itself, imported, so training and
serving cannot drift) over the passages the appliance's own retrieval returned for the question
(:mod:`.context_index`), and the target is what the engine should answer:

* the gold passage (the row's context, in the chunk that holds an answer; without a context, the
  best retrieved passage that holds one) is among the sources the prompt kept: the answer, cited
  with that source's number, ``"<answer> [n]"``;
* the gold passage is missing (retrieval did not find it, the budget cut it, or it was taken out
  on purpose for a ``drop_gold`` share of rows), or the question is impossible: the engine's
  exact "not in the documents" sentence (:data:`~appliance.rag.prompt.NOT_FOUND_TEXT`). This is
  the recipe of RAFT (Zhang et al. 2024): distractors always, the gold passage only sometimes.

A **chat row** is rendered with the tokenizer's chat template; the loss covers every assistant
message. Each target ends with the end-of-turn token the model stops generating at.
Tokenisation matches serving: the prompt text is tokenised alone, without added special tokens,
as :func:`appliance.serve.generate.stream_generate` does.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput
from ..rag.prompt import NOT_FOUND_TEXT, build_prompt
from ..rag.prompt import _render as render_messages
from ..rag.retrieve import Passage
from .rows import ChatRow, QaRow, Row

Retrieve = Callable[[str], list[Passage]]
KINDS = ("answer", "not_found", "impossible", "chat")


@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]  # [start, end) token ranges that carry the loss
    kind: str  # one of KINDS

    def to_json(self) -> list[Any]:
        return [list(self.ids), [list(s) for s in self.spans], self.kind]

    @classmethod
    def from_json(cls, obj: Any) -> Example:
        ids, spans, kind = obj
        return cls(tuple(int(i) for i in ids), tuple((int(a), int(b)) for a, b in spans), kind)

    @property
    def loss_tokens(self) -> int:
        return sum(b - a for a, b in self.spans)


@dataclass(frozen=True)
class ExampleOptions:
    max_seq_tokens: int
    passages: int
    drop_gold: float
    seed: int
    min_score: float = 0.0
    best_last: bool = False  # passages written best last, as serving does (best_source_last)


@dataclass
class Built:
    examples: list[Example] = field(default_factory=list)
    skipped_long: int = 0  # rows that do not fit in max_seq_tokens

    @property
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for ex in self.examples:
            out[ex.kind] += 1
        out["skipped_long"] = self.skipped_long
        return out


def build_examples(
    rows: Sequence[Row],
    *,
    tokenizer: Any,
    eos_id: int,
    retrieve: Retrieve,
    gold_of: Callable[[QaRow], str | None],
    options: ExampleOptions,
) -> Built:
    """Every row as an example; ``gold_of`` names the document that holds a row's context."""
    built = Built()
    for row in rows:
        if isinstance(row, QaRow):
            passages = [p for p in retrieve(row.question) if p.score >= options.min_score]
            try:
                example = qa_example(
                    row, passages, gold_of(row), tokenizer=tokenizer, eos_id=eos_id, o=options
                )
            except InvalidInput:  # the question alone does not fit in max_seq_tokens
                built.skipped_long += 1
                continue
        else:
            example = chat_example(row, tokenizer=tokenizer, eos_id=eos_id)
        if len(example.ids) > options.max_seq_tokens:
            built.skipped_long += 1
            continue
        built.examples.append(example)
    if not built.examples:
        raise InvalidInput(
            f"No training example fits in {options.max_seq_tokens} tokens.",
            hint="Raise finetune.max_seq_tokens or shorten the chat rows.",
        )
    return built


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def is_gold(passage: Passage, row: QaRow, gold_doc: str | None) -> bool:
    """The passage that supports the row's answer: its context's document (when known), and a
    chunk of it that holds one of the answers."""
    if row.impossible or not row.answers:
        return False
    if gold_doc is not None and passage.document != gold_doc:
        return False
    return any(a in passage.text for a in row.answers)


def qa_example(
    row: QaRow,
    retrieved: Sequence[Passage],
    gold_doc: str | None,
    *,
    tokenizer: Any,
    eos_id: int,
    o: ExampleOptions,
) -> Example:
    drop = random.Random(f"{o.seed}:{row.line}").random() < o.drop_gold
    passages = list(retrieved)
    if drop:  # RAFT: take every passage that would answer it out, so "not found" is true
        passages = [
            p
            for p in passages
            if not any(a in p.text for a in row.answers) and not is_gold(p, row, gold_doc)
        ]
    passages = passages[: o.passages]
    longest = max((_answer_text(a, 99) for a in row.answers), key=len, default="")
    reserve = max(len(_ids(tokenizer, longest)), *_not_found_lengths(tokenizer)) + 2
    prompt = build_prompt(
        row.question,
        passages,
        tokenizer=tokenizer,
        context_tokens=o.max_seq_tokens,
        max_new_tokens=reserve,
        max_passages=o.passages,
        best_last=o.best_last,
    )
    target, kind = _target(row, prompt, gold_doc)
    prompt_ids = _ids(tokenizer, prompt.text)
    target_ids = [*_ids(tokenizer, target), eos_id]
    ids = prompt_ids + target_ids
    return Example(tuple(ids), ((len(prompt_ids), len(ids)),), kind)


def _answer_text(answer: str, n: int) -> str:
    return f"{answer} [{n}]"


def _not_found_lengths(tokenizer: Any) -> list[int]:
    return [len(_ids(tokenizer, t)) for t in NOT_FOUND_TEXT.values()]


def _target(row: QaRow, prompt: Any, gold_doc: str | None) -> tuple[str, str]:
    not_found = NOT_FOUND_TEXT[prompt.language]
    if row.impossible:
        return not_found, "impossible"
    for n, passage in enumerate(prompt.sources, start=1):
        if not is_gold(passage, row, gold_doc):
            continue
        shown = rendered_source(prompt.text, n)  # the budget may have cut the passage
        answer = next((a for a in row.answers if a in shown), None)
        if answer is not None:
            return _answer_text(answer, n), "answer"
    return not_found, "not_found"


def rendered_source(prompt_text: str, n: int) -> str:
    """The text of source ``n`` as the prompt shows it (cut passages are cut here too)."""
    match = re.search(rf'<source id="{n}"[^>\n]*>\n(.*?)\n</source>', prompt_text, re.DOTALL)
    return match.group(1) if match else ""


def chat_example(row: ChatRow, *, tokenizer: Any, eos_id: int) -> Example:
    """The conversation through the chat template; loss on each assistant message + end token."""
    messages = [{"role": r, "content": c} for r, c in row.messages]
    eos_text = tokenizer.convert_ids_to_tokens(eos_id)
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        context = render_messages(tokenizer, messages[:i])
        if not context.startswith(done):
            raise InvalidInput(
                f"Line {row.line}: the model's chat template does not render conversations "
                "incrementally, so assistant turns cannot be trained on separately.",
                hint="Use QA rows, or conversations with one assistant message.",
            )
        ids += _ids(tokenizer, context[len(done) :])
        start = len(ids)
        ids += [*_ids(tokenizer, message["content"]), eos_id]
        spans.append((start, len(ids)))
        done = context + message["content"] + eos_text
    return Example(tuple(ids), tuple(spans), "chat")
