"""What the document registry stores: its SQLite schema and the rows it hands out."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

SCHEMA_VERSION = 2  # 2: error_detail (sealed); error holds the generic message only
STATUSES = ("indexing", "indexed", "failed", "deleted")

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,              -- 'inbox' | 'mirror' | 'upload' | 'eval'
    rel_path TEXT NOT NULL,            -- path below the drop folder, e.g. finance/q3.xlsx
    group_name TEXT NOT NULL,
    status TEXT NOT NULL,
    current_version INTEGER NOT NULL DEFAULT 0,
    content_hmac TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    format TEXT NOT NULL DEFAULT '',
    pages INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    title_enc TEXT NOT NULL DEFAULT '',
    vault_id TEXT NOT NULL DEFAULT '',
    error_code TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',    -- the generic message of error_code (ingest.reasons)
    error_detail TEXT NOT NULL DEFAULT '',  -- the failure's own message, sealed by the caller
    warnings TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (source, rel_path)
);
CREATE TABLE IF NOT EXISTS versions (
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,              -- 'indexing' | 'indexed' | 'superseded' | 'abandoned'
    content_hmac TEXT NOT NULL,
    vault_id TEXT NOT NULL DEFAULT '',
    chunks INTEGER NOT NULL DEFAULT 0,
    total_len INTEGER NOT NULL DEFAULT 0,
    terms BLOB,                        -- packed (term id, chunks containing it) pairs
    created_at REAL NOT NULL,
    PRIMARY KEY (doc_id, version)
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, kind TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL,
    status TEXT NOT NULL, counts TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS job_files (
    job_id TEXT NOT NULL, doc_id TEXT, rel_path TEXT NOT NULL, outcome TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', stages TEXT NOT NULL DEFAULT '{}', at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS job_files_job ON job_files(job_id);
"""


@dataclass(frozen=True)
class Document:
    doc_id: str
    source: str
    rel_path: str
    group: str
    status: str
    version: int
    content_hmac: str | None
    size: int
    format: str
    pages: int
    chunks: int
    title_enc: str
    vault_id: str
    error_code: str
    error: str
    error_detail: str
    warnings: str
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Document:
        return cls(
            doc_id=row["doc_id"],
            source=row["source"],
            rel_path=row["rel_path"],
            group=row["group_name"],
            status=row["status"],
            version=row["current_version"],
            content_hmac=row["content_hmac"],
            size=row["size"],
            format=row["format"],
            pages=row["pages"],
            chunks=row["chunks"],
            title_enc=row["title_enc"],
            vault_id=row["vault_id"],
            error_code=row["error_code"],
            error=row["error"],
            error_detail=row["error_detail"],
            warnings=row["warnings"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)
class Unfinished:
    doc_id: str
    version: int
    vault_id: str
