"""Conversation history: encrypted at rest under a key per account, owner-only, keyed by the
stable account id (a new account with a removed account's name inherits nothing), crypto-shredded
with the account; feedback linked to question ids; the migration from name-keyed history."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from appliance.conversation_keys import LEGACY_CONTEXT, OwnerKeys
from appliance.conversations import ConversationStore, Turn
from appliance.errors import ApplianceError, InvalidInput, NotFound
from appliance.users import ScryptParams, User, UserStore
from secure.errors import KeyringError, TamperedError
from secure.home import HomeLayout, UnlockedHome, unlock_home
from secure.keyring import KeyStore, retire_old_keys
from secure.records import RecordCipher
from secure.vault import open_collection_key
from tests.secure.helpers import make_home

NOW = 1_900_000_000
SECRET = "The merger code name is BLUEHERON"
PW = "a long enough password"
# The schema before per-account keys (frozen: what existing appliances have on disk).
V1_SCHEMA = """
CREATE TABLE conversations (
    id TEXT PRIMARY KEY, user TEXT NOT NULL COLLATE NOCASE, title_enc TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL) STRICT;
CREATE INDEX conversations_by_user ON conversations(user, updated_at);
CREATE TABLE turns (
    conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL, question_id TEXT NOT NULL, payload TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (conversation, seq)) STRICT;
CREATE INDEX turns_by_question ON turns(question_id);
CREATE TABLE feedback (
    question_id TEXT PRIMARY KEY, user TEXT NOT NULL COLLATE NOCASE, rating INTEGER NOT NULL
    CHECK (rating IN (-1, 1)), comment_enc TEXT NOT NULL DEFAULT '', mode TEXT NOT NULL,
    model TEXT NOT NULL, at INTEGER NOT NULL) STRICT;
"""


@pytest.fixture
def home(tmp_path: Path) -> UnlockedHome:
    return make_home(tmp_path / "home", now=NOW)


@pytest.fixture
def users(tmp_path: Path) -> UserStore:
    store = UserStore(tmp_path / "appliance.db", scrypt=ScryptParams(n=2**4, r=1, p=1))
    for name in ("ann", "ben"):
        store.add_user(name, role="staff", groups="", password=PW, now=NOW)
    return store


@pytest.fixture
def store(tmp_path: Path, home: UnlockedHome, users: UserStore) -> ConversationStore:
    return ConversationStore.open(tmp_path, home, users=users)


@pytest.fixture
def ann(users: UserStore) -> str:
    return users.get("ann").id


@pytest.fixture
def ben(users: UserStore) -> str:
    return users.get("ben").id


def _turn(qid: str, text: str = SECRET) -> Turn:
    source = {"n": 1, "chunk_id": "doc-1:1:0", "doc_id": "doc-1", "title": "Plan"}
    return Turn(question=f"What about {qid}?", answer=text, question_id=qid, sources=(source,))


def test_round_trip_and_nothing_in_clear(
    store: ConversationStore, ann: str, tmp_path: Path
) -> None:
    conv = store.start(ann, "What about BLUEHERON?", now=NOW)
    store.add_turn(ann, conv, _turn("q1"), now=NOW + 1)
    store.add_turn(ann, conv, _turn("q2", "second"), now=NOW + 2)
    got = store.read(ann, conv)
    assert got.title == "What about BLUEHERON?" and [t.answer for t in got.turns] == [
        SECRET,
        "second",
    ]
    assert got.turns[0].sources[0]["chunk_id"] == "doc-1:1:0"
    assert [c.id for c in store.history(ann)] == [conv]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("conversations.db*"))
    assert b"BLUEHERON" not in raw and b"merger" not in raw and b"ann" not in raw


def test_other_users_cannot_list_read_rate_or_delete(
    store: ConversationStore, ann: str, ben: str
) -> None:
    conv = store.start(ann, "mine", now=NOW)
    store.add_turn(ann, conv, _turn("q1"), now=NOW)
    store.start(ben, "his own", now=NOW)
    assert [c.title for c in store.history(ben)] == ["his own"]
    for call in (
        lambda: store.read(ben, conv),
        lambda: store.add_turn(ben, conv, _turn("q9"), now=NOW),
        lambda: store.rate(ben, "q1", 1, now=NOW),
        lambda: store.delete(ben, conv),
        lambda: store.read(ann, "c-" + "0" * 24),
        lambda: store.read(ann, "../../etc"),
    ):
        with pytest.raises(NotFound):
            call()
    assert store.read(ann, conv).turns[0].answer == SECRET


def test_owners_are_account_ids_never_names(store: ConversationStore) -> None:
    for owner in ("ann", "ANN", "", "u-" + "0" * 31, "../u-" + "0" * 32):
        with pytest.raises(ValueError, match="account id"):
            store.start(owner, "t", now=NOW)
        with pytest.raises(ValueError, match="account id"):
            store.history(owner)
    assert store.history("u-" + "0" * 32) == []  # an account that never asked


def test_feedback_is_stored_replaced_and_exported_without_text(
    store: ConversationStore, ann: str
) -> None:
    conv = store.start(ann, "t", now=NOW)
    store.add_turn(ann, conv, _turn("q1"), now=NOW)
    store.rate(ann, "q1", -1, now=NOW + 1, comment="wrong figure")
    store.rate(ann, "q1", 1, now=NOW + 2)
    assert store.read(ann, conv).turns[0].rating == 1
    rows = store.feedback_rows()
    assert rows == [
        {"question_id": "q1", "rating": 1, "mode": "extractive", "model": "", "at": NOW + 2}
    ]
    with pytest.raises(InvalidInput):
        store.rate(ann, "q1", 5, now=NOW)


def test_a_row_moved_to_another_user_does_not_open(
    store: ConversationStore, ann: str, ben: str
) -> None:
    a = store.start(ann, "a", now=NOW)
    b = store.start(ben, "b", now=NOW)
    store.add_turn(ann, a, _turn("q1"), now=NOW)
    store.add_turn(ben, b, _turn("q2", "ben's"), now=NOW)
    with sqlite3.connect(store.path) as db:
        payload = db.execute("SELECT payload FROM turns WHERE question_id='q1'").fetchone()[0]
        db.execute("UPDATE turns SET payload=? WHERE question_id='q2'", (payload,))
    with pytest.raises(TamperedError):
        store.read(ben, b)


def test_delete_removes_turns(store: ConversationStore, ann: str) -> None:
    conv = store.start(ann, "t", now=NOW)
    store.add_turn(ann, conv, _turn("q1"), now=NOW)
    store.delete(ann, conv)
    assert store.history(ann) == []
    with pytest.raises(NotFound):
        store.rate(ann, "q1", 1, now=NOW)


def _ask(store: ConversationStore, user: User, qid: str) -> str:
    conv = store.start(user.id, f"What about {qid}?", now=NOW)
    store.add_turn(user.id, conv, _turn(qid), now=NOW + 1)
    store.rate(user.id, qid, -1, now=NOW + 2, comment="BLUEHERON is wrong")
    return conv


def _copy_db(store: ConversationStore, dest: Path) -> Path:
    with sqlite3.connect(store.path) as src, sqlite3.connect(dest) as out:
        src.backup(out)  # what a backup job copies: the database with its WAL applied
    return dest


def test_a_removed_user_is_shredded_and_a_new_namesake_inherits_nothing(
    store: ConversationStore, users: UserStore, home: UnlockedHome, tmp_path: Path
) -> None:
    bob = users.add_user("bob", role="staff", groups="", password=PW, now=NOW)
    conv = _ask(store, bob, "q-bob")
    key_file = home.layout.key_stores / "conversations" / f"{bob.id}.json"
    assert key_file in home.keyring.stores() and key_file.is_file()
    backup = _copy_db(store, tmp_path / "backup.db")
    old_key_file = tmp_path / "old-key.json"
    shutil.copy(key_file, old_key_file)

    assert store.forget(bob.id) == 1  # what `appliance users remove` does
    users.remove("bob")
    new_bob = users.add_user("bob", role="staff", groups="", password=PW, now=NOW + 9)
    assert new_bob.id != bob.id
    assert store.history(new_bob.id) == [] and store.feedback_rows() == []
    with pytest.raises(NotFound):
        store.read(new_bob.id, conv)
    assert not key_file.exists() and key_file not in home.keyring.stores()
    with sqlite3.connect(store.path) as db:
        for table in ("conversations", "turns", "feedback"):
            assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("conversations.db*"))
    with sqlite3.connect(backup) as db:
        payload = db.execute("SELECT payload FROM turns").fetchone()[0]
    assert payload.encode() not in raw  # not even in free pages or the WAL

    # the old copy of the database: no key that remains opens it
    record = f"turn:{conv}:1"
    for path in home.keyring.stores():
        if path.exists():
            ks = KeyStore.read(path, home.keyring)
            data_key = home.keyring.unwrap(ks.wrapped, context=ks.context)
            with pytest.raises(TamperedError):
                RecordCipher(data_key, context=f"conversations:{bob.id}").open(record, payload)
    old = ConversationStore(
        backup, OwnerKeys(home.layout.key_stores / "conversations", home.keyring)
    )
    with pytest.raises(NotFound):
        old.read(bob.id, conv)
    # a stolen copy of the old key store opens it only until the kek is retired
    _, data_key = KeyStore.load(
        old_key_file, home.keyring, context=f"kapp/v1 conversations:{bob.id}"
    )
    cipher = RecordCipher(data_key, context=f"conversations:{bob.id}")
    assert SECRET.encode() in cipher.open(record, payload)
    home.keyring.rotate()
    retire_old_keys(home.keyring)
    with pytest.raises(KeyringError) as caught:
        KeyStore.load(old_key_file, home.keyring, context=f"kapp/v1 conversations:{bob.id}")
    assert caught.value.code == "KEK_TRIMMED"
    assert store.history(users.get("ann").id) == []  # everyone else's keys were rewrapped
    other = _ask(store, users.get("ann"), "q-ann")
    assert store.read(users.get("ann").id, other).turns[0].answer == SECRET


def test_a_server_keeps_creating_keys_after_the_cli_removed_someone(
    tmp_path: Path, home: UnlockedHome, users: UserStore
) -> None:
    """Two processes write the keyring: the server (new keys) and the CLI (destroyed keys)."""
    server = ConversationStore.open(tmp_path, home, users=users)
    cli_home = unlock_home(
        HomeLayout(home.layout.root), "pass phrase for tests", now=NOW, actor="cli"
    )
    cli = ConversationStore.open(tmp_path, cli_home, users=users)
    _ask(server, users.get("ann"), "q1")
    cli.forget(users.get("ann").id)  # the CLI's keyring write makes the server's copy stale
    _ask(server, users.get("ben"), "q2")  # the server's copy of the keyring is stale now
    keys = home.layout.key_stores / "conversations"
    ann_key, ben_key = (keys / f"{users.get(n).id}.json" for n in ("ann", "ben"))
    for ring in (home.keyring, cli_home.keyring):
        ring.refresh()
        assert ben_key in ring.stores() and ann_key not in ring.stores()  # no change was lost


def test_name_keyed_history_is_migrated_to_account_keys(
    tmp_path: Path, home: UnlockedHome, users: UserStore
) -> None:
    legacy_path = home.layout.key_stores / "conversations.json"
    key = open_collection_key(legacy_path, home.keyring, context=LEGACY_CONTEXT)
    legacy = RecordCipher(key, context=LEGACY_CONTEXT)
    with sqlite3.connect(tmp_path / "conversations.db") as db:  # as the previous release wrote
        db.executescript(V1_SCHEMA)
        for conv, name, qid in (("c-" + "a" * 24, "Ann", "q1"), ("c-" + "b" * 24, "gone", "q2")):
            title = legacy.seal(f"conv:{conv}:{name.lower()}", b"old question")
            db.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, ?, ?)", (conv, name, title, NOW, NOW)
            )
            payload = legacy.seal(f"turn:{conv}:1:{name.lower()}", _turn(qid).to_bytes())
            db.execute("INSERT INTO turns VALUES (?, 1, ?, ?, ?)", (conv, qid, payload, NOW))
            comment = legacy.seal(f"feedback:{qid}:{name.lower()}", b"too vague")
            db.execute(
                "INSERT INTO feedback VALUES (?, ?, -1, ?, 'extractive', '', ?)",
                (qid, name, comment, NOW),
            )
    store = ConversationStore.open(tmp_path, home, users=users)
    ann = users.get("ann").id
    (mine,) = store.history(ann)
    got = store.read(ann, mine.id)
    assert (mine.title, got.turns[0].answer, got.turns[0].rating) == ("old question", SECRET, -1)
    assert [r["question_id"] for r in store.feedback_rows()] == ["q1"]  # "gone" left nothing
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 1
        comment = db.execute("SELECT comment_enc FROM feedback").fetchone()[0]
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert store.keys.cipher(ann) is not None
    assert store.keys.cipher(ann).open("feedback:q1", comment) == b"too vague"  # type: ignore[union-attr]
    assert not legacy_path.exists() and legacy_path not in home.keyring.stores()
    users.add_user("gone", role="staff", groups="", password=PW, now=NOW)
    assert store.history(users.get("gone").id) == []  # a new "gone" inherits nothing either
    again = ConversationStore.open(tmp_path, home, users=users)  # idempotent
    assert [c.id for c in again.history(ann)] == [mine.id]


def test_a_newer_database_is_refused(tmp_path: Path, home: UnlockedHome, users: UserStore) -> None:
    with sqlite3.connect(tmp_path / "conversations.db") as db:
        db.execute("PRAGMA user_version = 9")
    with pytest.raises(ApplianceError, match="newer version"):
        ConversationStore.open(tmp_path, home, users=users)
