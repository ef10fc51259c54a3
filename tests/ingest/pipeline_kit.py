"""A real knowledge base in a temporary directory for pipeline tests: Milvus (a Lite file, or a
real server process when given a :class:`~tests.support.milvus_server.MilvusBackend`), SQLite,
the bundled embedder, real keys and a real document vault (no appliance home needed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from appliance.rag.retrieve import Retriever
from ingest.pipeline import IngestOptions, Pipeline
from ingest.registry import Registry
from ingest.retry import RetryPolicy
from ingest.sparse import TermHasher
from ingest.store import ChunkStore
from secure.keyring import Keyring
from secure.records import RecordCipher
from secure.vault import DocumentVault, open_collection_key
from tests.support.milvus_server import MilvusBackend


@dataclass
class Kit:
    root: Path
    drop: Path
    registry: Registry
    store: ChunkStore
    pipeline: Pipeline
    retriever: Retriever
    vault: DocumentVault | None
    uri: str = ""

    def search(self, query: str, groups: list[str], limit: int = 5) -> list[str]:
        result = self.retriever.search(query, groups=groups, limit=limit)
        return [p.text for p in result.passages]

    def chunk_versions(self, doc_id: str) -> set[int]:
        return {int(cid.split(":")[1]) for cid in self.store.chunk_ids(doc_id)}


def build_kit(
    root: Path,
    embedder: object,
    *,
    mode: str = "inbox",
    ark: bytes | None = None,
    keys: dict[str, bytes] | None = None,
    milvus: MilvusBackend | None = None,
    retry: RetryPolicy | None = None,
    timeout: float = 30.0,
) -> Kit:
    """Build (or reopen, with the same ``ark`` and ``keys``) a knowledge base under ``root``;
    its chunks in ``root/milvus.db``, a Lite file or ``milvus``'s server for that file."""
    root.mkdir(parents=True, exist_ok=True)
    ark = ark or os.urandom(32)
    keys = keys if keys is not None else {"terms": os.urandom(32), "content": os.urandom(32)}
    ring_path = root / "keyring.json"
    keyring = Keyring.load(ring_path, ark) if ring_path.exists() else Keyring.create(ring_path, ark)
    cipher = RecordCipher(
        open_collection_key(root / "chunks-key.json", keyring, context="collection:chunks"),
        context="collection:chunks",
    )
    registry = Registry(root / "registry.db")
    info = embedder.info  # type: ignore[attr-defined]
    uri = milvus.uri(root / "milvus.db") if milvus is not None else str(root / "milvus.db")
    store = ChunkStore.open(uri, dim=info.dimension, model_id=info.model_id, timeout=timeout)
    vault = DocumentVault(root / "vault", keyring) if mode == "inbox" else None
    hasher = TermHasher(keys["terms"])
    drop = root / "drop"
    drop.mkdir(exist_ok=True)
    pipeline = Pipeline(
        drop=drop,
        registry=registry,
        store=store,
        embedder=embedder,  # type: ignore[arg-type]
        hasher=hasher,
        cipher=cipher,
        content_key=keys["content"],
        vault=vault,
        options=IngestOptions(mode=mode, settle_s=0.0, retry=retry or RetryPolicy()),
    )  # type: ignore[arg-type]
    retriever = Retriever(
        store=store,
        embedder=embedder,
        registry=registry,
        hasher=hasher,  # type: ignore[arg-type]
        cipher=cipher,
        embedder_languages=info.languages,
        candidates=20,
    )
    kit = Kit(root, drop, registry, store, pipeline, retriever, vault, uri)
    kit.ark, kit.keys = ark, keys  # type: ignore[attr-defined]
    return kit


def put(drop: Path, rel: str, data: bytes | str) -> Path:
    path = drop / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path
