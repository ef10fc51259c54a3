"""`ApplianceQueryEngine`: the appliance's own cited answer as a LlamaIndex query engine.

The server retrieves (only what the key's user may see), prompts its model and filters the
citations; this engine hands the question to :class:`ApplianceLLM` and returns a ``Response``
(or a ``StreamingResponse`` with ``streaming=True``) whose ``source_nodes`` are the server's
sources in order (``[n]`` in the text is ``source_nodes[n-1]``, ``metadata["cited"]`` marks the
cited ones) and whose ``metadata`` has ``mode``, ``label``, ``fallback_reason``, ``not_found``,
``cited``, ``model``, ``question_id`` and token counts. Use it as a tool of an agent, under a
router, or wherever LlamaIndex takes a query engine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle

from .llm import ApplianceLLM

NODES = "source_nodes"


class ApplianceQueryEngine(BaseQueryEngine):
    """Questions answered by the appliance (see the module docstring)."""

    def __init__(
        self,
        llm: ApplianceLLM,
        *,
        streaming: bool = False,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        super().__init__(callback_manager=callback_manager or llm.callback_manager)
        self._llm = llm
        self._streaming = streaming

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        messages = [ChatMessage(role=MessageRole.USER, content=query_bundle.query_str)]
        if not self._streaming:
            return _response(self._llm.chat(messages))
        stream = self._llm.stream_chat(messages)
        first = next(stream)  # the sources (or a refusal) arrive before any token
        nodes: list[NodeWithScore] = list(first.additional_kwargs.get(NODES, []))
        metadata: dict[str, Any] = {}

        def tokens() -> Generator[str, None, None]:
            last = first
            if first.delta:
                yield first.delta
            for last in stream:
                if last.delta:
                    yield last.delta
            _finish(last, nodes, metadata)

        return StreamingResponse(response_gen=tokens(), source_nodes=nodes, metadata=metadata)

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        messages = [ChatMessage(role=MessageRole.USER, content=query_bundle.query_str)]
        if not self._streaming:
            return _response(await self._llm.achat(messages))
        stream = await self._llm.astream_chat(messages)
        first = await anext(stream)
        nodes: list[NodeWithScore] = list(first.additional_kwargs.get(NODES, []))
        metadata: dict[str, Any] = {}

        async def tokens() -> AsyncGenerator[str, None]:
            last = first
            if first.delta:
                yield first.delta
            async for last in stream:
                if last.delta:
                    yield last.delta
            _finish(last, nodes, metadata)

        return AsyncStreamingResponse(response_gen=tokens(), source_nodes=nodes, metadata=metadata)


def _response(chat: ChatResponse) -> Response:
    extras = dict(chat.additional_kwargs)
    nodes = extras.pop(NODES, [])
    return Response(response=chat.message.content or "", source_nodes=nodes, metadata=extras)


def _finish(last: ChatResponse, nodes: list[NodeWithScore], metadata: dict[str, Any]) -> None:
    """Fill the streaming response's sources and fields in place when its stream ends."""
    extras = dict(last.additional_kwargs)
    nodes[:] = extras.pop(NODES, nodes)
    metadata.update(extras)
