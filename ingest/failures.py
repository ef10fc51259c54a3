"""How the pipeline records a file it could not index: the reason, the sealed detail, and the
quarantine of an inbox file (the batch goes on; nothing of the file is lost)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from secure.records import RecordCipher

from .drop import FAILED_DIR, Candidate, quarantine
from .errors import Changed, IngestError, LinkRefused
from .jobs import FileResult
from .reasons import known_code, reason_message, seal_detail
from .registry import Registry

__all__ = ["MAX_DETAIL_CHARS", "FailureLog", "group_problem", "rejected", "skipped"]

MAX_DETAIL_CHARS = 16_000  # a failure's sealed detail (a traceback at most)


def rejected(candidate: Candidate, exc: IngestError) -> FileResult:
    """A failed result: a code of the fixed table and its generic message; the error's own
    message is only the (to be sealed) detail."""
    code = known_code(exc.code)
    return FileResult(
        candidate.rel_path,
        "failed",
        None,
        candidate.group,
        code=code,
        reason=reason_message(code),
        detail=f"[{exc.code}] {exc.diagnostics()}",
    )


def skipped(candidate: Candidate, exc: Exception) -> FileResult:
    """A file replaced or gone since the scan: nothing recorded, the next pass takes it."""
    reason = exc.message if isinstance(exc, Changed) else f"{candidate.rel_path} is gone."
    code = Changed.code
    return FileResult(candidate.rel_path, "skipped", None, candidate.group, code, reason)


def group_problem(candidate: Candidate) -> str:
    if not candidate.group:
        return (
            "Files must be inside a group folder (drop/<group>/…); drop/public/ is visible "
            "to everyone."
        )
    return (
        f"'{candidate.group}' is not a valid group folder name: use lower-case letters, "
        f"digits, '.', '_' or '-' (and not '{FAILED_DIR}')."
    )


@dataclass
class FailureLog:
    source: str  # "inbox" or "mirror"
    drop: Path
    registry: Registry
    cipher: RecordCipher

    def record(
        self, candidate: Candidate, result: FileResult, digest: str | None, move: bool = True
    ) -> FileResult:
        """Record the failure in the registry (detail sealed); an inbox file moves to
        `_failed` unless ``move`` is False."""
        result.doc_id = self.registry.fail(
            source=self.source,
            rel_path=candidate.rel_path,
            group=candidate.group,
            code=result.code,
            reason=result.reason,
            content_hmac=digest,
            size=candidate.size,
            fmt=candidate.path.suffix.lower(),
            detail=seal_detail(
                self.cipher,
                source=self.source,
                rel_path=candidate.rel_path,
                detail=result.detail[-MAX_DETAIL_CHARS:],
            ),
        )
        if move and self.source == "inbox" and result.code != LinkRefused.code:
            self._quarantine(candidate, result, digest)
        return result

    def _quarantine(self, candidate: Candidate, result: FileResult, digest: str | None) -> None:
        """Move a failed inbox file to `_failed`. If a link is in the way it stays where it
        is, recorded again as ``symlink`` (and not tried again while it is unchanged)."""
        try:
            quarantine(self.drop, candidate, code=result.code, reason=result.reason)
        except LinkRefused as exc:
            result.detail = f"[{result.code}] {result.detail} Not moved to {FAILED_DIR}: {exc}"
            result.code, result.reason = exc.code, reason_message(exc.code)
            self.record(candidate, result, digest, move=False)
        except (Changed, FileNotFoundError):
            pass  # replaced or gone meanwhile: the next pass sees what is there now
