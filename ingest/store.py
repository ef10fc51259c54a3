"""The Milvus adapter for the chunk collection: the only module that talks to `pymilvus`.

One code path for Milvus Lite (a local ``*.db`` file, the default) and a Milvus server
(``http://host:19530`` plus a token). The collection layout, limits and index choice live in
`ingest.schema`; this module creates or opens the collection (refusing one written by another
embedder), writes and deletes rows, and runs the two single-vector searches that retrieval
fuses. Every search is filtered by the caller's groups, and an empty group list returns nothing
without asking Milvus, so "no groups" can never mean "all rows".

The connection (a short reconnection backoff, TLS, the Lite server's lifetime) and the mapping
of failures to :class:`~ingest.errors.StoreUnavailable` (server down or too slow) or
``milvus-error`` live in `ingest.milvus_conn`.

Filters are built only from validated values (group names, document ids, integers): Milvus Lite
2.5 has no filter templates, and a malformed filter makes pymilvus retry for minutes, so nothing
unchecked ever reaches an expression. Every call carries ``timeout`` so a dead server fails
fast with an actionable error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from .errors import IngestError
from .milvus_conn import ConnectOptions, connect_client, release_lite, store_error
from .schema import (
    DEFAULT_COLLECTION,
    DEFAULT_DENSE_INDEX,
    F_DENSE,
    F_DOC,
    F_GROUPS,
    F_ID,
    F_KIND,
    F_LANGUAGE,
    F_PAGE,
    F_PAYLOAD,
    F_SPARSE,
    F_TOKENS,
    F_VERSION,
    LITE_INDEX_TYPES,
    MAX_DIM,
    MAX_DOC_ID,
    MAX_GROUP,
    MAX_GROUPS,
    MAX_ID,
    MAX_KIND,
    MAX_LANGUAGE,
    MAX_LIMIT,
    MAX_PAYLOAD,
    OUTPUT_FIELDS,
    SPARSE_INDEX,
    SPARSE_SEARCH_PARAMS,
    ChunkRecord,
    CollectionMeta,
    DenseIndex,
    Hit,
    check_doc_id,
    check_version,
    dense_vector,
    groups_filter,
    sparse_vector,
)

__all__ = ["ChunkStore"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_CHUNK_ID = re.compile(r"[A-Za-z0-9._-]{1,256}:[0-9]{1,18}:[0-9]{1,18}")
_BATCH_ROWS = 512
_BATCH_BYTES = 16 << 20
_ITER_BATCH = 4096
_VECTOR_BATCH = 500  # Lite's time per page grows faster than its rows
log = logging.getLogger(__name__)


class ChunkStore:
    """One open chunk collection; build it with :meth:`open`, end it with :meth:`close`."""

    def __init__(
        self,
        client: Any,
        name: str,
        meta: CollectionMeta,
        lite: str | None,
        timeout: float,
        dense_index: DenseIndex = DEFAULT_DENSE_INDEX,
    ) -> None:
        self._client = client
        self.name = name
        self.meta = meta
        self._lite = lite
        self._timeout = timeout
        self.dense_index = dense_index
        self.rebuilt_from: str | None = None  # the index replaced at open, if one was

    @classmethod
    def open(
        cls,
        uri: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        dim: int,
        model_id: str,
        token: str = "",
        timeout: float = 30.0,
        dense_index: DenseIndex = DEFAULT_DENSE_INDEX,
        connect: ConnectOptions | None = None,
    ) -> ChunkStore:
        """Open the collection, creating it if missing; SchemaMismatch if another embedder
        wrote it. ``uri``: a ``*.db`` path (Milvus Lite) or ``http(s)://host:port``;
        ``timeout``: seconds one call may take (StoreUnavailable past it).

        An existing collection whose dense index differs from ``dense_index`` (type or build
        parameters) gets its index rebuilt from the stored vectors before it is loaded
        (:attr:`rebuilt_from` then names the old one); nothing is re-embedded."""
        if not _NAME.fullmatch(collection):
            raise ValueError(f"Invalid collection name {collection!r}: use [A-Za-z0-9_].")
        if not 0 < dim <= MAX_DIM or not model_id:
            raise ValueError("dim must be in 1..32768 and model_id non-empty.")
        if uri.endswith(".db") and dense_index.kind not in LITE_INDEX_TYPES:
            raise IngestError(
                f"Milvus Lite cannot build a {dense_index.kind} index.",
                code="milvus-index",
                hint="Set milvus.index_type to FLAT, IVF_FLAT or AUTOINDEX, or use a Milvus "
                "server (milvus.uri = http://host:19530).",
            )
        client, lite = connect_client(uri, token, timeout, connect or ConnectOptions())
        meta = CollectionMeta(model_id, dim)
        store = cls(client, collection, meta, lite, timeout, dense_index)
        try:
            store._ensure_collection()
        except BaseException:
            store.close()
            raise
        return store

    # -- life cycle ---------------------------------------------------------------------------

    def _ensure_collection(self) -> None:
        import grpc
        from pymilvus import MilvusException

        try:
            if self._client.has_collection(self.name, timeout=self._timeout):
                self._check_existing()
                self._check_dense_index()
            else:
                self._create()
            self._client.load_collection(self.name, timeout=self._timeout)
        except (MilvusException, grpc.RpcError) as exc:
            raise store_error(exc, timeout=self._timeout) from None

    def _check_existing(self) -> None:
        """The description names the model; the dense field's own width is the truth for dim."""
        info = self._client.describe_collection(self.name, timeout=self._timeout)
        found = CollectionMeta.from_description(self.name, str(info.get("description", "")))
        for spec in info.get("fields", []):
            if spec.get("name") == F_DENSE:
                dim = int(spec.get("params", {}).get("dim", -1))
                found = CollectionMeta(found.model_id, dim, found.schema)
        found.check_matches(self.name, self.meta)

    def _check_dense_index(self) -> None:
        """Rebuild the dense index when the settings ask for another one (derived data: the
        vectors stay, only the index over them is replaced)."""
        found = self._client.describe_index(self.name, F_DENSE, timeout=self._timeout) or {}
        if self.dense_index.matches(found):
            return
        self.rebuilt_from = DenseIndex.from_described(found) if found else "none"
        log.warning(
            "Rebuilding the dense index of collection %s: %s -> %s (from the stored vectors).",
            self.name,
            self.rebuilt_from,
            self.dense_index.describe(),
        )
        self._client.release_collection(self.name, timeout=self._timeout)
        if found:
            self._client.drop_index(self.name, F_DENSE, timeout=self._timeout)
        index = self._client.prepare_index_params()
        index.add_index(F_DENSE, **self.dense_index.index_spec())
        self._client.create_index(self.name, index, timeout=self._timeout)

    def dense_index_info(self) -> dict[str, Any]:
        """What Milvus reports about the dense index now (type, parameters, rows indexed)."""
        return dict(self._call("describe_index", self.name, F_DENSE) or {})

    def _create(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(
            auto_id=False, enable_dynamic_field=False, description=self.meta.to_description()
        )
        schema.add_field(F_ID, DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
        schema.add_field(F_DOC, DataType.VARCHAR, max_length=MAX_DOC_ID)
        schema.add_field(F_VERSION, DataType.INT64)
        schema.add_field(
            F_GROUPS,
            DataType.ARRAY,
            element_type=DataType.VARCHAR,
            max_capacity=MAX_GROUPS,
            max_length=MAX_GROUP,
        )
        schema.add_field(F_PAGE, DataType.INT64)
        schema.add_field(F_KIND, DataType.VARCHAR, max_length=MAX_KIND)
        schema.add_field(F_LANGUAGE, DataType.VARCHAR, max_length=MAX_LANGUAGE)
        schema.add_field(F_TOKENS, DataType.INT64)
        schema.add_field(F_PAYLOAD, DataType.VARCHAR, max_length=MAX_PAYLOAD)
        schema.add_field(F_DENSE, DataType.FLOAT_VECTOR, dim=self.meta.dimension)
        schema.add_field(F_SPARSE, DataType.SPARSE_FLOAT_VECTOR)
        index = self._client.prepare_index_params()
        index.add_index(F_DENSE, **self.dense_index.index_spec())
        index.add_index(F_SPARSE, **SPARSE_INDEX)
        self._client.create_collection(
            self.name,
            schema=schema,
            index_params=index,
            consistency_level="Strong",  # a delete must hide the rows from the next search
            timeout=self._timeout,
        )

    def flush(self) -> None:
        """Persist inserted rows now (Milvus also flushes on its own schedule)."""
        self._call("flush", self.name)

    def drop(self) -> None:
        """Delete the whole collection (scratch collections, e.g. `appliance eval`), then close."""
        self._call("drop_collection", self.name)
        self.close()

    def close(self) -> None:
        """Close the connection; the last user of a Lite file stops its server process."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
            release_lite(self._lite)

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------------------

    def insert(self, records: Sequence[ChunkRecord]) -> None:
        """Insert rows in batches; every row is checked first, so a bad one inserts nothing."""
        rows = [record.to_row(self.meta.dimension) for record in records]
        for batch in _batches(rows):
            self._call("insert", self.name, data=batch)

    def delete_document(self, doc_id: str, *, version: int | None = None) -> None:
        """Delete every chunk of ``doc_id``, or only those of one version."""
        expr = f'{F_DOC} == "{check_doc_id(doc_id)}"'
        if version is not None:
            expr += f" and {F_VERSION} == {check_version(version)}"
        self._call("delete", self.name, filter=expr)

    def delete_versions_except(self, doc_id: str, keep: int) -> None:
        """Delete the chunks of every version of ``doc_id`` but ``keep`` (replace-on-redrop)."""
        expr = f'{F_DOC} == "{check_doc_id(doc_id)}" and {F_VERSION} != {check_version(keep)}'
        self._call("delete", self.name, filter=expr)

    # -- reads --------------------------------------------------------------------------------

    def search_dense(
        self, vector: Sequence[float] | Any, *, groups: Sequence[str], limit: int
    ) -> list[Hit]:
        """Nearest chunks by inner product (cosine) among rows shared with ``groups``."""
        if not groups:
            return []
        query = dense_vector(vector, self.meta.dimension)
        params = self.dense_index.search_params(limit)
        return self._search(query, F_DENSE, params, groups, limit)

    def search_sparse(
        self, vector: Mapping[int, float], *, groups: Sequence[str], limit: int
    ) -> list[Hit]:
        """Best chunks by keyed-BM25 inner product among rows shared with ``groups``."""
        if not groups:
            return []
        query = sparse_vector(vector)
        if not query:
            return []
        return self._search(query, F_SPARSE, SPARSE_SEARCH_PARAMS, groups, limit)

    def _search(
        self, query: Any, field: str, params: dict[str, Any], groups: Sequence[str], limit: int
    ) -> list[Hit]:
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}.")
        result = self._call(
            "search",
            self.name,
            data=[query],
            anns_field=field,
            search_params=params,
            limit=limit,
            filter=groups_filter(groups),
            output_fields=list(OUTPUT_FIELDS),
        )
        return [Hit.from_result(hit) for hit in result[0]]

    def get(self, chunk_id: str) -> Hit | None:
        """One row by its id (score 0), e.g. to show a cited passage again; None if absent.
        The id must look like ``<doc_id>:<version>:<index>`` (it reaches a filter)."""
        if not isinstance(chunk_id, str) or not _CHUNK_ID.fullmatch(chunk_id):
            raise ValueError(f"Invalid chunk id {chunk_id!r}.")
        rows = self._call(
            "query",
            self.name,
            filter=f'{F_ID} == "{chunk_id}"',
            output_fields=[F_ID, *OUTPUT_FIELDS],
        )
        if not rows:
            return None
        return Hit.from_result({"id": rows[0][F_ID], "distance": 0.0, "entity": rows[0]})

    def version_rows(self, doc_id: str, version: int) -> tuple[list[str], np.ndarray, list[str]]:
        """(chunk ids, their dense vectors as float32 rows, their sealed payloads) of one version
        of a document, for the in-memory dense index. Paged: Lite answers large results slowly."""
        expr = f'{F_DOC} == "{check_doc_id(doc_id)}" and {F_VERSION} == {check_version(version)}'
        ids: list[str] = []
        vectors: list[Any] = []
        payloads: list[str] = []
        for row in self._scan(expr, [F_ID, F_DENSE, F_PAYLOAD], batch=_VECTOR_BATCH):
            ids.append(str(row[F_ID]))
            vectors.append(row[F_DENSE])
            payloads.append(str(row[F_PAYLOAD]))
        matrix = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.meta.dimension)
        return ids, matrix, payloads

    def count(self, doc_id: str | None = None, version: int | None = None) -> int:
        """Rows visible now (deleted rows excluded), of one document (and version) if given.
        Unlike a search, query or scan, which show one row per chunk id, this counts a chunk
        stored twice twice (`ingest.reconcile` finds duplicates so)."""
        expr = f'{F_DOC} == "{check_doc_id(doc_id)}"' if doc_id is not None else ""
        if version is not None:
            expr = f"{expr} and " if expr else ""
            expr += f"{F_VERSION} == {check_version(version)}"
        result = self._call("query", self.name, filter=expr, output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def doc_ids(self) -> set[str]:
        """Every document id with at least one chunk (for reconciling with the registry)."""
        return {row[F_DOC] for row in self._scan(f"{F_VERSION} >= 0", [F_DOC])}

    def chunk_ids(self, doc_id: str) -> list[str]:
        """The ids of every chunk of ``doc_id`` (all versions), sorted."""
        expr = f'{F_DOC} == "{check_doc_id(doc_id)}"'
        return sorted(row[F_ID] for row in self._scan(expr, [F_ID]))

    def index_rows(self) -> list[tuple[str, str, int]]:
        """(chunk id, document id, version) of every row, for `ingest.reconcile` (one scan)."""
        rows = self._scan(f"{F_VERSION} >= 0", [F_ID, F_DOC, F_VERSION])
        return [(str(r[F_ID]), str(r[F_DOC]), int(r[F_VERSION])) for r in rows]

    def _scan(
        self, expr: str, fields: list[str], batch: int = _ITER_BATCH
    ) -> Iterator[dict[str, Any]]:
        """Every matching row, page by page (a plain query stops at 16,384 rows)."""
        iterator = self._call(
            "query_iterator", self.name, batch_size=batch, filter=expr, output_fields=fields
        )
        try:
            while page := self._guarded(iterator.next):
                yield from page
        finally:
            iterator.close()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            raise IngestError("The chunk store is closed.", code="store-closed")
        call = getattr(self._client, method)
        return self._guarded(lambda: call(*args, timeout=self._timeout, **kwargs))

    def _guarded(self, call: Any) -> Any:
        """``call()``, its pymilvus or gRPC failure mapped by `ingest.milvus_conn`."""
        import grpc
        from pymilvus import MilvusException

        try:
            return call()
        except (MilvusException, grpc.RpcError) as exc:
            raise store_error(exc, timeout=self._timeout) from None


def _batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Split rows so one gRPC message stays far below Milvus' 64 MiB limit."""
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        row_size = len(row[F_PAYLOAD]) + 4 * len(row[F_DENSE]) + 12 * len(row[F_SPARSE]) + 256
        if batch and (len(batch) >= _BATCH_ROWS or size + row_size > _BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row_size
    if batch:
        yield batch
