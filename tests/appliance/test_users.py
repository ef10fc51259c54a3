"""User store on a real SQLite file: accounts and their stable ids, password hashing, the login
delay (never a lockout of the real user), uniform failures, tokens."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import string
from pathlib import Path

import pytest

import appliance.passwords
from appliance.errors import (
    AlreadyExists,
    ApplianceError,
    AuthError,
    InvalidInput,
    NotFound,
)
from appliance.users import _SCHEMA_1, USER_ID, ScryptParams, UserStore, parse_password_hash

NOW = 1_700_000_000
FAST = ScryptParams(n=2**4, r=1, p=1)
ALICE_PW = "correct horse battery staple"
BOB_PW = "Tr0ub4dor&3-but-longer"


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    store = UserStore.open(tmp_path / "users.db", scrypt=FAST)
    store.add_user("alice", role="admin", groups="Finance, hr,finance,", password=ALICE_PW, now=NOW)
    store.add_user("bob", role="staff", groups=["sales"], password=BOB_PW, now=NOW + 1)
    return store


def db_bytes(directory: Path) -> bytes:
    """Every byte SQLite wrote: the database and any WAL / shared-memory files."""
    return b"".join(p.read_bytes() for p in sorted(directory.glob("users.db*")))


def stored_hash(store: UserStore, name: str) -> str:
    with sqlite3.connect(store.path) as db:
        row = db.execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
    return str(row[0])


def test_fresh_store_has_no_accounts_and_is_private(tmp_path: Path) -> None:
    store = UserStore.open(tmp_path / "users.db", scrypt=FAST)
    assert store.list_users() == []
    assert (store.path.stat().st_mode & 0o777) == 0o600
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert UserStore.open(store.path, scrypt=FAST).list_users() == []  # reopening keeps it


def test_add_list_get_disable_enable_remove(store: UserStore) -> None:
    alice, bob = store.list_users()
    assert (alice.name, alice.role, alice.groups, alice.is_admin) == (
        "alice",
        "admin",
        ("finance", "hr"),
        True,
    )
    assert (bob.groups, bob.created_at, bob.password_changed_at) == (("sales",), NOW + 1, NOW + 1)
    assert store.get("ALICE").name == "alice"
    with pytest.raises(AlreadyExists, match="already exists"):
        store.add_user("Alice", role="staff", groups=[], password="x" * 20, now=NOW)
    store.disable("bob")
    assert store.get("bob").disabled
    store.enable("bob")
    assert not store.get("bob").disabled
    store.remove("bob")
    assert [u.name for u in store.list_users()] == ["alice"]
    for call in (store.remove, store.disable, store.get):
        with pytest.raises(NotFound, match="no user named 'bob'") as caught:
            call("bob")
        assert "appliance users list" in caught.value.diagnostics()


def test_authenticate_and_indistinguishable_failures(
    store: UserStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown name, invalid name, wrong password, disabled and delayed accounts: one error
    (type, code, message, hint), one scrypt run each; only ``reason`` (for the audit) differs."""
    assert store.authenticate("alice", ALICE_PW, now=NOW).name == "alice"
    store.add_user("carol", role="staff", groups=[], password=BOB_PW, now=NOW)
    store.disable("carol")
    for i in range(5):
        with pytest.raises(AuthError):
            store.authenticate("bob", "wrong password!", now=NOW + i)
    runs: list[int] = []
    real_scrypt = hashlib.scrypt

    def counting(*args: object, **kwargs: object) -> bytes:
        runs.append(1)
        return real_scrypt(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(appliance.passwords.hashlib, "scrypt", counting)
    failures, reasons = [], []
    attempts = [
        ("alice", BOB_PW),  # wrong password
        ("nobody", ALICE_PW),  # no such account
        ("bad name!", "x"),  # not even a valid name
        ("carol", BOB_PW),  # disabled, with the right password
        ("bob", BOB_PW),  # delayed, with the right password, from an unrecognised client
    ]
    for name, password in attempts:
        runs.clear()
        with pytest.raises(AuthError) as caught:
            store.authenticate(name, password, now=NOW + 10)
        assert len(runs) == 1, name  # the same hashing work for every failure
        failures.append((type(caught.value), caught.value.code, caught.value.diagnostics()))
        reasons.append(caught.value.reason)
    assert len(set(failures)) == 1
    assert failures[0][:2] == (AuthError, "AUTH_FAILED")
    assert "nobody" not in failures[0][2] and "disabled" not in failures[0][2]
    assert reasons == [
        "WRONG_PASSWORD",
        "UNKNOWN_USER",
        "INVALID_NAME",
        "ACCOUNT_DISABLED",
        "ACCOUNT_DELAYED",
    ]


def test_failures_delay_only_unrecognised_clients_and_never_lock_the_user_out(
    store: UserStore,
) -> None:
    for i in range(4):
        with pytest.raises(AuthError):
            store.authenticate("bob", "wrong password!", now=NOW + i)
    assert store.get("bob").failed_logins == 4
    store.authenticate("bob", BOB_PW, now=NOW + 5)  # success resets the counter
    assert store.get("bob").failed_logins == 0
    for i in range(5):
        with pytest.raises(AuthError) as caught:
            store.authenticate("bob", "wrong password!", now=NOW + 10 + i)
        assert caught.value.reason == "WRONG_PASSWORD"
    last = NOW + 14
    assert store.get("bob").locked_until == last + 60  # a minute at first
    with pytest.raises(AuthError) as caught:  # the right password, from a stranger's client
        store.authenticate("bob", BOB_PW, now=last + 59)
    assert caught.value.reason == "ACCOUNT_DELAYED"
    assert caught.value.message == "The user name or password is wrong."
    seen: list[str] = []

    def known(user: object) -> bool:
        seen.append(getattr(user, "id", ""))
        return True

    # the real user on a recognised client is never delayed, however many failures
    assert store.authenticate("bob", BOB_PW, now=last + 1, recognised=known).name == "bob"
    assert seen == [store.get("bob").id]
    for i in range(40):  # the delay doubles and stops at lockout_seconds
        with pytest.raises(AuthError):
            store.authenticate("bob", "wrong password!", now=NOW + 100 + i)
    assert store.get("bob").locked_until == NOW + 139 + 900
    assert store.authenticate("bob", BOB_PW, now=NOW + 139, recognised=known).name == "bob"
    with pytest.raises(AuthError):
        store.authenticate("bob", "wrong password!", now=NOW + 200)
    store.unlock("bob")  # what `appliance users unlock` does
    assert store.authenticate("bob", BOB_PW, now=NOW + 201).name == "bob"


def test_delay_doubles_from_one_minute(store: UserStore) -> None:
    delays = []
    for i in range(9):
        with pytest.raises(AuthError):
            store.authenticate("bob", "wrong password!", now=NOW + i)
        delays.append(store.get("bob").locked_until - (NOW + i) if i >= 4 else 0)
    assert delays == [0, 0, 0, 0, 60, 120, 240, 480, 900]


def test_lockout_is_configurable_and_passwd_clears_it(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.db", scrypt=FAST, max_failures=2, lockout_seconds=60)
    store.add_user("carol", role="staff", groups=[], password=ALICE_PW, now=NOW)
    for _ in range(2):
        with pytest.raises(AuthError):
            store.authenticate("carol", "nope nope nope", now=NOW)
    assert store.get("carol").is_locked(NOW + 59) and not store.get("carol").is_locked(NOW + 60)
    store.set_password("carol", "a brand new passphrase", now=NOW + 1)
    assert store.authenticate("carol", "a brand new passphrase", now=NOW + 1).name == "carol"
    assert store.get("carol").password_changed_at == NOW + 1
    with pytest.raises(AuthError):
        store.authenticate("carol", ALICE_PW, now=NOW + 1)


def test_every_account_has_a_stable_id_that_is_never_reused(store: UserStore) -> None:
    bob = store.get("bob")
    assert USER_ID.fullmatch(bob.id) and bob.id != store.get("alice").id
    assert store.authenticate("bob", BOB_PW, now=NOW).id == bob.id
    store.set_password("bob", "another long passphrase", now=NOW + 1)
    assert store.get("BOB").id == bob.id
    store.remove("bob")
    again = store.add_user("bob", role="staff", groups=["sales"], password=BOB_PW, now=NOW + 2)
    assert again.id != bob.id and USER_ID.fullmatch(again.id)


def test_an_old_database_gets_ids_and_keeps_accounts_and_tokens(tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    with sqlite3.connect(path) as db:  # a database as schema version 1 left it
        db.executescript(_SCHEMA_1)
        db.execute(
            "INSERT INTO users (name, role, groups, password_hash, created_at,"
            " password_changed_at) VALUES (?, 'staff', '[]', ?, ?, ?)",
            ("dora", FAST.hash(ALICE_PW), NOW, NOW),
        )
        db.execute(
            "INSERT INTO users (name, role, groups, password_hash, created_at,"
            " password_changed_at) VALUES (?, 'admin', '[]', ?, ?, ?)",
            ("ed", FAST.hash(BOB_PW), NOW, NOW),
        )
        db.execute("PRAGMA user_version = 1")
    store = UserStore.open(path, scrypt=FAST)
    token = store.issue_token("dora", now=NOW)
    dora, ed = store.list_users()
    assert USER_ID.fullmatch(dora.id) and USER_ID.fullmatch(ed.id) and dora.id != ed.id
    assert store.authenticate("dora", ALICE_PW, now=NOW).id == dora.id
    assert store.authenticate_token(token, now=NOW).id == dora.id
    assert UserStore.open(path, scrypt=FAST).get("ed").id == ed.id  # assigned once
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        with pytest.raises(sqlite3.IntegrityError):  # ids are unique
            db.execute("UPDATE users SET id = ? WHERE name = 'ed'", (dora.id,))


def test_passwords_are_never_stored_in_plaintext(store: UserStore, tmp_path: Path) -> None:
    store.set_password("bob", "zebra-quartz-marmalade-91", now=NOW + 2)
    data = db_bytes(tmp_path)
    assert b"alice" in data  # the scan does see the database contents
    for secret in (ALICE_PW, BOB_PW, "zebra-quartz-marmalade-91"):
        assert secret.encode() not in data
    assert b"marmalade" not in data


def test_hash_parameters_are_stored_and_raised_on_login(store: UserStore) -> None:
    stored = stored_hash(store, "alice")
    assert stored.startswith("$scrypt$ln=4,r=1,p=1$")
    params, salt, digest = parse_password_hash(stored)
    assert (params, len(salt), len(digest)) == (FAST, 16, 32)
    assert stored_hash(store, "bob").split("$")[3] != stored.split("$")[3]  # per-user salt
    stronger = ScryptParams(n=2**6, r=2, p=1)
    upgraded = UserStore.open(store.path, scrypt=stronger)
    upgraded.authenticate("alice", ALICE_PW, now=NOW)
    assert parse_password_hash(stored_hash(store, "alice"))[0] == stronger
    assert upgraded.authenticate("alice", ALICE_PW, now=NOW + 1).name == "alice"


def test_default_scrypt_cost_round_trip(tmp_path: Path) -> None:
    store = UserStore.open(tmp_path / "users.db")
    store.add_user("dave", role="staff", groups=[], password=ALICE_PW, now=NOW)
    assert stored_hash(store, "dave").startswith("$scrypt$ln=15,r=8,p=1$")
    assert store.authenticate("dave", ALICE_PW, now=NOW).name == "dave"


def test_tokens_are_stored_hashed_and_can_be_revoked(store: UserStore, tmp_path: Path) -> None:
    token = store.issue_token("bob", now=NOW, label="laptop")
    assert token.startswith("kapp_") and len(token) == 5 + 43
    assert store.authenticate_token(token, now=NOW + 7).name == "bob"
    (info,) = store.list_tokens("bob")
    assert (info.label, info.created_at, info.last_used_at, info.revoked) == (
        "laptop",
        NOW,
        NOW + 7,
        False,
    )
    data = db_bytes(tmp_path)
    assert token.encode() not in data and token[5:].encode() not in data
    raw = base64.urlsafe_b64decode(token[5:] + "=")
    assert hashlib.sha256(raw).hexdigest().encode() in data
    second = store.issue_token("bob", now=NOW)
    assert store.revoke_tokens("bob") == 2
    for revoked in (token, second):
        with pytest.raises(AuthError, match="token is not valid") as caught:
            store.authenticate_token(revoked, now=NOW)
        assert caught.value.reason == "TOKEN_REVOKED"


def test_bad_tokens_fail_alike(store: UserStore) -> None:
    token = store.issue_token("alice", now=NOW)
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    other = alphabet[alphabet.index(token[5]) ^ 1]
    variant = token[:5] + other + token[6:]  # another token, one character off
    # the last character carries 4 bits of data: flipping its lowest bit keeps the same bytes
    non_canonical = token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1]
    assert base64.urlsafe_b64decode(non_canonical[5:] + "=") == base64.urlsafe_b64decode(
        token[5:] + "="
    )
    bad_tokens = ("", "kapp_", token[:-1], token + "A", "kapp_" + "é" * 43, token[5:])
    failures = set()
    for bad in (*bad_tokens, variant, non_canonical):
        with pytest.raises(AuthError, match="token is not valid") as caught:
            store.authenticate_token(bad, now=NOW)
        failures.add((caught.value.code, caught.value.diagnostics()))
    assert store.authenticate_token(token, now=NOW).name == "alice"
    store.disable("alice")
    with pytest.raises(AuthError) as caught:  # says nothing about the account behind it
        store.authenticate_token(token, now=NOW + 5)
    failures.add((caught.value.code, caught.value.diagnostics()))
    assert len(failures) == 1 and "alice" not in caught.value.diagnostics()
    assert caught.value.reason == "ACCOUNT_DISABLED"
    assert store.list_tokens("alice")[0].last_used_at == NOW  # a refused use is not a use
    with pytest.raises(InvalidInput, match="disabled"):
        store.issue_token("alice", now=NOW)


def test_removing_a_user_removes_their_tokens(store: UserStore) -> None:
    token = store.issue_token("bob", now=NOW)
    store.remove("bob")
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 0
    with pytest.raises(AuthError):
        store.authenticate_token(token, now=NOW)


@pytest.mark.parametrize("name", ["", "a" * 65, "bad name", "ümlaut", "a/b", "x;DROP"])
def test_invalid_names_are_rejected(store: UserStore, name: str) -> None:
    with pytest.raises(InvalidInput, match="user name") as caught:
        store.add_user(name, role="staff", groups=[], password=ALICE_PW, now=NOW)
    assert caught.value.code == "INVALID_INPUT" and "1-64 characters" in caught.value.hint


def test_invalid_groups_roles_and_passwords_are_rejected(store: UserStore) -> None:
    add = store.add_user
    for groups in ("ok,bad group", ["x" * 65], ["fine", "sl/ash"], [f"g{i}" for i in range(65)]):
        with pytest.raises(InvalidInput, match="group"):
            add("erin", role="staff", groups=groups, password=ALICE_PW, now=NOW)
    with pytest.raises(InvalidInput, match="role 'root' is not known") as caught:
        add("erin", role="root", groups=[], password=ALICE_PW, now=NOW)
    assert "staff or admin" in caught.value.hint
    with pytest.raises(InvalidInput, match="11 characters; at least 12"):
        add("erin", role="staff", groups=[], password="short pass!", now=NOW)
    with pytest.raises(InvalidInput, match="user name"):
        add("erin.longname", role="staff", groups=[], password="Erin.Longname", now=NOW)
    with pytest.raises(InvalidInput, match="longer than"):
        add("erin", role="staff", groups=[], password="p" * 1025, now=NOW)
    assert [u.name for u in store.list_users()] == ["alice", "bob"]
    relaxed = UserStore(store.path, scrypt=FAST, min_password_length=4)
    relaxed.add_user("erin", role="staff", groups="", password="four", now=NOW)
    assert relaxed.get("erin").groups == ()


def test_damaged_or_newer_database_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ApplianceError) as caught:
        UserStore.open(junk, scrypt=FAST)
    assert caught.value.code == "USER_STORE" and "restore" in caught.value.hint
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(ApplianceError, match="newer version"):
        UserStore.open(newer, scrypt=FAST)
