"""The Milvus data contract of the chunk collection: fields, limits, index choice, the records
written and the hits read back, and the encrypted passage payload.

Pure module (no Milvus import): `ingest.store` turns it into a collection, the pipeline builds
:class:`ChunkRecord` values, retrieval reads :class:`Hit` values and opens their payloads.

Only non-sensitive fields are stored in clear: ids, version, access groups, page, chunk kind,
language and token count. Everything written by a person (text, section titles, document
title) is inside ``payload``: a :class:`secure.records.RecordCipher` seal of
:class:`PassageText`, bound to the chunk id, so Milvus never holds plaintext (SECURITY.md) and a
payload moved onto another row does not open. The sparse vector's term ids are keyed hashes
computed by `ingest.sparse`, never words.

The collection's description holds :class:`CollectionMeta` (format, schema version, embedding
model id, dimension), checked on every open: a collection built by another model is refused
with :class:`~ingest.errors.SchemaMismatch` instead of silently mixing vector spaces.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from secure.records import PREFIX as SEALED_PREFIX
from secure.records import RecordCipher

from .errors import IngestError, SchemaMismatch

__all__ = [
    "DEFAULT_DENSE_INDEX",
    "ChunkRecord",
    "CollectionMeta",
    "DenseIndex",
    "Hit",
    "PassageText",
    "check_doc_id",
    "check_group",
    "groups_filter",
    "open_passage",
    "seal_passage",
]

FORMAT = "kapp-chunks"
SCHEMA_VERSION = 1
DEFAULT_COLLECTION = "chunks"

# Field names and widths. VARCHAR widths are bytes of UTF-8; 65,535 is Milvus' maximum.
F_ID, F_DOC, F_VERSION, F_GROUPS, F_PAGE = "id", "doc_id", "version", "groups", "page"
F_KIND, F_LANGUAGE, F_TOKENS, F_PAYLOAD = "kind", "language", "tokens", "payload"
F_DENSE, F_SPARSE = "dense", "sparse"
MAX_ID = 512
MAX_DOC_ID = 256
MAX_GROUPS = 64
MAX_GROUP = 64
MAX_KIND = 32
MAX_LANGUAGE = 16
MAX_PAYLOAD = 65_535
MAX_DIM = 32_768
MAX_SPARSE_INDEX = 2**32 - 2  # Milvus reserves 2**32-1
MAX_LIMIT = 16_384  # Milvus' top-k ceiling
OUTPUT_FIELDS = (F_DOC, F_VERSION, F_PAGE, F_GROUPS, F_PAYLOAD, F_KIND, F_LANGUAGE, F_TOKENS)

# Index choice, in one place. The dense index is a setting (:class:`DenseIndex`, built from
# `milvus.index_type` and its parameters); docs/benchmarks.md has the recall and latency measured
# for each choice at 100k chunks (bench/bench_dense_index.py).
DENSE_METRIC = "IP"  # vectors are L2-normalised, so IP is cosine
SPARSE_INDEX: dict[str, Any] = {
    "index_type": "SPARSE_INVERTED_INDEX",
    "metric_type": "IP",
    "params": {"inverted_index_algo": "DAAT_MAXSCORE"},
}
SPARSE_SEARCH_PARAMS: dict[str, Any] = {"metric_type": "IP", "params": {}}

DENSE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX")
LITE_INDEX_TYPES = frozenset({"FLAT", "IVF_FLAT", "AUTOINDEX"})  # what Milvus Lite 2.5 builds


@dataclass(frozen=True)
class DenseIndex:
    """How Milvus indexes and searches the dense vectors (the `milvus.index_*` settings).

    * ``FLAT``: exact search, every row compared; no parameters.
    * ``IVF_FLAT``: rows clustered into ``ivf_nlist`` lists; a search scans the ``ivf_nprobe``
      nearest lists (more lists scanned: slower, closer to exact).
    * ``HNSW`` (Milvus server only; Lite refuses it): a graph with ``hnsw_m`` links per node,
      built with ``hnsw_ef_construction`` candidates; a search keeps ``hnsw_ef`` candidates
      (at least the number of hits asked for).
    * ``AUTOINDEX``: Milvus chooses (HNSW-like on a server); no parameters of ours.

    The *build* parameters (type, ``hnsw_m``, ``hnsw_ef_construction``, ``ivf_nlist``) are part
    of the index Milvus keeps, so :meth:`matches` compares them with what Milvus describes; the
    *search* parameters (``hnsw_ef``, ``ivf_nprobe``) apply to each search and change nothing
    stored.
    """

    kind: str = "FLAT"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef: int = 128
    ivf_nlist: int = 1024
    ivf_nprobe: int = 64

    def __post_init__(self) -> None:
        if self.kind not in DENSE_INDEX_TYPES:
            kinds = ", ".join(DENSE_INDEX_TYPES)
            raise ValueError(f"Unknown dense index type {self.kind!r}: use one of {kinds}.")
        for name, low, high in (
            ("hnsw_m", 2, 2048),
            ("hnsw_ef_construction", 1, 1 << 16),
            ("hnsw_ef", 1, MAX_LIMIT),
            ("ivf_nlist", 1, 65_536),
            ("ivf_nprobe", 1, 65_536),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"DenseIndex.{name} must be an integer in {low}..{high}.")

    def build_params(self) -> dict[str, int]:
        """The parameters Milvus builds the index with (and reports back in describe_index)."""
        if self.kind == "HNSW":
            return {"M": self.hnsw_m, "efConstruction": self.hnsw_ef_construction}
        if self.kind == "IVF_FLAT":
            return {"nlist": self.ivf_nlist}
        return {}

    def index_spec(self) -> dict[str, Any]:
        """Keyword arguments of pymilvus ``IndexParams.add_index`` for the dense field."""
        return {"index_type": self.kind, "metric_type": DENSE_METRIC, "params": self.build_params()}

    def search_params(self, limit: int) -> dict[str, Any]:
        """``search_params`` of one dense search returning ``limit`` hits."""
        if self.kind == "HNSW":
            return {"metric_type": DENSE_METRIC, "params": {"ef": max(self.hnsw_ef, limit)}}
        if self.kind == "IVF_FLAT":
            nprobe = min(self.ivf_nprobe, self.ivf_nlist)
            return {"metric_type": DENSE_METRIC, "params": {"nprobe": nprobe}}
        return {"metric_type": DENSE_METRIC, "params": {}}

    def matches(self, described: Mapping[str, Any]) -> bool:
        """Whether Milvus' ``describe_index`` answer is this index (type and build parameters;
        Milvus reports parameters as strings and adds its own for AUTOINDEX)."""
        if str(described.get("index_type", "")).upper() != self.kind:
            return False
        return all(str(described.get(k)) == str(v) for k, v in self.build_params().items())

    def describe(self) -> str:
        """How people read it, e.g. ``IVF_FLAT (nlist 1024, nprobe 64)``."""
        params = {**self.build_params(), **self.search_params(1)["params"]}
        if not params:
            return self.kind
        return f"{self.kind} ({', '.join(f'{k} {v}' for k, v in params.items())})"

    @classmethod
    def from_described(cls, described: Mapping[str, Any]) -> str:
        """A short text of what Milvus describes (for messages), e.g. ``IVF_FLAT (nlist 128)``."""
        kind = str(described.get("index_type", "?"))
        params = {k: described[k] for k in ("M", "efConstruction", "nlist") if k in described}
        if not params:
            return kind
        return f"{kind} ({', '.join(f'{k} {v}' for k, v in params.items())})"


DEFAULT_DENSE_INDEX = DenseIndex()


_GROUP = re.compile(r"[a-z0-9._-]{1,64}")
_DOC_ID = re.compile(r"[A-Za-z0-9._-]{1,256}")
_LABEL = re.compile(r"[A-Za-z0-9._-]{0,32}")


def check_group(name: object) -> str:
    """Group names reach filter expressions: only ``[a-z0-9._-]``, 1 to 64 characters."""
    if not isinstance(name, str) or not _GROUP.fullmatch(name):
        raise IngestError(
            f"Invalid group name {name!r}: group names are 1 to 64 characters of a-z, 0-9, "
            "'.', '_' and '-'.",
            code="invalid-group",
            hint="Rename the drop sub-folder or the user's group to use only those characters.",
        )
    return name


def check_doc_id(doc_id: object) -> str:
    """Document ids reach filter expressions: only ``[A-Za-z0-9._-]``, 1 to 256 characters."""
    if not isinstance(doc_id, str) or not _DOC_ID.fullmatch(doc_id):
        raise ValueError(f"Invalid document id {doc_id!r}: use 1-256 of [A-Za-z0-9._-].")
    return doc_id


def check_version(version: object) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version < 2**63:
        raise ValueError(f"Invalid version {version!r}: a non-negative 64-bit integer.")
    return version


def groups_filter(groups: Sequence[str]) -> str:
    """The Milvus filter that keeps rows shared with any of ``groups`` (validated, so the
    JSON string literals below cannot hold quotes or backslashes)."""
    if isinstance(groups, str):
        raise ValueError("groups must be a sequence of names, not one string.")
    names = sorted({check_group(g) for g in groups})
    if not names:
        raise ValueError("An empty group list matches nothing; callers must short-cut it.")
    return f"array_contains_any({F_GROUPS}, {json.dumps(names)})"


@dataclass(frozen=True)
class CollectionMeta:
    """What the collection description records about the vectors in it."""

    model_id: str
    dimension: int
    schema: int = SCHEMA_VERSION

    def to_description(self) -> str:
        return json.dumps(
            {
                "dim": self.dimension,
                "format": FORMAT,
                "model_id": self.model_id,
                "schema": self.schema,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_description(cls, collection: str, text: str) -> CollectionMeta:
        try:
            obj = json.loads(text)
            if obj.get("format") != FORMAT:
                raise ValueError("not ours")
            return cls(str(obj["model_id"]), int(obj["dim"]), int(obj["schema"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            raise SchemaMismatch(
                f"The Milvus collection '{collection}' was not created by the appliance "
                "(its description holds no chunk-collection metadata).",
                hint="Configure another collection name, or drop that collection if it is unused.",
            ) from None

    def check_matches(self, collection: str, wanted: CollectionMeta) -> None:
        """Refuse a collection written by another embedder or an unknown schema version."""
        if (self.model_id, self.dimension) != (wanted.model_id, wanted.dimension):
            raise SchemaMismatch(
                f"The collection '{collection}' was built with {self.model_id} "
                f"({self.dimension}-d); the configured embedder is {wanted.model_id} "
                f"({wanted.dimension}-d).",
                hint="Re-index with `appliance docs reindex` into a new collection, or configure "
                f"the embedding model {self.model_id} again.",
            )
        if self.schema != wanted.schema:
            raise SchemaMismatch(
                f"The collection '{collection}' has chunk schema version {self.schema}; this "
                f"release reads version {wanted.schema}.",
                hint="Re-index with `appliance docs reindex` into a new collection.",
            )


@dataclass(frozen=True)
class ChunkRecord:
    """One row to insert. ``payload`` is already sealed (:func:`seal_passage`); the store
    never sees plaintext. ``tokens`` is the chunk's token count (-1 when unknown)."""

    id: str
    doc_id: str
    version: int
    groups: tuple[str, ...]
    page: int
    kind: str
    language: str
    payload: str
    dense: Sequence[float] | np.ndarray
    sparse: Mapping[int, float]
    tokens: int = -1

    def to_row(self, dim: int) -> dict[str, Any]:
        """The Milvus row, every field checked against the contract (ValueError if not)."""
        if not isinstance(self.id, str) or not 0 < len(self.id.encode("utf-8")) <= MAX_ID:
            raise ValueError(f"Chunk id {self.id!r} must be 1 to {MAX_ID} bytes.")
        if isinstance(self.groups, str) or not self.groups or len(self.groups) > MAX_GROUPS:
            raise ValueError(f"Chunk {self.id} must belong to 1 to {MAX_GROUPS} groups.")
        if not isinstance(self.payload, str) or not self.payload.startswith(SEALED_PREFIX):
            raise ValueError(f"Chunk {self.id}'s payload is not sealed: refusing plaintext.")
        if not self.payload.isascii():
            raise ValueError(f"Chunk {self.id}'s payload must be ASCII (base64).")
        if len(self.payload) > MAX_PAYLOAD:
            raise IngestError(
                f"Chunk {self.id} is too large to store ({len(self.payload)} payload bytes, "
                f"at most {MAX_PAYLOAD}).",
                code="chunk-too-large",
                hint="Lower the chunk size setting and ingest the document again.",
            )
        return {
            F_ID: self.id,
            F_DOC: check_doc_id(self.doc_id),
            F_VERSION: check_version(self.version),
            F_GROUPS: sorted({check_group(g) for g in self.groups}),
            F_PAGE: _int64(self.page, "page"),
            F_KIND: _label(self.kind, "kind"),
            F_LANGUAGE: _label(self.language, "language", MAX_LANGUAGE),
            F_TOKENS: _int64(self.tokens, "tokens"),
            F_PAYLOAD: self.payload,
            F_DENSE: dense_vector(self.dense, dim),
            F_SPARSE: sparse_vector(self.sparse),
        }


@dataclass(frozen=True)
class Hit:
    """One search result: clear metadata, the sealed payload and the retriever's score."""

    id: str
    doc_id: str
    version: int
    page: int
    groups: tuple[str, ...]
    payload: str
    score: float
    kind: str
    language: str
    tokens: int = -1

    @classmethod
    def from_result(cls, hit: Mapping[str, Any]) -> Hit:
        """Parse one entry of a pymilvus search result (``{"id", "distance", "entity"}``)."""
        entity = hit["entity"]
        return cls(
            id=str(hit["id"]),
            doc_id=str(entity[F_DOC]),
            version=int(entity[F_VERSION]),
            page=int(entity[F_PAGE]),
            groups=tuple(str(g) for g in entity[F_GROUPS]),
            payload=str(entity[F_PAYLOAD]),
            score=float(hit["distance"]),
            kind=str(entity[F_KIND]),
            language=str(entity[F_LANGUAGE]),
            tokens=int(entity[F_TOKENS]),
        )


@dataclass(frozen=True)
class PassageText:
    """The sensitive part of a chunk, sealed into ``payload``."""

    text: str
    section_path: tuple[str, ...] = ()
    title: str = ""
    page_start: int | None = None
    page_end: int | None = None

    def to_bytes(self) -> bytes:
        obj = {
            "section_path": list(self.section_path),
            "text": self.text,
            "title": self.title,
            "page_start": self.page_start,
            "page_end": self.page_end,
        }
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> PassageText:
        obj = json.loads(data.decode("utf-8"))
        return cls(
            str(obj["text"]),
            tuple(str(s) for s in obj["section_path"]),
            str(obj["title"]),
            obj.get("page_start"),
            obj.get("page_end"),
        )

    @property
    def section(self) -> str:
        """The breadcrumb as users see it."""
        return " > ".join(self.section_path)


def seal_passage(cipher: RecordCipher, record_id: str, passage: PassageText) -> str:
    return cipher.seal(record_id, passage.to_bytes())


def open_passage(cipher: RecordCipher, record_id: str, payload: str) -> PassageText:
    """Decrypt a hit's payload; :class:`secure.errors.TamperedError` if it was edited or moved
    (a sealed payload that authenticates was written by us, so its JSON is trusted)."""
    return PassageText.from_bytes(cipher.open(record_id, payload))


def dense_vector(vector: Sequence[float] | np.ndarray, dim: int) -> np.ndarray:
    out = np.asarray(vector, dtype=np.float32).reshape(-1)
    if out.shape != (dim,) or not np.isfinite(out).all():
        raise ValueError(f"A dense vector must hold {dim} finite numbers, not {out.shape[0]}.")
    return out


def sparse_vector(vector: Mapping[int, float]) -> dict[int, float]:
    """Term ids are uint32 keyed hashes below 2**32-1; weights finite and non-negative."""
    out: dict[int, float] = {}
    for key, value in vector.items():
        index, weight = int(key), float(value)
        if not 0 <= index <= MAX_SPARSE_INDEX or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"Invalid sparse entry {key!r}: {value!r}.")
        out[index] = weight
    return out


def _int64(value: object, what: str) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise ValueError(f"The chunk's {what} must be an integer.")
    return int(value)


def _label(value: object, what: str, limit: int = MAX_KIND) -> str:
    if not isinstance(value, str) or len(value) > limit or not _LABEL.fullmatch(value):
        raise ValueError(f"The chunk's {what} {value!r} must be up to {limit} of [A-Za-z0-9._-].")
    return value
