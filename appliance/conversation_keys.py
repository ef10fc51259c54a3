"""One data key per account for its conversation history, so that removing the account
crypto-shreds what it asked.

Each account id has its own key store, ``keys/stores/conversations/<user id>.json``: a random
256-bit data key wrapped by the keyring and registered with it, so ``appliance keys rotate /
rewrap / trim`` treat it like every other data key. :meth:`OwnerKeys.destroy` deletes it when
the account is removed: copies of ``conversations.db`` made earlier (backups included) no longer
open with the keys that remain, and once the kek that wrapped it has been retired (``keys
rotate``, then ``keys trim``) not even an old copy of the key-store file opens.

The server creates keys and the CLI (``users remove``) destroys them, so both write the keyring:
each write first re-reads it (:meth:`secure.keyring.Keyring.refresh`), and one refused as
``KEYRING_STALE`` (the other process wrote in between) is retried once after re-reading again.

Before per-account keys, all history was sealed under one collection key
(``keys/stores/conversations.json``) and keyed by user name; :func:`migrate_v1` re-seals such a
database under the owners' keys (dropping what belonged to removed accounts) and then destroys
that key.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from secure.errors import KeyringError
from secure.keyring import Keyring, KeyStore
from secure.records import RecordCipher

from .errors import ApplianceError
from .users import USER_ID

KEY_DIR = "conversations"
LEGACY_KEY_STORE = "conversations.json"
LEGACY_CONTEXT = "collection:conversations"
T = TypeVar("T")


def check_owner(owner: str) -> str:
    """Conversations belong to an account id (``User.id``), never to a name (names are reused)."""
    if not isinstance(owner, str) or not USER_ID.fullmatch(owner):
        raise ValueError(f"A conversation owner is an account id (u- and 32 hex), not {owner!r}.")
    return owner


class OwnerKeys:
    """The per-account data keys under one directory of key stores."""

    def __init__(self, directory: Path, keyring: Keyring) -> None:
        self.directory, self.keyring = Path(directory), keyring
        self._lock = threading.Lock()

    def cipher(self, owner: str, *, create: bool = False) -> RecordCipher | None:
        """The owner's record cipher; None if it has no key yet (and ``create`` is false)."""
        path = self._path(owner)
        with self._lock:
            if not path.exists():
                if not create:
                    return None
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                key = keyring_write(
                    self.keyring, lambda: KeyStore.create(path, self.keyring, context=_ctx(owner))
                )[1]
            else:
                key = KeyStore.load(path, self.keyring, context=_ctx(owner))[1]
        return RecordCipher(key, context=f"conversations:{owner}")

    def destroy(self, owner: str) -> bool:
        """Delete the owner's key store (crypto-shredding its history); False if it had none."""
        path = self._path(owner)
        with self._lock:
            if not path.exists():
                return False
            destroy_store(path, self.keyring)
        return True

    def _path(self, owner: str) -> Path:
        return self.directory / f"{check_owner(owner)}.json"


def destroy_store(path: Path, keyring: Keyring) -> None:
    """Delete a key store and unregister it from the keyring."""
    store = KeyStore.read(path, keyring)
    keyring_write(keyring, store.destroy)


def _ctx(owner: str) -> str:
    return f"kapp/v1 conversations:{owner}"


def keyring_write(keyring: Keyring, write: Callable[[], T]) -> T:
    """Run ``write`` (which changes the keyring) on a fresh copy; retried once if stale."""
    keyring.refresh()
    try:
        return write()
    except KeyringError as exc:
        if exc.code != "KEYRING_STALE":
            raise
    keyring.refresh()
    return write()


def migrate_v1(
    db: sqlite3.Connection,
    keys: OwnerKeys,
    legacy: RecordCipher | None,
    owner_of: Callable[[str], str | None],
) -> None:
    """Re-seal a name-keyed database (inside the caller's write transaction) under the owners'
    keys; rows of names that are no longer accounts are deleted, not inherited."""
    db.execute("DROP INDEX IF EXISTS conversations_by_user")
    for table in ("conversations", "feedback"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
    rows = db.execute("SELECT id, user, title_enc FROM conversations").fetchall()
    feedback = db.execute("SELECT question_id, user, comment_enc FROM feedback").fetchall()
    ciphers: dict[str, RecordCipher] = {}

    def cipher(owner: str) -> RecordCipher:
        if owner not in ciphers:
            found = keys.cipher(owner, create=True)
            assert found is not None
            ciphers[owner] = found
        return ciphers[owner]

    if (rows or feedback) and legacy is None:
        raise ApplianceError(
            f"The conversation history holds data but its key store {LEGACY_KEY_STORE} is missing.",
            code="CONVERSATION_STORE",
            hint="Restore the key store from backup, or move conversations.db away to start over.",
        )
    for conv, name, title in rows:
        owner = owner_of(name)
        if owner is None or legacy is None:
            db.execute("DELETE FROM conversations WHERE id = ?", (conv,))
            continue
        _reseal_conversation(db, conv, name.lower(), title, legacy, cipher(owner), owner)
    for qid, name, comment in feedback:
        owner = owner_of(name)
        if owner is None or legacy is None:
            db.execute("DELETE FROM feedback WHERE question_id = ?", (qid,))
            continue
        if comment:
            plain = legacy.open(f"feedback:{qid}:{name.lower()}", comment)
            comment = cipher(owner).seal(f"feedback:{qid}", plain)
        db.execute(
            "UPDATE feedback SET owner = ?, comment_enc = ? WHERE question_id = ?",
            (owner, comment, qid),
        )
    for table in ("conversations", "feedback"):
        db.execute(f"ALTER TABLE {table} DROP COLUMN user")


def _reseal_conversation(
    db: sqlite3.Connection,
    conv: str,
    name: str,
    title: str,
    legacy: RecordCipher,
    cipher: RecordCipher,
    owner: str,
) -> None:
    title = cipher.seal(f"conv:{conv}", legacy.open(f"conv:{conv}:{name}", title))
    db.execute(
        "UPDATE conversations SET owner = ?, title_enc = ? WHERE id = ?", (owner, title, conv)
    )
    turns = db.execute("SELECT seq, payload FROM turns WHERE conversation = ?", (conv,))
    for seq, payload in turns.fetchall():
        plain = legacy.open(f"turn:{conv}:{seq}:{name}", payload)
        db.execute(
            "UPDATE turns SET payload = ? WHERE conversation = ? AND seq = ?",
            (cipher.seal(f"turn:{conv}:{seq}", plain), conv, seq),
        )
