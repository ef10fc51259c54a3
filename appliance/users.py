"""User accounts and API tokens in one SQLite file (WAL mode, foreign keys on).

Passwords are stored only as scrypt hashes (:mod:`appliance.passwords`); a successful login
re-hashes with the current parameters. API tokens are 32 random bytes shown once as ``kapp_...``;
only their SHA-256 is stored. Each account has a stable random id (``u-`` + 32 hex digits) that is
never reused: what belongs to a person (conversations, trusted devices) is keyed by it, so a new
account that takes a removed account's name inherits nothing.

Every failed login has the same message and costs the same hashing work, whether the name is
unknown, the password wrong, the account disabled or delayed; the real cause travels in
:attr:`AuthError.reason` to the audit log only. There is no hard lockout a stranger could
trigger: failures in a row only delay the account for clients the caller does not recognise
(see :meth:`UserStore.authenticate`). There are no default accounts. Time is always passed in
(unix seconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AlreadyExists, ApplianceError, AuthError, InvalidInput, NotFound
from .passwords import ScryptParams, check_password, parse_password_hash, verify_password
from .passwords import b64 as _b64
from .passwords import unb64 as _unb64
from .sqlite_db import Store, connect

USER_STORE = Store(
    "user database",
    "USER_STORE",
    "Check the path and permissions, or restore the file from backup.",
)

ROLES = ("staff", "admin")
TOKEN_PREFIX = "kapp_"  # noqa: S105 - a prefix, not a secret
MAX_GROUPS = 64
DELAY_BASE_S = 60  # the first delay after max_failures failures in a row; it doubles each time
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
USER_ID = re.compile(r"u-[0-9a-f]{32}")
_TOKEN = re.compile(TOKEN_PREFIX + r"[A-Za-z0-9_-]{43}")
_SCHEMA_VERSION = 2
_SCHEMA_1 = """
CREATE TABLE users (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    role TEXT NOT NULL CHECK (role IN ('staff', 'admin')),
    groups TEXT NOT NULL CHECK (json_valid(groups)),
    password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    password_changed_at INTEGER NOT NULL
) STRICT;
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL COLLATE NOCASE
        REFERENCES users(name) ON DELETE CASCADE ON UPDATE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1))
) STRICT;
CREATE INDEX tokens_by_user ON tokens(user);
"""
_USER_COLUMNS = (  # the hash comes last and never leaves this module
    "name, role, groups, disabled, failed_logins, locked_until, created_at, password_changed_at,"
    " id, password_hash"
)


def new_user_id() -> str:
    return "u-" + secrets.token_hex(16)


@dataclass(frozen=True)
class User:
    """An account as the rest of the appliance sees it: never with its password hash."""

    name: str
    role: str
    groups: tuple[str, ...]
    disabled: bool
    failed_logins: int  # failed password logins in a row (reset by a success)
    locked_until: int  # unix seconds: until then unrecognised clients are refused (see above)
    created_at: int
    password_changed_at: int
    id: str = ""  # stable and never reused (u- + 32 hex); empty only in hand-made test objects

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def is_locked(self, now: int) -> bool:
        """Whether logins from clients that are not recognised for this account wait now."""
        return self.locked_until > now


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: never the token itself."""

    id: str
    user: str
    label: str
    created_at: int
    last_used_at: int | None
    revoked: bool


class UserStore:
    """Accounts and tokens; every call opens its own short connection (safe across threads)."""

    def __init__(
        self,
        path: Path,
        *,
        scrypt: ScryptParams | None = None,
        min_password_length: int = 12,
        max_failures: int = 5,
        lockout_seconds: int = 15 * 60,
    ) -> None:
        if min_password_length < 1 or max_failures < 1 or lockout_seconds < 0:
            raise ValueError("Password length, failure count and lockout must be positive.")
        self.path = Path(path)
        self.scrypt = scrypt or ScryptParams()
        self.min_password_length = min_password_length
        self.max_failures = max_failures
        self.lockout_seconds = lockout_seconds
        self._dummy_hash: str | None = None
        self._create()

    @classmethod
    def open(cls, path: Path, **options: Any) -> UserStore:
        """Open (creating if needed) the store at ``path``."""
        return cls(path, **options)

    def add_user(
        self, name: str, *, role: str, groups: Iterable[str] | str, password: str, now: int
    ) -> User:
        name, role, group_list = check_name(name), check_role(role), normalise_groups(groups)
        self.check_password(password, name)
        password_hash = self.scrypt.hash(password)  # before the write lock: scrypt is slow
        with self._db(write=True) as db:
            if _row(db, name) is not None:
                raise AlreadyExists(
                    f"A user named '{name}' already exists.",
                    hint="Pick another name, or change that account with `appliance users`.",
                )
            db.execute(
                "INSERT INTO users (name, role, groups, password_hash, created_at,"
                " password_changed_at, id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, role, json.dumps(group_list), password_hash, now, now, new_user_id()),
            )
            return _user(_row(db, name))

    def set_password(self, name: str, password: str, *, now: int) -> None:
        """Change the password; this also clears failed logins and any delay."""
        user = self.get(name)
        self.check_password(password, user.name)
        self._update(
            user.name,
            "password_hash = ?, password_changed_at = ?, failed_logins = 0, locked_until = 0",
            self.scrypt.hash(password),
            now,
        )

    def disable(self, name: str) -> None:
        self._update(name, "disabled = 1")

    def enable(self, name: str) -> None:
        self._update(name, "disabled = 0")

    def unlock(self, name: str) -> None:
        """Clear the failed-login count and the delay for unrecognised clients."""
        self._update(name, "failed_logins = 0, locked_until = 0")

    def remove(self, name: str) -> None:
        """Delete the account and (by cascade) its tokens; its id is never given out again."""
        with self._db(write=True) as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise _not_found(name)

    def list_users(self) -> list[User]:
        with self._db() as db:
            rows = db.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name").fetchall()  # noqa: S608
        return [_user(row) for row in rows]

    def get(self, name: str) -> User:
        with self._db() as db:
            row = _row(db, name)
        if row is None:
            raise _not_found(name)
        return _user(row)

    def authenticate(
        self,
        name: str,
        password: str,
        *,
        now: int,
        recognised: Callable[[User], bool] | None = None,
    ) -> User:
        """The user if ``password`` is right and nothing stands in the way; else AuthError.

        Every failure has the same message and code after the same hashing work; its
        ``reason`` (audit only) is INVALID_NAME, UNKNOWN_USER, WRONG_PASSWORD,
        ACCOUNT_DISABLED or ACCOUNT_DELAYED. After ``max_failures`` wrong passwords in a row the
        account is *delayed* (first for a minute, doubling with each further failure up to
        ``lockout_seconds``) for clients that ``recognised(user)`` does not vouch for: their
        passwords are still checked, but refused even when right. The delay therefore tells a
        guesser nothing, and the real user on a recognised client is never locked out.
        """
        valid = isinstance(name, str) and _NAME.fullmatch(name) is not None
        with self._db() as db:
            row = _row(db, name) if valid else None
        if row is None:
            verify_password(password, self._dummy())  # same work as for a real account
            raise _auth_failed("UNKNOWN_USER" if valid else "INVALID_NAME")
        user, stored = _user(row), row[-1]
        if not verify_password(password, stored):
            self._record_failure(user.name, now)
            raise _auth_failed("WRONG_PASSWORD")
        if user.disabled:
            raise _auth_failed("ACCOUNT_DISABLED")
        if user.is_locked(now) and not (recognised is not None and recognised(user)):
            raise _auth_failed("ACCOUNT_DELAYED")
        self._record_success(user.name, password, stored)
        return self.get(user.name)

    def issue_token(self, name: str, *, now: int, label: str = "") -> str:
        """A new API token for ``name``; shown only now, stored only as a hash."""
        if len(label) > 200:
            raise InvalidInput("A token label must be at most 200 characters.")
        user = self.get(name)
        if user.disabled:
            raise InvalidInput(f"The account '{user.name}' is disabled; enable it first.")
        raw = secrets.token_bytes(32)
        with self._db(write=True) as db:
            db.execute(
                "INSERT INTO tokens (id, user, token_hash, label, created_at) VALUES (?,?,?,?,?)",
                (secrets.token_hex(8), user.name, _token_hash(raw), label, now),
            )
        return TOKEN_PREFIX + _b64(raw)

    def authenticate_token(self, token: str, *, now: int) -> User:
        """The token's user; AuthError with one message for every failure (``reason``, for the
        audit log: TOKEN_MALFORMED, TOKEN_UNKNOWN, TOKEN_REVOKED or ACCOUNT_DISABLED).

        The password delay does not apply to tokens (it slows password guessing, and a token
        cannot be guessed); a disabled account does.
        """
        raw = _parse_token(token)
        with self._db(write=True) as db:
            found = db.execute(
                "SELECT id, user, revoked FROM tokens WHERE token_hash = ?", (_token_hash(raw),)
            ).fetchone()
            if found is None or found[2]:
                raise _bad_token("TOKEN_REVOKED" if found else "TOKEN_UNKNOWN")
            user = _user(_row(db, found[1]))
            if user.disabled:
                raise _bad_token("ACCOUNT_DISABLED")
            db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, found[0]))
        return user

    def revoke_tokens(self, name: str) -> int:
        """Revoke every token of ``name``; returns how many were still active."""
        user = self.get(name)
        with self._db(write=True) as db:
            cursor = db.execute(
                "UPDATE tokens SET revoked = 1 WHERE user = ? AND revoked = 0", (user.name,)
            )
            return cursor.rowcount

    def list_tokens(self, name: str) -> list[TokenInfo]:
        user = self.get(name)
        with self._db() as db:
            rows = db.execute(
                "SELECT id, user, label, created_at, last_used_at, revoked FROM tokens"
                " WHERE user = ? ORDER BY created_at, id",
                (user.name,),
            ).fetchall()
        return [TokenInfo(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def check_password(self, password: str, name: str) -> None:
        """The password policy: long enough, not too long, not the user name."""
        check_password(password, name, min_length=self.min_password_length)

    def _record_failure(self, name: str, now: int) -> None:
        with self._db(write=True) as db:
            row = db.execute(
                "UPDATE users SET failed_logins = failed_logins + 1 WHERE name = ?"
                " RETURNING failed_logins",
                (name,),
            ).fetchone()
            if row is not None and row[0] >= self.max_failures:
                delay = DELAY_BASE_S << min(row[0] - self.max_failures, 30)
                until = now + min(delay, self.lockout_seconds)
                db.execute("UPDATE users SET locked_until = ? WHERE name = ?", (until, name))

    def _record_success(self, name: str, password: str, stored: str) -> None:
        params = parse_password_hash(stored)[0]
        sets, args = "failed_logins = 0, locked_until = 0", []
        if params != self.scrypt:  # the cost was raised since this password was set
            sets, args = sets + ", password_hash = ?", [self.scrypt.hash(password)]
        self._update(name, sets, *args)

    def _update(self, name: str, sets: str, *args: Any) -> None:
        with self._db(write=True) as db:
            query = f"UPDATE users SET {sets} WHERE name = ?"  # noqa: S608 - fixed column list
            if db.execute(query, (*args, name)).rowcount == 0:
                raise _not_found(name)

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self.scrypt.unmatchable_hash()  # no extra work on first use
        return self._dummy_hash

    def _create(self) -> None:
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise USER_STORE.broken(self.path, exc) from exc
        with self._db() as db:
            db.execute("PRAGMA journal_mode = WAL")  # persistent; not allowed inside a transaction
        with self._db(write=True) as db:  # IMMEDIATE: two processes never both create tables
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise ApplianceError(
                    f"The user database at {self.path} was made by a newer version.",
                    code="USER_STORE",
                    hint="Upgrade the appliance software before using it.",
                )
            if version < 1:
                for statement in filter(str.strip, _SCHEMA_1.split(";")):
                    db.execute(statement)
            if version < 2:
                _add_user_ids(db)
            if version < _SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _db(self, *, write: bool = False) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A connection; with ``write`` one IMMEDIATE transaction, committed on success only.
        ``secure_delete``: old hashes do not linger in free pages."""
        return connect(
            self.path,
            USER_STORE,
            pragmas=("foreign_keys = ON", "secure_delete = ON"),
            transaction=write,
        )


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"The user name {name!r} is not valid.",
            hint="Use 1-64 characters: letters, digits and . _ @ -",
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"The role {role!r} is not known.", hint="Use staff or admin.")
    return role


def normalise_groups(groups: Iterable[str] | str) -> list[str]:
    """Lower-case, de-duplicated, sorted group names; a string is split at commas (CLI input)."""
    items = groups.split(",") if isinstance(groups, str) else list(groups)
    names = set()
    for item in items:
        group = item.strip().lower() if isinstance(item, str) else item
        if group == "":
            continue  # "a,,b" or a trailing comma on the command line
        if not isinstance(group, str) or not _NAME.fullmatch(group):
            raise InvalidInput(
                f"The group name {group!r} is not valid.",
                hint="Use 1-64 characters: letters, digits and . _ @ -",
            )
        names.add(group)
    if len(names) > MAX_GROUPS:
        raise InvalidInput(f"A user can be in at most {MAX_GROUPS} groups.")
    return sorted(names)


def _add_user_ids(db: sqlite3.Connection) -> None:
    """Schema 2: a stable random id per account (existing accounts get theirs now)."""
    db.execute("ALTER TABLE users ADD COLUMN id TEXT NOT NULL DEFAULT ''")
    for (name,) in db.execute("SELECT name FROM users").fetchall():
        db.execute("UPDATE users SET id = ? WHERE name = ?", (new_user_id(), name))
    db.execute("CREATE UNIQUE INDEX users_by_id ON users(id)")


def _row(db: sqlite3.Connection, name: str) -> tuple[Any, ...] | None:
    query = f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?"  # noqa: S608 - fixed columns
    row: tuple[Any, ...] | None = db.execute(query, (name,)).fetchone()
    return row


def _user(row: tuple[Any, ...] | None) -> User:
    assert row is not None
    name, role, groups, disabled, failed, locked, created, changed, user_id, _ = row
    groups_ = tuple(json.loads(groups))
    return User(name, role, groups_, bool(disabled), failed, locked, created, changed, user_id)


def _parse_token(token: str) -> bytes:
    with contextlib.suppress(ValueError):
        if isinstance(token, str) and _TOKEN.fullmatch(token):
            return _unb64(token[len(TOKEN_PREFIX) :])
    raise _bad_token("TOKEN_MALFORMED")


def _token_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _bad_token(reason: str) -> AuthError:
    return AuthError(
        "The API token is not valid.",
        hint="Ask an administrator for a new token.",
        reason=reason,
    )


def _auth_failed(reason: str) -> AuthError:
    return AuthError(
        "The user name or password is wrong.", hint="Check both and try again.", reason=reason
    )


def _not_found(name: str) -> NotFound:
    return NotFound(
        f"There is no user named {name!r}.",
        hint="Run `appliance users list` to see the accounts.",
    )
