"""Writing one document version, and cleaning up after versions that did not finish.

Steps 2-6 of the crash-safe sequence in `ingest.pipeline` (the registry records the version as
``indexing``, its chunks go to Milvus and the original into the vault, one transaction makes it
current, superseded versions are deleted, an inbox original is removed), and the recovery that
deletes what an interrupted or superseded version left in Milvus and the vault. Milvus calls
go through the pipeline's :class:`~ingest.retry.Retrier`, so they ride out outages.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from secure.records import RecordCipher
from secure.vault import DocumentVault

from .drop import Candidate, open_candidate
from .errors import StoreUnavailable
from .jobs import FileResult, Prepared
from .records import build_records
from .registry import Registry, Unfinished
from .retry import Retrier
from .sparse import Bm25Params
from .store import ChunkRecord, ChunkStore

__all__ = ["VersionWriter"]


@dataclass
class VersionWriter:
    source: str  # "inbox" or "mirror"
    registry: Registry
    store: ChunkStore
    cipher: RecordCipher
    vault: DocumentVault | None
    milvus: Retrier
    bm25: Bm25Params

    def write(
        self, candidate: Candidate, prepared: Prepared, digest: str, *, original: bool = True
    ) -> FileResult:
        """Index an embedded document as a new version of its file; ``original``: keep the
        file itself in the vault (inbox mode) and remove it from the drop folder."""
        t0 = time.perf_counter()
        opened = open_candidate(candidate) if original and self.vault is not None else None
        doc_id, version = self.registry.begin_version(
            source=self.source,
            rel_path=candidate.rel_path,
            group=candidate.group,
            content_hmac=digest,
            size=candidate.size,
            fmt=candidate.path.suffix.lower(),
        )
        try:
            records, counts = build_records(
                doc_id,
                version,
                candidate.group,
                prepared,
                corpus=self.registry.corpus([candidate.group]),
                cipher=self.cipher,
                bm25=self.bm25,
            )
            self.insert(doc_id, version, records)
            if self.vault is not None and opened is not None:
                # Record the storage id first: a crash during put leaves a known id to clean up.
                storage_id = secrets.token_hex(16)
                self.registry.set_version_vault(doc_id, version, storage_id)
                with opened.reader() as original_bytes:
                    self.vault.put(original_bytes, storage_id=storage_id)
            title = self.cipher.seal(
                f"title:{doc_id}:{version}", prepared.parsed.title.encode("utf-8")
            )
            superseded = self.registry.commit_version(
                doc_id,
                version,
                counts=counts,
                pages=prepared.parsed.pages,
                title_enc=title,
                size=candidate.size,
                fmt=candidate.path.suffix.lower(),
                warnings=prepared.parsed.warnings,
            )
        except StoreUnavailable:  # Milvus is gone: recover() deletes this version later
            if opened is not None:
                opened.close()
            raise
        except BaseException:
            self.discard(Unfinished(doc_id, version, ""))
            if opened is not None:
                opened.close()
            raise
        self.cleanup(superseded)
        if opened is not None:
            with opened:
                if self.source == "inbox":
                    opened.unlink_if_same()
        stages = dict(prepared.stages, write_s=time.perf_counter() - t0)
        return FileResult(
            candidate.rel_path,
            "indexed",
            doc_id,
            candidate.group,
            pages=prepared.parsed.pages,
            chunks=len(prepared.chunks),
            stages=stages,
            warnings=prepared.parsed.warnings,
        )

    def delete_document(self, doc_id: str) -> None:
        for item in self.registry.delete(doc_id):
            self.discard(item)
        self.registry.purge(doc_id)

    def recover(self) -> int:
        """Delete what interrupted or superseded versions left in Milvus and the vault."""
        items = self.registry.unfinished()
        self.cleanup(items)
        if self.vault is not None:
            self.vault.sweep_partial()
        return len(items)

    def cleanup(self, items: Iterable[Unfinished]) -> None:
        for item in items:
            self.discard(item)

    def insert(self, doc_id: str, version: int, records: list[ChunkRecord]) -> None:
        """Write a version's chunks; after an outage, first delete what a failed attempt may
        have left (a batch written before the server died, or one whose reply was lost), and
        count the rows afterwards: a chunk written twice would be retried once more."""

        def again() -> None:
            self.store.delete_document(doc_id, version=version)
            self.store.insert(records)
            if self.store.count(doc_id, version) != len(records):
                raise StoreUnavailable(f"The rows of {doc_id} did not match after a retry.")

        self.milvus.call(lambda: self.store.insert(records), what=f"writing {doc_id}", again=again)

    def discard(self, item: Unfinished) -> None:
        self.milvus.call(
            lambda: self.store.delete_document(item.doc_id, version=item.version),
            what=f"deleting {item.doc_id} version {item.version}",
        )
        if item.vault_id and self.vault is not None:
            self.vault.delete(item.vault_id)
        self.registry.cleaned(item)
