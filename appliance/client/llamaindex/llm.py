"""`ApplianceLLM`: a LlamaIndex LLM over the appliance's `POST /v1/chat/completions`.

This is not a general-purpose completion model: the appliance answers every prompt as a
question, from the documents the key's user may see, with its own prompt, citation filter and
model (a model name, ``auto``, or ``extractive``). The last user message is the question and
earlier user/assistant pairs are the history; system messages are accepted and ignored (the
server owns its prompt). So it cannot be the response synthesizer of a ``RetrieverQueryEngine``
(the synthesizer's context-stuffed prompt would be taken for the question): use
:class:`~.query_engine.ApplianceQueryEngine`, or your own LLM over :class:`ApplianceRetriever`.
Every response carries the server's sources as nodes in
``additional_kwargs["source_nodes"]`` (source ``n`` is ``[n]`` in the text) beside ``mode``,
``label``, ``fallback_reason``, ``not_found``, ``cited``, ``question_id`` and token counts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.constants import DEFAULT_NUM_OUTPUTS
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import NodeWithScore

from ..events import ChatEvent, ChatResult
from ..http import ApplianceClient, Message
from .nodes import mark_cited, source_nodes

ROLES = {"function": "tool", "chatbot": "assistant", "model": "assistant"}


class ApplianceLLM(CustomLLM):
    """The appliance's answering model for the client's user (see the module docstring)."""

    model: str = Field(
        default="auto",
        description="'auto' (an unlocked model, else labelled extractive answers), a model "
        "name (that model or an error), or 'extractive' (no language model).",
    )
    max_tokens: int | None = Field(
        default=None,
        description="Upper bound for the answer's tokens; the server's llm.max_new_tokens "
        "still applies (None: the server's bound).",
    )
    context_window: int = Field(
        default=4096,
        description="Tokens LlamaIndex may send per request (chat memory sizes the history by "
        "it). The server fits its sources into the model's own context; a question may have "
        "at most 4000 characters and serve.max_messages / serve.max_message_chars bound the "
        "history.",
    )
    base_url: str = Field(default="", description="The appliance's address (from the client).")
    _client: ApplianceClient = PrivateAttr()

    def __init__(
        self,
        client: ApplianceClient,
        *,
        model: str = "auto",
        max_tokens: int | None = None,
        context_window: int = 4096,
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model=model,
            max_tokens=max_tokens,
            context_window=context_window,
            base_url=client.base_url,
            callback_manager=callback_manager,
            **kwargs,
        )
        self._client = client  # private: the API key never reaches to_dict() or events

    @classmethod
    def class_name(cls) -> str:
        return "ApplianceLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_tokens or DEFAULT_NUM_OUTPUTS,
            is_chat_model=True,
            model_name=self.model,
        )

    # -- chat -------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        answer = _Answer()
        for event in self._events(messages, kwargs):
            answer.add(event)
        return answer.chat_response()

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        events = self._events(messages, kwargs)

        def gen() -> ChatResponseGen:
            answer = _Answer()
            for event in events:
                answer.add(event)
                yield answer.chat_response(delta=event.text)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        answer = _Answer()
        async for event in self._aevents(messages, kwargs):
            answer.add(event)
        return answer.chat_response()

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        events = self._aevents(messages, kwargs)

        async def gen() -> ChatResponseAsyncGen:
            answer = _Answer()
            async for event in events:
                answer.add(event)
                yield answer.chat_response(delta=event.text)

        return gen()

    # -- completion: the prompt is the question ---------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        answer = _Answer()
        for event in self._events([_question(prompt)], kwargs):
            answer.add(event)
        return answer.completion_response()

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        events = self._events([_question(prompt)], kwargs)

        def gen() -> CompletionResponseGen:
            answer = _Answer()
            for event in events:
                answer.add(event)
                yield answer.completion_response(delta=event.text)

        return gen()

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        answer = _Answer()
        async for event in self._aevents([_question(prompt)], kwargs):
            answer.add(event)
        return answer.completion_response()

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        events = self._aevents([_question(prompt)], kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            answer = _Answer()
            async for event in events:
                answer.add(event)
                yield answer.completion_response(delta=event.text)

        return gen()

    # -- plumbing ---------------------------------------------------------------------

    def _events(self, messages: Sequence[ChatMessage], kw: dict[str, Any]) -> Iterator[ChatEvent]:
        return self._client.chat_stream(
            wire_messages(messages), model=self.model, max_tokens=self._max_tokens(kw)
        )

    def _aevents(
        self, messages: Sequence[ChatMessage], kw: dict[str, Any]
    ) -> AsyncIterator[ChatEvent]:
        return self._client.achat_stream(
            wire_messages(messages), model=self.model, max_tokens=self._max_tokens(kw)
        )

    def _max_tokens(self, kw: dict[str, Any]) -> int | None:
        value = kw.get("max_tokens", self.max_tokens)
        return int(value) if value is not None else None


def wire_messages(messages: Sequence[ChatMessage]) -> list[Message]:
    """LlamaIndex messages as the API's ``{"role", "content"}`` (text blocks only)."""
    out: list[Message] = []
    for m in messages:
        role = m.role.value if isinstance(m.role, MessageRole) else str(m.role)
        out.append({"role": ROLES.get(role, role), "content": m.content or ""})
    return out


def _question(prompt: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.USER, content=prompt)


class _Answer:
    """An answer being received: its text and fields, and its sources as nodes built once."""

    def __init__(self) -> None:
        self.result = ChatResult()
        self.nodes: list[NodeWithScore] = []

    def add(self, event: ChatEvent) -> None:
        self.result.add(event)
        if event.kind == "sources":
            self.nodes = source_nodes(self.result.sources)
        elif event.kind == "done":
            if not self.nodes:
                self.nodes = source_nodes(self.result.sources)
            mark_cited(self.nodes, set(self.result.cited))

    def kwargs(self) -> dict[str, Any]:
        return {**self.result.extras(), "source_nodes": self.nodes}

    def chat_response(self, delta: str | None = None) -> ChatResponse:
        message = ChatMessage(role=MessageRole.ASSISTANT, content=self.result.text)
        return ChatResponse(
            message=message,
            delta=delta,
            raw=self.result.raw or None,
            additional_kwargs=self.kwargs(),
        )

    def completion_response(self, delta: str | None = None) -> CompletionResponse:
        return CompletionResponse(
            text=self.result.text,
            delta=delta,
            raw=self.result.raw or None,
            additional_kwargs=self.kwargs(),
        )
