"""Passages and answer sources of the appliance as LlamaIndex nodes (pure conversion, no I/O).

A search passage (``chunk_id``, ``doc_id``, ``document``, ``title``, ``section``, ``page_start``,
``page_end``, ``group``, ``text``, ``score``…) becomes ``NodeWithScore(TextNode(text,
id_=chunk_id, metadata=…), score)``. Metadata values are flat (``section`` joined with " > ",
``pages`` as "3" or "3-5") so the nodes can go into any vector store; what only identifies or
ranks a passage is kept out of the text an LLM or an embedder sees.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llama_index.core.schema import NodeWithScore, TextNode

from ..errors import ProtocolError

SECTION_JOIN = " > "
SHOWN = ("document", "title", "section", "pages")  # what a prompt of yours sees of a node
DROPPED = ("text", "snippet", "score")  # in the node itself, or a shortened copy of its text


def passage_node(passage: dict[str, Any]) -> NodeWithScore:
    """One `/v1/search` passage (or answer source) as a scored node."""
    try:
        chunk_id = str(passage["chunk_id"])
        text = passage.get("text")
        text = str(text if text is not None else passage["snippet"])
    except KeyError as exc:
        raise ProtocolError(f"A passage from the server lacks {exc.args[0]!r}.") from None
    metadata = node_metadata(passage)
    hidden = [k for k in metadata if k not in SHOWN]
    node = TextNode(
        id_=chunk_id,
        text=text,
        metadata=metadata,
        excluded_llm_metadata_keys=hidden,
        excluded_embed_metadata_keys=hidden,
    )
    score = passage.get("score")
    try:
        return NodeWithScore(node=node, score=float(score) if score is not None else None)
    except (TypeError, ValueError):
        raise ProtocolError(f"A passage from the server has the score {score!r}.") from None


def node_metadata(passage: dict[str, Any]) -> dict[str, Any]:
    """Every field the server sent but the text and score, flattened; ``text_is_snippet`` when
    only the 300-character snippet came (a non-streamed answer's sources)."""
    meta: dict[str, Any] = {}
    for key, value in passage.items():
        if key in DROPPED or value is None:
            continue
        meta[key] = SECTION_JOIN.join(map(str, value)) if isinstance(value, list) else value
    pages = page_label(passage.get("page_start"), passage.get("page_end"))
    if pages:
        meta["pages"] = pages
    if passage.get("text") is None:
        meta["text_is_snippet"] = True
    return meta


def page_label(start: Any, end: Any) -> str:
    if start is None:
        return ""
    return str(start) if end in (None, start) else f"{start}-{end}"


def source_nodes(
    sources: Iterable[dict[str, Any]], cited: Iterable[int] = ()
) -> list[NodeWithScore]:
    """An answer's sources in their order (source ``n`` is ``[n]`` in the text), each with
    ``metadata["n"]`` and ``metadata["cited"]``."""
    numbers = set(cited)
    nodes = [passage_node(s) for s in sources]
    mark_cited(nodes, numbers)
    return nodes


def mark_cited(nodes: list[NodeWithScore], cited: set[int]) -> None:
    for node in nodes:
        node.node.metadata["cited"] = node.node.metadata.get("n") in cited
        if "cited" not in node.node.excluded_llm_metadata_keys:
            node.node.excluded_llm_metadata_keys.append("cited")
            node.node.excluded_embed_metadata_keys.append("cited")
