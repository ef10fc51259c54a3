"""Token streaming from a loaded model, with cancellation, a deadline and a token limit.

``generate`` runs in a worker thread and pushes tokens to a streamer; the caller iterates text
pieces. Closing the iterator (client gone), setting ``cancel`` (model unloading) or passing the
deadline stops generation at the next token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ingest.threads import use_threads

from ..errors import Cancelled
from ..llm.loader import LoadedModel

STREAM_POLL_S = 0.5


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    tokens: int = 0
    first_token_s: float | None = None
    seconds: float = 0.0
    stopped: str = ""  # "", "cancelled", "deadline", "repetition"

    @property
    def tokens_per_s(self) -> float:
        decode = self.seconds - (self.first_token_s or 0.0)
        return (self.tokens - 1) / decode if self.tokens > 1 and decode > 0 else 0.0


@dataclass
class GenerationRequest:
    prompt: str
    max_new_tokens: int
    temperature: float = 0.0
    deadline: float | None = None  # time.monotonic() value
    cancel: threading.Event = field(default_factory=threading.Event)
    threads: int | None = None  # torch threads of the generating thread (None: torch's own)
    #: stop once the last N generated tokens already occurred, in a row, earlier in the answer
    #: (a loop: small models repeat a sentence until the token limit); 0 = never
    stop_repeat_tokens: int = 0


def _streamer_class() -> Any:
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        """Counts generated tokens and notes when the first one arrived."""

        def __init__(self, tokenizer: Any, stats: GenerationStats, started: float) -> None:
            super().__init__(
                tokenizer, skip_prompt=True, timeout=STREAM_POLL_S, skip_special_tokens=True
            )
            self.stats, self.started = stats, started
            self._prompt_seen = False

        def put(self, value: Any) -> None:
            if not self._prompt_seen:
                self._prompt_seen = True
            else:
                if self.stats.first_token_s is None:
                    self.stats.first_token_s = time.perf_counter() - self.started
                self.stats.tokens += int(value.numel())
            super().put(value)

    return CountingStreamer


def _stopping(request: GenerationRequest, stats: GenerationStats) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stop(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            stop = False
            if request.cancel.is_set():
                stats.stopped, stop = "cancelled", True
            elif request.deadline is not None and time.monotonic() > request.deadline:
                stats.stopped, stop = "deadline", True
            elif repeating(
                input_ids[0, stats.prompt_tokens :].tolist(), request.stop_repeat_tokens
            ):
                stats.stopped, stop = "repetition", True
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)

    return StoppingCriteriaList([Stop()])


def repeating(ids: list[int], run: int) -> bool:
    """Whether the last ``run`` of ``ids`` already occurred, contiguous, earlier in ``ids``
    (overlapping the end is fine: a short cycle repeated is a loop too)."""
    if run <= 0 or len(ids) <= run:
        return False
    tail, first = ids[-run:], ids[-run]
    return any(ids[i] == first and ids[i : i + run] == tail for i in range(len(ids) - run))


def stream_generate(
    loaded: LoadedModel, request: GenerationRequest, stats: GenerationStats
) -> Iterator[str]:
    """Yield text pieces as the model produces them; ``stats`` is filled in as it goes."""
    model, tokenizer = loaded.model, loaded.tokenizer
    if model is None or tokenizer is None:
        raise Cancelled("The model was unloaded before the answer started.")
    started = time.perf_counter()
    enc = tokenizer(request.prompt, return_tensors="pt", add_special_tokens=False)
    stats.prompt_tokens = int(enc.input_ids.shape[1])
    streamer = _streamer_class()(tokenizer, stats, started)
    failure: list[BaseException] = []
    kwargs = _generate_kwargs(loaded, request, enc, streamer, stats)

    def work() -> None:
        try:
            use_threads(request.threads)
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, name="generate", daemon=True)
    thread.start()
    try:
        yield from _drain(streamer, thread)
    finally:
        request.cancel.set()  # a closed iterator (client gone) stops the worker at once
        thread.join()
        stats.seconds = time.perf_counter() - started
    if failure:
        raise failure[0]


def _drain(streamer: Any, thread: threading.Thread) -> Iterator[str]:
    import queue

    while True:
        try:
            text = next(streamer)
        except StopIteration:
            return
        except queue.Empty:
            if not thread.is_alive() and streamer.text_queue.empty():
                return
            continue
        if text:
            yield text


def _generate_kwargs(
    loaded: LoadedModel,
    request: GenerationRequest,
    enc: Any,
    streamer: Any,
    stats: GenerationStats,
) -> dict[str, Any]:
    device = next(loaded.model.parameters()).device
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict[str, Any] = {
        "input_ids": enc.input_ids.to(device),
        "attention_mask": enc.attention_mask.to(device),
        "max_new_tokens": request.max_new_tokens,
        "streamer": streamer,
        "stopping_criteria": _stopping(request, stats),
        "pad_token_id": pad,
    }
    if request.temperature > 0:
        kwargs.update(do_sample=True, temperature=request.temperature)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs
