"""Server-side web sessions for the staff UI.

A login (throttled as :mod:`appliance.login_guard` describes, then checked by
:meth:`UserStore.authenticate`) gives a random 256-bit
session id, sent to the browser once as an HttpOnly, SameSite=Strict cookie; the database keeps
only its SHA-256, so a copied ``sessions.db`` opens no session. Every request resolves the id to
the *current* account: a session ends when it expires (``serve.session_minutes`` after login),
after ``serve.session_idle_minutes`` without activity (a resolve with ``touch=True``), at logout,
and as soon as its user is disabled, removed or has a new password. Logins are audited
(success and failure, with the user name typed and the precise reason, which the person logging
in never sees); time is always passed in (unix seconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure.home import UnlockedHome

from .errors import AuthError, LoginThrottled, NotFound
from .login_guard import SESSION_STORE, LoginLimits, LoginThrottle, TrustedClients
from .sqlite_db import connect
from .users import User, UserStore

SESSIONS_FILE = "sessions.db"

COOKIE_NAME = "kapp_session"
_ID = re.compile(r"[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL COLLATE NOCASE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(user);
"""


@dataclass(frozen=True)
class Session:
    """A resolved session: the account as it is now, and when the session ends."""

    user: User
    created_at: int
    expires_at: int


class SessionStore:
    """Sessions in one SQLite file; each call opens a short connection (safe across threads)."""

    def __init__(
        self,
        path: Path,
        users: UserStore,
        home: UnlockedHome,
        *,
        minutes: int = 480,
        limits: LoginLimits | None = None,
        idle_minutes: int | None = None,
    ) -> None:
        if minutes < 1 or (idle_minutes is not None and idle_minutes < 1):
            raise ValueError("Sessions must last at least one minute.")
        self.path, self.users, self.home = Path(path), users, home
        self.lifetime_s = minutes * 60
        self.limits = limits or LoginLimits()
        self.throttle = LoginThrottle(self.limits)
        self.idle_s = idle_minutes * 60 if idle_minutes is not None else None
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        with self._db() as db:
            db.executescript(_SCHEMA)
        self.trust = TrustedClients(self.path, self.limits)

    def login(
        self, name: str, password: str, *, now: int, client: str = "", device: str | None = None
    ) -> tuple[str, User]:
        """(session id, user) for a right password; AuthError otherwise (audited either way).

        ``device`` is the browser's device token (:data:`appliance.login_guard.DEVICE_COOKIE`):
        trusted for this account after a successful login, it lets the user past every throttle.
        """
        shown = name if isinstance(name, str) and _NAME.fullmatch(name) else "(invalid name)"
        details: dict[str, str | int | bool] = {"client": client[:64]} if client else {}
        trusted = self._trusted_device(name, device, now=now)
        if trusted is None:
            self._throttle(shown, client, details, now=now)
        else:
            details["device"] = "trusted"

        def recognised(user: User) -> bool:
            return trusted is not None or self.trust.address_known(user.id, client, now=now)

        try:
            user = self.users.authenticate(name, password, now=now, recognised=recognised)
        except AuthError as exc:
            if trusted is not None:
                self.trust.device_failed(trusted.id, device)
            else:
                self.throttle.failed(client, now=now)
            self.home.record(
                "session.login",
                actor=f"user:{shown}",
                now=now,
                outcome="refused",
                reason=exc.reason,
                details=details,
            )
            raise
        self.home.record("session.login", actor=f"user:{user.name}", now=now, details=details)
        self.trust.remember(user.id, client=client, device=device, now=now)
        session_id = secrets.token_urlsafe(32)
        with self._db() as db:
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                (_hash(session_id), user.name, now, now + self.lifetime_s, now),
            )
        return session_id, user

    def resolve(self, session_id: str | None, *, now: int, touch: bool = True) -> Session:
        """The session's current account; AuthError (code SESSION_INVALID) if it has ended.

        ``touch``: this request is the user's activity (a page, a question, a click), which
        restarts the idle timeout; background requests (polls, Gradio's own checks) pass False.
        """
        if not isinstance(session_id, str) or not _ID.fullmatch(session_id):
            raise _invalid()
        key = _hash(session_id)
        with self._db() as db:
            row = db.execute(
                "SELECT user, created_at, expires_at, last_seen FROM sessions WHERE id_hash = ?",
                (key,),
            ).fetchone()
        if row is None:
            raise _invalid()
        name, created, expires, last_seen = row
        user = self._current_user(name)
        ended = user is None or user.disabled or user.password_changed_at > created
        idle = self.idle_s is not None and now - last_seen >= self.idle_s
        if ended or idle or now >= expires:
            self._delete(key)
            raise _invalid()
        assert user is not None
        if touch and now > last_seen:
            with self._db() as db:
                db.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?", (now, key))
        return Session(user, created, expires)

    def logout(self, session_id: str | None, *, now: int) -> bool:
        """End one session; True if it existed (audited)."""
        if not isinstance(session_id, str) or not _ID.fullmatch(session_id):
            return False
        key = _hash(session_id)
        with self._db() as db:
            row = db.execute("SELECT user FROM sessions WHERE id_hash = ?", (key,)).fetchone()
        if row is None:
            return False
        self.home.record("session.logout", actor=f"user:{row[0]}", now=now)
        self._delete(key)
        return True

    def end_user_sessions(self, name: str) -> int:
        """End every session of ``name`` (after disabling, removing or a password reset)."""
        with self._db() as db:
            return db.execute("DELETE FROM sessions WHERE user = ?", (name,)).rowcount

    def active(self, *, now: int) -> int:
        with self._db() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM sessions WHERE expires_at > ? AND last_seen > ?",
                (now, self._idle_before(now)),
            ).fetchone()
        return int(row[0])

    def purge(self, *, now: int) -> int:
        """Forget expired and idle sessions; returns how many."""
        with self._db() as db:
            return db.execute(
                "DELETE FROM sessions WHERE expires_at <= ? OR last_seen <= ?",
                (now, self._idle_before(now)),
            ).rowcount

    def _idle_before(self, now: int) -> int:
        """Sessions last seen at or before this time have been idle too long."""
        return now - self.idle_s if self.idle_s is not None else -(2**62)

    def _trusted_device(self, name: str, device: str | None, *, now: int) -> User | None:
        """The account ``name`` if ``device`` is trusted for it, else None."""
        accounts = self.trust.device_accounts(device, now=now)
        if not accounts or not isinstance(name, str) or not _NAME.fullmatch(name):
            return None
        user = self._current_user(name)
        return user if user is not None and user.id in accounts else None

    def _throttle(self, shown: str, client: str, details: dict[str, Any], *, now: int) -> None:
        """Refuse (audited at most once a minute per address) while a throttle holds."""
        refusal = self.throttle.check(client, now=now)
        if refusal is None:
            return
        if refusal.audit:
            self.home.record(
                "session.login",
                actor=f"user:{shown}",
                now=now,
                outcome="refused",
                reason=refusal.reason,
                details=details | {"refused": refusal.refused},
            )
        raise LoginThrottled(
            "Too many failed logins. Try again later.",
            hint="Wait a few minutes; an administrator can see the reason in the audit log.",
            reason=refusal.reason,
        )

    def _current_user(self, name: str) -> User | None:
        try:
            return self.users.get(name)
        except NotFound:
            return None

    def _delete(self, key: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE id_hash = ?", (key,))

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return connect(self.path, SESSION_STORE, pragmas=("journal_mode = WAL",))


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def _invalid() -> AuthError:
    return AuthError(
        "Your session has ended.", code="SESSION_INVALID", hint="Log in again to continue."
    )
