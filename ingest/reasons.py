"""Why a file was not indexed: a fixed table of reason codes, each with a generic message.

A parser's own error message is not fit to show or to store in clear: it can quote the document
(``could not convert string to float: '<a cell value>'``, an XML tag name) or name a server path
(``cannot identify image file '/srv/…/drop/hr/scan.png'``). So what is stored in plaintext
(registry columns, ``drop/_failed/<file>.reason.txt``, job records, the audit entry's reason)
and what users see (upload status, admin tables, `docs list`) is only a code from this table and
its generic message, which says what to do. The original message — the *detail* — is sealed in
the registry with the chunk collection's data key (:func:`seal_detail`) and opened for an
administrator on demand (`appliance docs show ID --details`, the admin UI's "Show details"),
each opening audited.

The audit log is not the place for the detail: it is MACed and hash-chained but plaintext
JSON, and its ``protect`` is a one-way HMAC, so an admin could not read the detail back.

Codes are stable (tests list them): add new ones, never rename. The UI translates them
(``reason.<code>`` in `ui.i18n`); an unknown code (an older release's, another layer's) is
shown and stored as ``index-error``.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

INTERNAL = "index-error"
DETAILS_HINT = "an administrator can see the details with `appliance docs show <id> --details`"

REASONS: dict[str, str] = {
    "password-protected": "The file is protected by a password. Save a copy without a password "
    "and add it again.",
    "corrupt": "The file is damaged or incomplete and cannot be read. Save or export it again "
    "and add the new copy.",
    "empty": "The file holds no text to index (it is empty, or holds only images or empty "
    "sheets). Check the file; a scanned document needs OCR.",
    "no-text": "The file is a scan or an image without a text layer, and OCR is not available. "
    "Add a copy with text, or ask an administrator to install OCR (tesseract-ocr).",
    "oversized": "The file is too large to index (file size or parser memory limit). Split it, "
    "or ask an administrator to raise ingest.max_file_mb.",
    "unsupported": "This file type is not supported. Convert it to PDF, Word, Excel, PowerPoint, "
    "HTML, e-mail or plain text and add it again.",
    "timeout": "Reading the file took longer than the time limit. Split it, or ask an "
    "administrator to raise ingest.timeout_s.",
    "no-group": "The file is not inside a valid group folder. Move it to drop/<group>/ (a name of "
    "lower-case letters, digits, '.', '_' or '-').",
    "parse-error": "The file could not be read by its parser. Save or export it again; if it "
    f"still fails, {DETAILS_HINT}.",
    "dependency-missing": "A tool needed to read this file type is not installed. Ask an "
    f"administrator: `appliance status` shows the tools, and {DETAILS_HINT}.",
    "index-error": f"Indexing failed because of an internal error; {DETAILS_HINT} and report them.",
    "interrupted": "Indexing was interrupted (the appliance stopped); the file is tried again at "
    "the next pass.",
    "not-picked-up": "The file was not found when ingestion ran (it was moved or replaced). "
    "Upload it again.",
    "index-unavailable": "The search index (Milvus) was unavailable; the file waits in the drop "
    "folder and is indexed as soon as the index answers again.",
    "symlink": "The file, a folder on its way, or its quarantine folder drop/_failed/<group> is a "
    "symbolic link; links in the drop folder are never followed. Replace the link by the file or "
    "folder itself.",
}


class Sealer(Protocol):
    """What seals and opens a detail (`secure.records.RecordCipher`)."""

    def seal(self, record_id: str, plaintext: bytes) -> str: ...
    def open(self, record_id: str, payload: str) -> bytes: ...


def known_code(code: str) -> str:
    """``code`` if it is in the table, else ``index-error``."""
    return code if code in REASONS else INTERNAL


def reason_message(code: str) -> str:
    """The generic English message of ``code`` (of ``index-error`` for an unknown code)."""
    return REASONS[known_code(code)]


def detail_record_id(source: str, rel_path: str) -> str:
    """The record id a failure's detail is sealed under: bound to the file it describes, so a
    sealed detail copied onto another row does not open."""
    digest = hashlib.sha256(f"{source}\x00{rel_path}".encode()).hexdigest()
    return f"failure:{digest}"


def seal_detail(cipher: Sealer, *, source: str, rel_path: str, detail: str) -> str:
    """The detail sealed for the registry (empty when there is none)."""
    if not detail:
        return ""
    return cipher.seal(detail_record_id(source, rel_path), detail.encode("utf-8"))


def open_detail(cipher: Sealer, *, source: str, rel_path: str, sealed: str) -> str:
    """The detail a failure was recorded with ("" when none was kept)."""
    if not sealed:
        return ""
    return cipher.open(detail_record_id(source, rel_path), sealed).decode("utf-8")


__all__ = [
    "DETAILS_HINT",
    "INTERNAL",
    "REASONS",
    "detail_record_id",
    "known_code",
    "open_detail",
    "reason_message",
    "seal_detail",
]
