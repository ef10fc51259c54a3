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
