"""`ApplianceRetriever`: a LlamaIndex retriever over the appliance's `POST /v1/search`."""

from __future__ import annotations

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..http import ApplianceClient, SearchMode
from .nodes import passage_node


class ApplianceRetriever(BaseRetriever):
    """The ``similarity_top_k`` best passages the client's user may see (their groups plus
    ``public``: the server filters, whatever the query), ranked and scored by the server's
    ``mode`` search (``hybrid``, ``dense`` or ``sparse``)."""

    def __init__(
        self,
        client: ApplianceClient,
        *,
        similarity_top_k: int = 8,
        mode: SearchMode = "hybrid",
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if not 1 <= similarity_top_k <= 100:
            raise ValueError(f"similarity_top_k must be 1 to 100, not {similarity_top_k}.")
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self._client = client
        self.similarity_top_k = similarity_top_k
        self.mode: SearchMode = mode

    def __repr__(self) -> str:
        return f"ApplianceRetriever({self._client!r}, top_k={self.similarity_top_k})"

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        passages = self._client.search(
            query_bundle.query_str, limit=self.similarity_top_k, mode=self.mode
        )
        return [passage_node(p) for p in passages]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        passages = await self._client.asearch(
            query_bundle.query_str, limit=self.similarity_top_k, mode=self.mode
        )
        return [passage_node(p) for p in passages]
