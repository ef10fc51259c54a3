"""Per-user conversation history and answer feedback, encrypted at rest.

Questions, answers, sources and feedback comments are sealed with a :class:`RecordCipher` under
the home's ``conversations`` collection key. Each record id names its owner and position
(``turn:<conversation>:<seq>:<user>``), so a row copied to another user or conversation fails to
open. Only the owner lists, reads, rates or deletes a conversation: another user's id (admins
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secure.home import UnlockedHome
from secure.records import RecordCipher
from secure.vault import open_collection_key

from .errors import ApplianceError, InvalidInput, NotFound

CONVERSATIONS_FILE = "conversations.db"
KEY_STORE = "conversations.json"
CONTEXT = "collection:conversations"
MAX_COMMENT = 2000
_ID = re.compile(r"c-[0-9a-f]{24}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, user TEXT NOT NULL COLLATE NOCASE, title_enc TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS conversations_by_user ON conversations(user, updated_at);
CREATE TABLE IF NOT EXISTS turns (
    conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL, question_id TEXT NOT NULL, payload TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (conversation, seq)) STRICT;
CREATE INDEX IF NOT EXISTS turns_by_question ON turns(question_id);
CREATE TABLE IF NOT EXISTS feedback (
    question_id TEXT PRIMARY KEY, user TEXT NOT NULL COLLATE NOCASE, rating INTEGER NOT NULL
    CHECK (rating IN (-1, 1)), comment_enc TEXT NOT NULL DEFAULT '', mode TEXT NOT NULL,
    model TEXT NOT NULL, at INTEGER NOT NULL) STRICT;
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

    def __init__(self, path: Path, cipher: RecordCipher) -> None:
        self.path, self.cipher = Path(path), cipher
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        db = sqlite3.connect(self.path, timeout=10)
        try:
            db.executescript(_SCHEMA)
        finally:
            db.close()

    @classmethod
    def open(cls, home_dir: Path, home: UnlockedHome) -> ConversationStore:
        """The store of a home, with its own collection key (created on first use)."""
        key = open_collection_key(home.layout.key_stores / KEY_STORE, home.keyring, context=CONTEXT)
        return cls(Path(home_dir) / CONVERSATIONS_FILE, RecordCipher(key, context=CONTEXT))

    def start(self, user: str, title: str, *, now: int) -> str:
        conv = "c-" + secrets.token_hex(12)
        sealed = self._seal(f"conv:{conv}:{user.lower()}", title[:200])
        with self._db() as db:
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?)", (conv, user, sealed, now, now)
            )
        return conv

    def add_turn(self, user: str, conversation: str, turn: Turn, *, now: int) -> None:
        with self._db() as db:
            self._owned(db, user, conversation)
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM turns WHERE conversation = ?",
                (conversation,),
            ).fetchone()[0]
            record = f"turn:{conversation}:{seq}:{user.lower()}"
            payload = self.cipher.seal(record, turn.to_bytes())
            db.execute(
                "INSERT INTO turns VALUES (?, ?, ?, ?, ?)",
                (conversation, seq, turn.question_id, payload, now),
            )
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation))

    def history(self, user: str) -> list[Conversation]:
        """The user's conversations, newest first, without their turns."""
        with self._db() as db:
            rows = db.execute(
                "SELECT id, title_enc, created_at, updated_at FROM conversations WHERE user = ?"
                " ORDER BY updated_at DESC, id",
                (user,),
            ).fetchall()
        return [
            Conversation(r[0], self._open(f"conv:{r[0]}:{user.lower()}", r[1]), r[2], r[3])
            for r in rows
        ]

    def read(self, user: str, conversation: str) -> Conversation:
        """One conversation of ``user`` with its turns; NotFound for anyone else's."""
        with self._db() as db:
            row = self._owned(db, user, conversation)
            turns = db.execute(
                "SELECT t.seq, t.payload, COALESCE(f.rating, 0) FROM turns t LEFT JOIN feedback f"
                " ON f.question_id = t.question_id AND f.user = ? WHERE t.conversation = ?"
                " ORDER BY t.seq",
                (user, conversation),
            ).fetchall()
        owner = user.lower()
        title = self._open(f"conv:{conversation}:{owner}", row[1])
        return Conversation(
            conversation,
            title,
            row[2],
            row[3],
            [
                Turn.from_bytes(
                    self.cipher.open(f"turn:{conversation}:{seq}:{owner}", payload), rating=rating
                )
                for seq, payload, rating in turns
            ],
        )

    def delete(self, user: str, conversation: str) -> None:
        with self._db() as db:
            self._owned(db, user, conversation)
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation,))

    def rate(
        self, user: str, question_id: str, rating: int, *, now: int, comment: str = ""
    ) -> None:
        """Thumbs up (1) or down (-1) on one of the user's own answers; rating again replaces."""
        if rating not in (-1, 1):
            raise InvalidInput("A rating is 1 (helpful) or -1 (not helpful).")
        if len(comment) > MAX_COMMENT:
            raise InvalidInput(f"A feedback comment must be at most {MAX_COMMENT} characters.")
        with self._db() as db:
            found = db.execute(
                "SELECT t.conversation, t.seq, t.payload FROM turns t JOIN conversations c"
                " ON c.id = t.conversation WHERE t.question_id = ? AND c.user = ?",
                (question_id, user),
            ).fetchone()
            if found is None or not question_id:
                raise _missing("answer")
            conv, seq, payload = found
            turn = Turn.from_bytes(self.cipher.open(f"turn:{conv}:{seq}:{user.lower()}", payload))
            sealed = (
                self._seal(f"feedback:{question_id}:{user.lower()}", comment) if comment else ""
            )
            db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(question_id)"
                " DO UPDATE SET rating = excluded.rating, comment_enc = excluded.comment_enc,"
                " at = excluded.at",
                (question_id, user, rating, sealed, turn.mode, turn.model, now),
            )

    def feedback_rows(self) -> list[dict[str, Any]]:
        """Every rating for evaluation: question id, rating, mode, model, time (no text)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT question_id, rating, mode, model, at FROM feedback ORDER BY at"
            ).fetchall()
        keys = ("question_id", "rating", "mode", "model", "at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def _owned(self, db: sqlite3.Connection, user: str, conversation: str) -> Sequence[Any]:
        if not isinstance(conversation, str) or not _ID.fullmatch(conversation):
            raise _missing("conversation")
        row = db.execute(
            "SELECT id, title_enc, created_at, updated_at FROM conversations"
            " WHERE id = ? AND user = ?",
            (conversation, user),
        ).fetchone()
        if row is None:
            raise _missing("conversation")
        return tuple(row)

    def _seal(self, record: str, text: str) -> str:
        return self.cipher.seal(record, text.encode("utf-8"))

    def _open(self, record: str, payload: str) -> str:
        return self.cipher.open(record, payload).decode("utf-8")

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        except sqlite3.Error as exc:
            raise _broken(self.path, exc) from exc
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA secure_delete = ON")
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _broken(self.path, exc) from exc
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.close()


def _missing(what: str) -> NotFound:
    return NotFound(f"No such {what}.", hint="Pick one from your history.")


def _broken(path: Path, exc: Exception) -> ApplianceError:
    return ApplianceError(
        f"The conversation database at {path} cannot be used ({exc}).",
        code="CONVERSATION_STORE",
        hint="Check permissions, or restore the file from backup.",
    )
