"""One error hierarchy for `ingest/`."""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error raised by `ingest/`; ``code`` is a stable reason code."""

    code = "INGEST_ERROR"

    def __init__(self, message: str, *, code: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint

    def diagnostics(self) -> str:
        return f"{self.message} {self.hint}".strip()


class Rejected(IngestError):
    """A file that cannot be ingested; it is quarantined with ``code`` (a code of the fixed
    table in `ingest.reasons`, whose generic message is what users and plaintext stores get).

    The message may say exactly what is wrong, quoting the file or naming its path: the pipeline
    keeps it only as the sealed detail of the failure.
    """

    code = "rejected"


class DependencyMissing(IngestError):
    """An optional system tool or package is missing (Tesseract, LibreOffice, a model)."""

    code = "dependency-missing"


class SchemaMismatch(IngestError):
    """The Milvus collection was written by another embedding model or dimension."""

    code = "schema-mismatch"


class LinkRefused(Rejected):
    """A symbolic link in the drop folder (a file, a folder, or a folder on the way to one):
    never followed, never moved into or written through (see `ingest.safefs`)."""

    code = "symlink"

    def __init__(self, rel_path: str) -> None:
        super().__init__(
            f"{rel_path} is a symbolic link; links in the drop folder are never followed.",
            hint="Replace the link by the file or folder itself.",
        )
        self.rel_path = rel_path


class Changed(IngestError):
    """The file was replaced or changed between the scan and its reading; nothing was
    recorded, and the next pass takes it again."""

    code = "changed"


class StoreUnavailable(IngestError):
    """Milvus did not answer: the server is down, unreachable, restarting or slower than the
    time limit. Not the fault of any document: the ingestion job waits and retries
    (`ingest.retry`) and never quarantines a file for it; a question answers 503."""

    code = "milvus-unavailable"

    def __init__(self, message: str, *, hint: str = "", timed_out: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.timed_out = timed_out  # the server is up but slower than milvus.timeout_s
