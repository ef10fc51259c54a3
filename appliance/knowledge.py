"""Document services of an unlocked home: the ingestion pipeline, the registry and retrieval.

Built by :class:`appliance.wiring.Appliance`; the heavy parts (embedding model, Milvus) load
lazily, once per process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ingest.chunk import ChunkParams
from ingest.embed import Embedder
from ingest.milvus_conn import ConnectOptions
from ingest.parse import ParseLimits
from ingest.pipeline import IngestOptions, Pipeline
from ingest.reasons import open_detail
from ingest.registry import Document, Registry
from ingest.retry import RetryPolicy
from ingest.sparse import TermHasher
from ingest.store import ChunkStore
from secure.home import UnlockedHome
from secure.keys import LABEL_BM25_TERMS, LABEL_CONTENT_HMAC
from secure.records import RecordCipher
from secure.vault import DocumentVault, open_collection_key

from .config import Settings
from .errors import ConfigError
from .rag.dense_memory import DenseMemory
from .rag.retrieve import Retriever
from .wiring import dense_index, dense_memory_wanted, fusion_policy

PUBLIC_GROUP = "public"
REGISTRY_FILE = "registry.db"
CHUNK_KEY_CONTEXT = "collection:chunks"


def effective_groups(groups: Any) -> list[str]:
    """A user's groups plus `public`, which everyone may read."""
    return sorted({*groups, PUBLIC_GROUP})


@dataclass
class Knowledge:
    settings: Settings
    home: UnlockedHome

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.settings.home / REGISTRY_FILE)

    @cached_property
    def embedder(self) -> Embedder:
        e = self.settings.embedding
        return Embedder.load(
            e.model,
            device=e.device,
            batch_size=e.batch_size,
            threads=e.threads or None,
            trace_queries=e.trace_queries,
        )

    @cached_property
    def store(self) -> ChunkStore:
        uri = self.settings.milvus_uri
        if "://" not in uri:
            Path(uri).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        info, m = self.embedder.info, self.settings.milvus
        return ChunkStore.open(
            uri,
            collection=m.collection,
            dim=info.dimension,
            model_id=info.model_id,
            token=m.token,
            dense_index=dense_index(self.settings),
            timeout=m.timeout_s,
            connect=connect_options(self.settings),
        )

    @cached_property
    def cipher(self) -> RecordCipher:
        key_file = self.home.layout.key_stores / "chunks.json"
        if not key_file.exists() and self.store.count() > 0:
            raise ConfigError(
                f"The chunk collection holds data but its key store {key_file} is missing.",
                hint="Restore the key store from backup; a new key could not read the chunks.",
            )
        key = open_collection_key(
            key_file,
            self.home.keyring,
            context=CHUNK_KEY_CONTEXT,
        )
        return RecordCipher(key, context=CHUNK_KEY_CONTEXT)

    @cached_property
    def hasher(self) -> TermHasher:
        return TermHasher(self.home.derive(LABEL_BM25_TERMS))

    @cached_property
    def vault(self) -> DocumentVault:
        return DocumentVault(self.settings.home / "vault", self.home.keyring)

    def pipeline(
        self, events: Any = None, retry_sleep: Callable[[float], None] = time.sleep
    ) -> Pipeline:
        i = self.settings.ingest
        options = IngestOptions(
            mode=i.mode,
            limits=ParseLimits(
                max_bytes=i.max_file_mb * 2**20,
                timeout_s=i.timeout_s,
                ocr=i.ocr,
                ocr_languages=i.ocr_languages,
                max_pages=i.max_pages,
                nice=i.parse_nice,
            ),
            chunking=ChunkParams(
                max_tokens=min(i.chunk_max_tokens, self.embedder.info.max_tokens),
                overlap_tokens=i.chunk_overlap_tokens,
            ),
            settle_s=i.settle_s,
            parse_ahead=i.parse_ahead,
            ahead_chunks=i.parse_ahead_chunks,
            retry=retry_policy(self.settings),
        )
        drop = self.settings.drop_dir
        drop.mkdir(parents=True, exist_ok=True)
        return Pipeline(
            drop=drop,
            registry=self.registry,
            store=self.store,
            embedder=self.embedder,
            hasher=self.hasher,
            cipher=self.cipher,
            content_key=self.home.derive(LABEL_CONTENT_HMAC),
            vault=self.vault if i.mode == "inbox" else None,
            options=options,
            events=events,
            retry_sleep=retry_sleep,
        )

    def failure_detail(self, doc: Document, *, actor: str, now: int) -> str:
        """The sealed detail of ``doc``'s last failure (the parser's own message, which can
        quote the document or name a path), for an administrator; audited before it opens."""
        self.home.record(
            "document.details",
            actor=actor,
            now=now,
            object=doc.doc_id,
            details={"group": doc.group, "code": doc.error_code},
        )
        return open_detail(
            self.cipher, source=doc.source, rel_path=doc.rel_path, sealed=doc.error_detail
        )

    @cached_property
    def dense_memory(self) -> DenseMemory | None:
        """The in-memory dense index when `retrieval.dense_memory` asks for one (not loaded
        until :meth:`start_dense_memory`: one-shot commands search Milvus)."""
        if not dense_memory_wanted(self.settings):
            return None
        max_bytes = self.settings.retrieval.dense_memory_mb * 2**20
        return DenseMemory(self.store, self.registry, max_bytes=max_bytes)

    def start_dense_memory(self) -> None:
        """Load the in-memory dense index in the background (long-running servers)."""
        if self.dense_memory is not None:
            self.dense_memory.start()

    def close_dense_memory(self) -> None:
        if "dense_memory" in self.__dict__ and self.dense_memory is not None:
            self.dense_memory.close()

    @cached_property
    def retriever(self) -> Retriever:
        return Retriever(
            store=self.store,
            embedder=self.embedder,
            registry=self.registry,
            hasher=self.hasher,
            cipher=self.cipher,
            embedder_languages=self.embedder.info.languages,
            candidates=self.settings.retrieval.candidates,
            fusion=fusion_policy(self.settings),
            memory=self.dense_memory,
        )


def connect_options(settings: Settings) -> ConnectOptions:
    m = settings.milvus
    return ConnectOptions(
        reconnect_max_s=m.reconnect_max_s,
        tls_ca=m.tls_ca,
        tls_cert=m.tls_cert,
        tls_key=m.tls_key,
        tls_server_name=m.tls_server_name,
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    m = settings.milvus
    return RetryPolicy(
        for_s=m.retry_for_s,
        initial_s=m.retry_initial_s,
        max_s=max(m.retry_max_s, m.retry_initial_s),
    )


class AuditEvents:
    """Writes one audit entry per ingested, quarantined or deleted file (no file names: they
    are protected as HMACs unless settings allow plain question logging)."""

    def __init__(self, home: UnlockedHome, *, actor: str, plain_names: bool = False) -> None:
        self.home, self.actor, self.plain_names = home, actor, plain_names

    def file_done(self, result: Any) -> None:
        import time

        action = {
            "indexed": "document.index",
            "failed": "document.quarantine",
            "deleted": "document.delete",
        }.get(result.outcome, f"document.{result.outcome}")
        name = result.rel_path if self.plain_names else self.home.audit.protect(result.rel_path)
        details: dict[str, str | int | bool] = {"group": result.group, "name": name}
        if result.outcome == "indexed":
            details.update(chunks=result.chunks, pages=result.pages)
        self.home.record(
            action,
            actor=self.actor,
            now=int(time.time()),
            object=result.doc_id or "",
            reason=result.code,
            outcome="refused" if result.outcome == "failed" else "ok",
            details=details,
        )
