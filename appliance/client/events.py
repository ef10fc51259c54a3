"""The chat stream as the client sees it: pure parsing of the server-sent events (no I/O).

`POST /v1/chat/completions` with ``stream: true`` sends ``data: {json}`` lines: the first chunk
carries the answer's ``sources`` (each with the whole passage ``text``), then one chunk per text
delta, then a last chunk with the extra fields (``mode``, ``label``, ``cited``…) and ``usage``,
then ``data: [DONE]``. An error after the stream began arrives as ``data: {"error": …}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ProtocolError, error_from_body

DONE = "[DONE]"
EXTRAS = ("mode", "label", "fallback_reason", "not_found", "cited", "question_id")


@dataclass(frozen=True)
class ChatEvent:
    """One step of an answer: its ``sources``, a text ``delta``, or ``done`` with the extras."""

    kind: Literal["sources", "delta", "done"]
    text: str = ""
    sources: tuple[dict[str, Any], ...] = ()
    final: dict[str, Any] = field(default_factory=dict)


def sse_data(line: str) -> dict[str, Any] | None:
    """The JSON of one ``data:`` line; None for other lines (comments, blank) and ``[DONE]``."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == DONE:
        return None
    try:
        obj = json.loads(payload)
    except ValueError as exc:
        raise ProtocolError("The answer stream carried a line that is not JSON.") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("The answer stream carried JSON that is not an object.")
    return obj


def chat_events(chunk: dict[str, Any]) -> list[ChatEvent]:
    """The events in one streamed chunk; raises the typed error of an ``error`` chunk."""
    if "error" in chunk:
        raise error_from_body(None, chunk)
    sources = _sources(chunk.get("sources"))
    if chunk.get("mode") is not None:  # only the last chunk carries the extra fields
        _check_final(chunk)
        return [ChatEvent("done", final=chunk)]
    events: list[ChatEvent] = []
    if "sources" in chunk:
        events.append(ChatEvent("sources", sources=tuple(sources)))
    content = _delta_content(chunk)
    if content:
        events.append(ChatEvent("delta", text=content))
    return events


def _sources(value: Any) -> list[dict[str, Any]]:
    sources = value or []
    if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
        raise ProtocolError("The answer's sources are not a list of objects.")
    return sources


def _check_final(chunk: dict[str, Any]) -> None:
    cited, usage = chunk.get("cited") or [], chunk.get("usage") or {}
    if not isinstance(cited, list) or not isinstance(usage, dict):
        raise ProtocolError("The answer's last chunk has malformed 'cited' or 'usage'.")


def _delta_content(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or [{}]
    try:
        content = (choices[0].get("delta") or {}).get("content")
    except (AttributeError, IndexError, KeyError, TypeError):
        raise ProtocolError("An answer chunk has no readable 'choices'.") from None
    return str(content) if content else ""


@dataclass
class ChatResult:
    """A whole answer, gathered from its events (or from a non-streamed response)."""

    text: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    mode: str | None = None
    label: str = ""
    fallback_reason: str = ""
    not_found: bool = False
    cited: list[int] = field(default_factory=list)
    question_id: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    done: bool = False

    def add(self, event: ChatEvent) -> None:
        if event.kind == "sources":
            self.sources = [dict(s) for s in event.sources]
        elif event.kind == "delta":
            self.text += event.text
        else:
            self.finish(event.final)

    def finish(self, final: dict[str, Any]) -> None:
        """Take the extra fields of the last chunk; its sources (snippets, no ``text``) only
        complete the ones the first chunk gave, matched by ``n``."""
        self.raw = final
        self.model = final.get("model")
        for name in EXTRAS:
            if final.get(name) is not None:
                setattr(self, name, final[name])
        self.usage = dict(final.get("usage") or {})
        self.sources = merge_sources(self.sources, list(final.get("sources") or ()))
        self.done = True

    def extras(self) -> dict[str, Any]:
        """The appliance's fields beside the text, as one dict (for ``additional_kwargs``)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in EXTRAS}
        out["model"] = self.model
        out.update(self.usage)
        return out


def merge_sources(first: list[dict[str, Any]], last: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not first:
        return [dict(s) for s in last]
    by_n = {s.get("n"): s for s in last}
    return [{**by_n.get(s.get("n"), {}), **s} for s in first]
