"""Upgrades of an older document registry (split from `ingest.registry`).

Schema 1 stored a failure's own message in ``documents.error`` and ``job_files.reason``, where it
could quote the document or name a server path. Schema 2 keeps only the reason code's generic
message there and the detail sealed in ``documents.error_detail``. The upgrade cannot seal what
was stored in clear (it has no key), so it drops it, then rewrites the file (``VACUUM``) so that
no freed page keeps the old text.
"""

from __future__ import annotations

import sqlite3

from .reasons import known_code, reason_message


def upgrade(db: sqlite3.Connection, target: int) -> int | None:
    """Bring the registry up to ``target`` where an upgrade exists; returns the schema version
    found afterwards (None for a new, empty file)."""
    found = _schema(db)
    if found == 1 and target >= 2:
        _upgrade_1_to_2(db)
        found = 2
    return found


def _schema(db: sqlite3.Connection) -> int | None:
    has_meta = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if not has_meta:
        return None
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    return int(row[0]) if row else None


def _upgrade_1_to_2(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA secure_delete=ON")
    db.execute("BEGIN IMMEDIATE")
    try:
        if _schema(db) != 1:  # another process upgraded it meanwhile
            db.execute("ROLLBACK")
            return
        db.execute("ALTER TABLE documents ADD COLUMN error_detail TEXT NOT NULL DEFAULT ''")
        codes = [r[0] for r in db.execute("SELECT DISTINCT error_code FROM documents")]
        for code in codes:
            new_code, message = (known_code(code), reason_message(code)) if code else ("", "")
            db.execute(
                "UPDATE documents SET error_code=?, error=? WHERE error_code=?",
                (new_code, message, code),
            )
        db.execute("UPDATE job_files SET reason=''")
        db.execute("UPDATE meta SET value='2' WHERE key='schema'")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


__all__ = ["upgrade"]
