"""Per-account conversation history and answer feedback, encrypted at rest.

History belongs to an account *id* (:attr:`appliance.users.User.id`), never to a name: a new
account that takes a removed account's name starts empty. Questions, answers, sources, titles and
feedback comments are sealed with a :class:`RecordCipher` under the owner's own data key
(:mod:`appliance.conversation_keys`); each record id names its conversation and position
(``turn:<conversation>:<seq>``), so a row copied to another owner or conversation fails to open.
:meth:`ConversationStore.forget` deletes an owner's rows and destroys the key (crypto-shredding:
an old copy of the database does not open with the keys that remain).

Only the owner lists, reads, rates or deletes a conversation: another owner's id (admins
included) gets the same :class:`NotFound` as a missing one. Admins see *that* people asked (the
audit log, status pages) but never what, unless a user shares it; feedback is exported for
evaluation without the question text (:meth:`ConversationStore.feedback_rows`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secure.home import UnlockedHome
from secure.keyring import KeyStore
from secure.records import RecordCipher

from .conversation_keys import (
    KEY_DIR,
    LEGACY_CONTEXT,
    LEGACY_KEY_STORE,
    OwnerKeys,
    check_owner,
    destroy_store,
    migrate_v1,
)
from .errors import InvalidInput, NotFound
from .sqlite_db import Store, connect
from .users import UserStore

CONVERSATION_STORE = Store(
    "conversation database",
    "CONVERSATION_STORE",
    "Check permissions, or restore the file from backup.",
)

CONVERSATIONS_FILE = "conversations.db"
MAX_COMMENT = 2000
_VERSION = 2
_ID = re.compile(r"c-[0-9a-f]{24}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, title_enc TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS turns (
    conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL, question_id TEXT NOT NULL, payload TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (conversation, seq)) STRICT;
CREATE INDEX IF NOT EXISTS turns_by_question ON turns(question_id);
CREATE TABLE IF NOT EXISTS feedback (
    question_id TEXT PRIMARY KEY, owner TEXT NOT NULL, rating INTEGER NOT NULL
    CHECK (rating IN (-1, 1)), comment_enc TEXT NOT NULL DEFAULT '', mode TEXT NOT NULL,
    model TEXT NOT NULL, at INTEGER NOT NULL) STRICT;
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS conversations_by_owner ON conversations(owner, updated_at);
CREATE INDEX IF NOT EXISTS feedback_by_owner ON feedback(owner);
"""


@dataclass(frozen=True)
class Turn:
    """One question and its answer as the user saw them (sources as small dicts)."""

    question: str
    answer: str
    question_id: str = ""
    mode: str = "extractive"
    model: str = ""
    sources: tuple[Mapping[str, Any], ...] = ()
    at: int = 0
    rating: int = 0  # filled in when read: -1, 0 or 1

    def to_bytes(self) -> bytes:
        data = asdict(self) | {"sources": [dict(s) for s in self.sources]}
        data.pop("rating")
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes, *, rating: int = 0) -> Turn:
        data = json.loads(raw.decode("utf-8"))
        data["sources"] = tuple(data.get("sources", ()))
        return cls(**data, rating=rating)


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    created_at: int
    updated_at: int
    turns: list[Turn] = field(default_factory=list)


class ConversationStore:
    """Conversations in one SQLite file beside the user database."""

    def __init__(self, path: Path, keys: OwnerKeys) -> None:
        self.path, self.keys = Path(path), keys
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))

    @classmethod
    def open(cls, home_dir: Path, home: UnlockedHome, *, users: UserStore) -> ConversationStore:
        """The store of a home; a database from before per-account keys is migrated first."""
        store = cls(Path(home_dir) / CONVERSATIONS_FILE, OwnerKeys(_key_dir(home), home.keyring))
        legacy_path = home.layout.key_stores / LEGACY_KEY_STORE
        with store._db() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _VERSION:
                raise CONVERSATION_STORE.broken(store.path, "made by a newer version")
            if version < _VERSION:
                if _has_table(db, "conversations"):
                    legacy = None
                    if legacy_path.exists():
                        key = KeyStore.load(legacy_path, home.keyring, context=LEGACY_CONTEXT)[1]
                        legacy = RecordCipher(key, context=LEGACY_CONTEXT)
                    migrate_v1(db, store.keys, legacy, _owner_lookup(users))
                for statement in filter(str.strip, (_SCHEMA + _INDEXES).split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {_VERSION}")
        if legacy_path.exists():  # the old shared key protects nothing any more: shred it
            destroy_store(legacy_path, home.keyring)
        return store

    def start(self, owner: str, title: str, *, now: int) -> str:
        cipher = self.keys.cipher(owner, create=True)
        assert cipher is not None
        conv = "c-" + secrets.token_hex(12)
        sealed = cipher.seal(f"conv:{conv}", title[:200].encode("utf-8"))
        with self._db() as db:
            db.execute(
                "INSERT INTO conversations (id, owner, title_enc, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (conv, owner, sealed, now, now),
            )
        return conv

    def add_turn(self, owner: str, conversation: str, turn: Turn, *, now: int) -> None:
        cipher = self._cipher(owner)
        with self._db() as db:
            self._owned(db, owner, conversation)
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM turns WHERE conversation = ?",
                (conversation,),
            ).fetchone()[0]
            payload = cipher.seal(f"turn:{conversation}:{seq}", turn.to_bytes())
            db.execute(
                "INSERT INTO turns VALUES (?, ?, ?, ?, ?)",
                (conversation, seq, turn.question_id, payload, now),
            )
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation))

    def history(self, owner: str) -> list[Conversation]:
        """The owner's conversations, newest first, without their turns."""
        cipher = self.keys.cipher(owner)
        if cipher is None:
            return []
        with self._db() as db:
            rows = db.execute(
                "SELECT id, title_enc, created_at, updated_at FROM conversations WHERE owner = ?"
                " ORDER BY updated_at DESC, id",
                (owner,),
            ).fetchall()
        return [Conversation(r[0], _open(cipher, f"conv:{r[0]}", r[1]), r[2], r[3]) for r in rows]

    def read(self, owner: str, conversation: str) -> Conversation:
        """One conversation of ``owner`` with its turns; NotFound for anyone else's."""
        cipher = self._cipher(owner)
        with self._db() as db:
            row = self._owned(db, owner, conversation)
            turns = db.execute(
                "SELECT t.seq, t.payload, COALESCE(f.rating, 0) FROM turns t LEFT JOIN feedback f"
                " ON f.question_id = t.question_id AND f.owner = ? WHERE t.conversation = ?"
                " ORDER BY t.seq",
                (owner, conversation),
            ).fetchall()
        title = _open(cipher, f"conv:{conversation}", row[1])
        return Conversation(
            conversation,
            title,
            row[2],
            row[3],
            [
                Turn.from_bytes(cipher.open(f"turn:{conversation}:{seq}", payload), rating=rating)
                for seq, payload, rating in turns
            ],
        )

    def delete(self, owner: str, conversation: str) -> None:
        check_owner(owner)
        with self._db() as db:
            self._owned(db, owner, conversation)
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation,))

    def rate(
        self, owner: str, question_id: str, rating: int, *, now: int, comment: str = ""
    ) -> None:
        """Thumbs up (1) or down (-1) on one of the owner's own answers; rating again replaces."""
        if rating not in (-1, 1):
            raise InvalidInput("A rating is 1 (helpful) or -1 (not helpful).")
        if len(comment) > MAX_COMMENT:
            raise InvalidInput(f"A feedback comment must be at most {MAX_COMMENT} characters.")
        cipher = self.keys.cipher(check_owner(owner))
        with self._db() as db:
            found = db.execute(
                "SELECT t.conversation, t.seq, t.payload FROM turns t JOIN conversations c"
                " ON c.id = t.conversation WHERE t.question_id = ? AND c.owner = ?",
                (question_id, owner),
            ).fetchone()
            if found is None or not question_id or cipher is None:
                raise _missing("answer")
            conv, seq, payload = found
            turn = Turn.from_bytes(cipher.open(f"turn:{conv}:{seq}", payload))
            sealed = cipher.seal(f"feedback:{question_id}", comment.encode()) if comment else ""
            db.execute(
                "INSERT INTO feedback (question_id, owner, rating, comment_enc, mode, model, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(question_id)"
                " DO UPDATE SET rating = excluded.rating, comment_enc = excluded.comment_enc,"
                " at = excluded.at",
                (question_id, owner, rating, sealed, turn.mode, turn.model, now),
            )

    def feedback_rows(self) -> list[dict[str, Any]]:
        """Every rating for evaluation: question id, rating, mode, model, time (no text)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT question_id, rating, mode, model, at FROM feedback ORDER BY at"
            ).fetchall()
        keys = ("question_id", "rating", "mode", "model", "at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def forget(self, owner: str) -> int:
        """Delete every conversation and rating of ``owner`` and destroy its key (when the
        account is removed); returns how many conversations went. Safe to run again."""
        with self._db() as db:
            gone = db.execute(
                "DELETE FROM conversations WHERE owner = ?", (check_owner(owner),)
            ).rowcount
            db.execute("DELETE FROM feedback WHERE owner = ?", (owner,))
        with self._db(transaction=False) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no old page images left in the WAL
        self.keys.destroy(owner)
        return int(gone)

    def _cipher(self, owner: str) -> RecordCipher:
        cipher = self.keys.cipher(owner)
        if cipher is None:  # no key: the owner never started a conversation
            raise _missing("conversation")
        return cipher

    def _owned(self, db: sqlite3.Connection, owner: str, conversation: str) -> Sequence[Any]:
        if not isinstance(conversation, str) or not _ID.fullmatch(conversation):
            raise _missing("conversation")
        row = db.execute(
            "SELECT id, title_enc, created_at, updated_at FROM conversations"
            " WHERE id = ? AND owner = ?",
            (conversation, owner),
        ).fetchone()
        if row is None:
            raise _missing("conversation")
        return tuple(row)

    def _db(
        self, *, transaction: bool = True
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return connect(
            self.path,
            CONVERSATION_STORE,
            pragmas=("journal_mode = WAL", "foreign_keys = ON", "secure_delete = ON"),
            transaction=transaction,
        )


def _key_dir(home: UnlockedHome) -> Path:
    return home.layout.key_stores / KEY_DIR


def _owner_lookup(users: UserStore) -> Callable[[str], str | None]:
    ids = {u.name.lower(): u.id for u in users.list_users()}
    return lambda name: ids.get(str(name).lower())


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(query, (name,)).fetchone() is not None


def _open(cipher: RecordCipher, record: str, payload: str) -> str:
    return cipher.open(record, payload).decode("utf-8")


def _missing(what: str) -> NotFound:
    return NotFound(f"No such {what}.", hint="Pick one from your history.")
