"""`POST /v1/chat/completions` in the OpenAI shape, with the answer's sources as extra fields.

The model name picks the mode: a model name demands that model (503 with the reason when it is
locked, 403 when the caller's role may not use it); ``extractive`` demands the extractive mode;
``auto`` (or ``default``) uses an unlocked model and falls back to labelled extractive answers.
The last user message is the question; earlier user/assistant pairs are the history.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInput
from ..rag.answer import MAX_QUESTION_CHARS, Answer, AnswerEvent
from ..users import User
from .auth import CurrentUser
from .errors import error_body, status_of

AUTO_MODELS = {"auto", "default", ""}
EXTRACTIVE = "extractive"
router = APIRouter()


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = "auto"
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def split_messages(messages: list[Message]) -> tuple[str, list[tuple[str, str]]]:
    """The question (last user message) and the earlier user/assistant pairs."""
    if messages[-1].role != "user":
        raise InvalidInput("The last message must come from the user.")
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for m in messages[:-1]:
        if m.role == "user":
            pending = m.text()
        elif m.role == "assistant" and pending is not None:
            history.append((pending, m.text()))
            pending = None
    return messages[-1].text(), history


def check_messages(messages: list[Message], *, max_messages: int, max_chars: int) -> None:
    """400 with the offending ``param`` when a request carries too many or too long messages."""
    if len(messages) > max_messages:
        raise InvalidInput(
            f"The request has {len(messages)} messages; the limit is {max_messages}.",
            code="TOO_MANY_MESSAGES",
            param="messages",
            hint="Send fewer earlier turns (the limit is the setting serve.max_messages).",
        )
    for i, message in enumerate(messages):
        chars = len(message.text())
        if chars > max_chars:
            raise InvalidInput(
                f"Message {i} has {chars} characters; the limit is {max_chars}.",
                code="MESSAGE_TOO_LONG",
                param=f"messages[{i}].content",
                hint="Shorten it (the limit is the setting serve.max_message_chars).",
            )
    if len(messages[-1].text()) > MAX_QUESTION_CHARS:
        raise InvalidInput(
            f"The question has more than {MAX_QUESTION_CHARS} characters.",
            code="QUESTION_TOO_LONG",
            param=f"messages[{len(messages) - 1}].content",
            hint="Shorten the question (the last message).",
        )


def engine_kwargs(body: ChatRequest, user: User) -> dict[str, Any]:
    question, history = split_messages(body.messages)
    name = body.model.strip()
    kwargs: dict[str, Any] = {
        "question": question,
        "user": user,
        "history": history,
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "channel": "api",
    }
    if name == EXTRACTIVE:
        kwargs["model"] = None
        kwargs["extractive"] = True
    elif name.lower() not in AUTO_MODELS:
        kwargs["model"] = name
        kwargs["require_model"] = True
    return kwargs


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatRequest, request: Request, user: CurrentUser
) -> JSONResponse | StreamingResponse:
    runtime = request.app.state.runtime
    limits = runtime.settings.serve
    check_messages(
        body.messages, max_messages=limits.max_messages, max_chars=limits.max_message_chars
    )
    kwargs = engine_kwargs(body, user)
    if body.stream:
        return await _streaming(request, runtime, kwargs)
    async with request.app.state.limiter.slot():
        cancel = threading.Event()
        kwargs["cancel"] = cancel
        task = asyncio.ensure_future(asyncio.to_thread(_drain, runtime.engine, kwargs))
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                cancel.set()
        answer: Answer = task.result()
    return JSONResponse(completion(answer, cid=_cid(), created=int(time.time())))


def _drain(engine: Any, kwargs: dict[str, Any]) -> Answer:
    """The answer, after running the stream to its end: leaving it open at the ``done`` event
    would close it there, and the engine would record the finished answer as cancelled."""
    answer: Answer | None = None
    for event in _events(engine, kwargs):
        if event.answer is not None:
            answer = event.answer
    if answer is None:  # pragma: no cover - the engine always ends with ``done``
        raise RuntimeError("answer stream ended without an answer")
    return answer


def _events(engine: Any, kwargs: dict[str, Any]) -> Iterator[AnswerEvent]:
    yield from engine.stream(**kwargs)


async def _streaming(request: Request, runtime: Any, kwargs: dict[str, Any]) -> StreamingResponse:
    """Server-sent events; refusals found before the first token still answer with a status."""
    limiter = request.app.state.limiter
    slot = limiter.slot()
    await slot.__aenter__()
    cancel = threading.Event()
    kwargs["cancel"] = cancel
    queue: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def produce() -> None:
        try:
            for event in _events(runtime.engine, kwargs):
                loop.call_soon_threadsafe(queue.put_nowait, event)
                if cancel.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=produce, name="answer-stream", daemon=True).start()
    first = await queue.get()
    if isinstance(first, Exception) or first is None:
        await _drain_queue(queue, first)
        await slot.__aexit__(None, None, None)
        if isinstance(first, Exception):
            raise first
        raise RuntimeError("answer stream ended without events")  # pragma: no cover
    return StreamingResponse(
        _sse(first, queue, cancel, slot),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _drain_queue(queue: asyncio.Queue[Any], item: Any) -> None:
    while item is not None:
        item = await queue.get()


async def _sse(
    first: AnswerEvent, queue: asyncio.Queue[Any], cancel: threading.Event, slot: Any
) -> AsyncIterator[str]:
    cid, created = _cid(), int(time.time())
    item: Any = first
    try:
        while item is not None:
            if isinstance(item, Exception):
                status, type_ = status_of(item)
                code = getattr(item, "code", "SERVER_ERROR")
                message = getattr(item, "message", str(item))
                yield _data(error_body(message, type_=type_, code=code, status=status))
            else:
                for chunk in _chunks(item, cid, created):
                    yield _data(chunk)
            item = await queue.get()
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()  # client gone or stream over: stop generating
        await slot.__aexit__(None, None, None)


def _data(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _chunks(event: AnswerEvent, cid: str, created: int) -> Iterator[dict[str, Any]]:
    base = {"id": cid, "object": "chat.completion.chunk", "created": created}
    if event.kind == "sources":
        yield {
            **base,
            "model": "pending",
            "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
            "sources": [s.to_dict() for s in event.sources],
        }
    elif event.kind == "delta" and event.text:
        yield {
            **base,
            "model": "pending",
            "choices": [{"index": 0, "delta": {"content": event.text}, "finish_reason": None}],
        }
    elif event.kind == "done" and event.answer is not None:
        a = event.answer
        yield {
            **base,
            "model": a.model or EXTRACTIVE,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            **_extras(a),
            "usage": _usage(a),
        }


def _extras(a: Answer) -> dict[str, Any]:
    return {
        "mode": a.mode,
        "label": a.label,
        "fallback_reason": a.fallback_reason,
        "not_found": a.not_found,
        "cited": a.cited,
        "question_id": a.question_id,
        "sources": [_source_fields(s.to_dict()) for s in a.sources],
    }


def _source_fields(d: dict[str, Any]) -> dict[str, Any]:
    """What an API client gets per source: no whole passage, a snippet."""
    d.pop("text", None)
    return d


def _usage(a: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.tokens,
        "total_tokens": a.prompt_tokens + a.tokens,
    }


def completion(a: Answer, *, cid: str, created: int) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": a.model or EXTRACTIVE,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": a.text},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(a),
        **_extras(a),
    }


def _cid() -> str:
    import secrets

    return "chatcmpl-" + secrets.token_hex(12)
