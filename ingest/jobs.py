"""What the ingestion pipeline is told and what it reports: options, per-file results, job
reports, and the protocols of its collaborators (split from `ingest.pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .chunk import Chunk, ChunkParams
from .elements import ParsedDocument
from .parse import ParseLimits
from .retry import RetryPolicy
from .sparse import Bm25Params

Mode = Literal["inbox", "mirror"]
Outcome = Literal["indexed", "unchanged", "failed", "deleted", "skipped"]


class EmbedderLike(Protocol):
    tokenizer_json: str | None  # lets parse children count tokens (see ingest.prechunk)

    def count_tokens(self, text: str) -> int: ...
    def embed_documents(self, texts: list[str]) -> Any: ...


class Events(Protocol):
    """Where the pipeline reports what it did (the appliance audits and counts these)."""

    def file_done(self, result: FileResult) -> None: ...


@dataclass(frozen=True)
class IngestOptions:
    mode: Mode = "inbox"
    limits: ParseLimits = field(default_factory=ParseLimits)
    chunking: ChunkParams = field(default_factory=ChunkParams)
    bm25: Bm25Params = field(default_factory=Bm25Params)
    settle_s: float = 2.0
    parse_ahead: int = 2  # files parsed at once (child processes) while others embed
    ahead_chunks: int = 3000  # parsing pauses while this many parsed chunks wait to embed
    ahead_files: int = 64  # ... or this many parsed files
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # Milvus outages (ingest.retry)


@dataclass
class FileResult:
    rel_path: str
    outcome: Outcome
    doc_id: str | None = None
    group: str = ""
    code: str = ""  # a code of `ingest.reasons` (failed files)
    reason: str = ""  # its generic message: what is stored in clear and shown
    pages: int = 0
    chunks: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # The failure's own message (may quote the document or name a path): sealed in the
    # registry, never written in clear or shown (see `ingest.reasons`).
    detail: str = field(default="", repr=False)


@dataclass
class JobReport:
    job_id: str
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    milvus_retries: int = 0  # Milvus calls retried while it was unavailable
    milvus_wait_s: float = 0.0  # time spent waiting for it

    def count(self, outcome: str) -> int:
        return sum(1 for f in self.files if f.outcome == outcome)

    @property
    def totals(self) -> dict[str, int]:
        keys = ("indexed", "unchanged", "failed", "deleted", "skipped")
        out = {k: self.count(k) for k in keys}
        out["pages"] = sum(f.pages for f in self.files if f.outcome == "indexed")
        out["chunks"] = sum(f.chunks for f in self.files if f.outcome == "indexed")
        return out


@dataclass(frozen=True)
class Prepared:
    """A parsed and chunked file with its keyed BM25 term counts (worker thread), then its
    vectors (main thread), ready to be written."""

    parsed: ParsedDocument
    chunks: list[Chunk]
    vectors: Any
    stages: dict[str, float]
    tfs: list[dict[int, int]] = field(default_factory=list)


__all__ = [
    "EmbedderLike",
    "Events",
    "FileResult",
    "IngestOptions",
    "JobReport",
    "Mode",
    "Outcome",
    "Prepared",
]
