"""The appliance as a LlamaIndex citizen: compose query engines over it with your own API key.

- :class:`ApplianceRetriever` (a ``BaseRetriever``) over `POST /v1/search`: the passages the key's
  user may see, as ``NodeWithScore`` with the server's scores, for your own pipelines.
- :class:`ApplianceLLM` (a ``CustomLLM``) over `POST /v1/chat/completions`: every prompt is a
  question the appliance answers from the documents the user may see, with its own prompt and
  model (or extractive); the response carries the server's sources as nodes.
- :class:`ApplianceQueryEngine`: the appliance's cited answer as a LlamaIndex ``Response`` whose
  ``source_nodes`` are the server's sources.

Group access is enforced by the server for every request; nothing here can widen it.
"""

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - llama-index-core is a declared dependency
    raise ImportError(
        "appliance.client.llamaindex needs LlamaIndex: pip install 'llama-index-core>=0.14,<0.15'"
    ) from exc

from .llm import ApplianceLLM
from .nodes import passage_node, source_nodes
from .query_engine import ApplianceQueryEngine
from .retriever import ApplianceRetriever

__all__ = [
    "ApplianceLLM",
    "ApplianceQueryEngine",
    "ApplianceRetriever",
    "passage_node",
    "source_nodes",
]
