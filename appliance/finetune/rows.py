"""Training files: JSON Lines in chat form or QA form, every row validated before anything is kept.

Chat form (loss on the assistant messages)::

    {"messages": [{"role": "system", "content": "..."},          # optional, first only
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]} # user/assistant alternate,
                                                                  # the last is the assistant's
QA form (turned into the answer engine's own prompt, see :mod:`.examples`)::

    {"question": "...", "answers": ["...", ...], "context": "...",   # context optional
     "impossible": false, "id": "...", "title": "..."}               # the last three optional

An answerable QA row needs at least one answer, and when it has a context, an answer that occurs
in it (the citation of the target must be true); an impossible row has no answers. Both forms
may be mixed in one file. :func:`parse_training_file` returns every row or raises one
:class:`InvalidInput` naming the lines of all bad rows (the first :data:`MAX_REPORTED` with their
reason), so a file is imported whole or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from ..rag.answer import MAX_QUESTION_CHARS

MAX_REPORTED = 20
MAX_TEXT_CHARS = 32_000  # one context or message
MAX_MESSAGES = 64
ROLES = ("system", "user", "assistant")
_QA_KEYS = frozenset({"question", "answers", "context", "impossible", "id", "title"})


@dataclass(frozen=True)
class ChatRow:
    line: int
    messages: tuple[tuple[str, str], ...]  # (role, content)


@dataclass(frozen=True)
class QaRow:
    line: int
    question: str
    answers: tuple[str, ...]
    context: str | None
    impossible: bool
    title: str = ""


Row = ChatRow | QaRow


@dataclass(frozen=True)
class TrainingFile:
    rows: tuple[Row, ...]

    @property
    def counts(self) -> dict[str, int]:
        qa = [r for r in self.rows if isinstance(r, QaRow)]
        return {
            "rows": len(self.rows),
            "chat": len(self.rows) - len(qa),
            "qa": len(qa),
            "impossible": sum(r.impossible for r in qa),
            "with_context": sum(r.context is not None for r in qa),
        }


class _Bad(ValueError):
    """One row's problem (collected, never raised out of this module)."""


def parse_training_file(data: bytes) -> TrainingFile:
    """Every row of ``data`` (UTF-8 JSON Lines), or InvalidInput naming the bad lines."""
    rows: list[Row] = []
    bad: list[tuple[int, str]] = []
    for number, line in _lines(data):
        try:
            rows.append(parse_row(line, number))
        except _Bad as exc:
            bad.append((number, str(exc)))
    if bad:
        raise _refusal(bad)
    if not rows:
        raise InvalidInput(
            "The training file holds no rows.",
            hint="Give one JSON object per line, in chat form or QA form (see docs/finetune.md).",
        )
    return TrainingFile(tuple(rows))


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def _refusal(bad: list[tuple[int, str]]) -> InvalidInput:
    shown = "; ".join(f"line {n}: {why}" for n, why in bad[:MAX_REPORTED])
    more = f" (and {len(bad) - MAX_REPORTED} more)" if len(bad) > MAX_REPORTED else ""
    lines = ", ".join(str(n) for n, _ in bad[:200]) + (", …" if len(bad) > 200 else "")
    return InvalidInput(
        f"The training file has {len(bad)} bad row(s), lines {lines}: {shown}{more}. "
        "Nothing was imported.",
        code="BAD_TRAINING_DATA",
        hint="Fix those lines and import the file again.",
    )


def parse_row(line: bytes, number: int) -> Row:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("not UTF-8 text") from None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _Bad(f"not valid JSON ({getattr(exc, 'msg', 'too deeply nested')})") from None
    if not isinstance(obj, dict):
        raise _Bad("not a JSON object")
    if "messages" in obj:
        return _chat(obj, number)
    if "question" in obj:
        return _qa(obj, number)
    raise _Bad('neither chat form ("messages") nor QA form ("question", "answers")')


def _chat(obj: dict[str, Any], number: int) -> ChatRow:
    if set(obj) != {"messages"}:
        raise _Bad(f"unknown field(s) {sorted(set(obj) - {'messages'})} beside messages")
    messages = obj["messages"]
    if not isinstance(messages, list) or not 2 <= len(messages) <= MAX_MESSAGES:
        raise _Bad(f'"messages" must be a list of 2 to {MAX_MESSAGES} messages')
    parsed = [_message(m, i) for i, m in enumerate(messages, start=1)]
    roles = [role for role, _ in parsed]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2)
    if not body or body != expected:
        raise _Bad(
            "messages must be an optional system message, then user and assistant messages "
            "taking turns, ending with the assistant's"
        )
    return ChatRow(number, tuple(parsed))


def _message(m: Any, i: int) -> tuple[str, str]:
    if not isinstance(m, dict) or set(m) != {"role", "content"}:
        raise _Bad(f'message {i} must be an object with exactly "role" and "content"')
    role, content = m["role"], m["content"]
    if role not in ROLES:
        raise _Bad(f"message {i} has role {role!r}; use system, user or assistant")
    return role, _text(content, f"message {i} content")


def _qa(obj: dict[str, Any], number: int) -> QaRow:
    unknown = set(obj) - _QA_KEYS
    if unknown:
        raise _Bad(f"unknown field(s) {sorted(unknown)}")
    question = _text(obj["question"], '"question"', limit=MAX_QUESTION_CHARS)
    impossible = obj.get("impossible", False)
    if not isinstance(impossible, bool):
        raise _Bad('"impossible" must be true or false')
    answers = _answers(obj.get("answers"))
    context = None if obj.get("context") is None else _text(obj["context"], '"context"')
    title = obj.get("title") or ""
    if not isinstance(title, str) or len(title) > 512:
        raise _Bad('"title" must be a string of at most 512 characters')
    if not isinstance(obj.get("id", ""), str | int):
        raise _Bad('"id" must be a string or a number')
    if impossible and answers:
        raise _Bad('an impossible question has no answers ("answers": [])')
    if not impossible and not answers:
        raise _Bad('an answerable question needs at least one answer (or "impossible": true)')
    if context is not None and answers and not any(a in context for a in answers):
        raise _Bad("none of its answers occurs in its context")
    return QaRow(number, question, answers, context, impossible, title)


def _answers(value: Any) -> tuple[str, ...]:
    if value is None:
        raise _Bad('"answers" is missing (a list of answer strings, [] if impossible)')
    if not isinstance(value, list) or len(value) > 32:
        raise _Bad('"answers" must be a list of at most 32 strings')
    return tuple(_text(a, "an answer", limit=2000) for a in value)


def _text(value: Any, what: str, *, limit: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"{what} must be a non-empty string")
    if len(value) > limit:
        raise _Bad(f"{what} is {len(value)} characters long, over the limit of {limit}")
    if "\x00" in value:
        raise _Bad(f"{what} holds a NUL character")
    return value
