"""Slowing password guessing without letting a stranger lock anyone out.

Three throttles, each answering a different attacker:

* **Per client address** (:class:`LoginThrottle`, in memory): failed logins from one address (an
  IPv6 client counts as its /64 network) within ``users.client_window_minutes``. From
  ``users.client_failures`` on, each further attempt waits a time that doubles from one second up
  to ``users.client_max_delay_minutes``; attempts during the wait are refused before any name or
  password is looked at, so the refusal says nothing about either.
* **Global** (:class:`LoginThrottle`): while more than ``users.global_failures_per_minute``
  logins failed in the last minute, from all addresses together, attempts without a recognised
  device are refused the same way. This slows a guesser spread over many addresses.
* **Per account** (:meth:`appliance.users.UserStore.authenticate`): wrong passwords in a row
  delay the account, but only for clients not recognised for it, and the delay looks exactly
  like a wrong password.

Recognised clients (:class:`TrustedClients`, a table in ``sessions.db``): a successful login
remembers the browser's device cookie (a random 256-bit token, stored as its SHA-256) and the
client address (stored hashed with the account id) for ``users.trusted_device_days``. A device
trusted for the account skips all three throttles: the real user's browser is never locked out,
even behind the same NAT as an attacker. A remembered address skips only the per-account delay.
A trusted device that fails ``users.lockout_failures`` times in a row loses its trust.

Why in memory: the server is one process; throttle state is a rate that may be lost at a restart,
and keeping it out of SQLite means a flood of attempts costs no disk writes. Refusals by these
throttles are audited at most once a minute per address (with the number refused since), so a
flood cannot fill the audit log either. Time is always passed in (unix seconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
import secrets
import sqlite3
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sqlite_db import Store, connect

SESSION_STORE = Store(
    "session database",
    "SESSION_STORE",
    "Check permissions; deleting the file only logs everyone out.",
)

DEVICE_COOKIE = "kapp_device"
AUDIT_EVERY_S = 60
_DEVICE = re.compile(r"[A-Za-z0-9_-]{43}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS login_trust (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('device', 'address')),
    digest TEXT NOT NULL,
    last_ok INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, kind, digest)
) STRICT;
CREATE INDEX IF NOT EXISTS login_trust_by_digest ON login_trust(kind, digest);
"""


@dataclass(frozen=True)
class LoginLimits:
    """The numbers behind the throttles (settings ``users.*``; see the module doc)."""

    client_failures: int = 10
    client_window_s: int = 3600
    client_max_delay_s: int = 900
    global_per_minute: int = 30
    trust_s: int = 30 * 86400
    device_failures: int = 5
    max_clients: int = 100_000  # addresses tracked at once (least recently failing dropped)

    def __post_init__(self) -> None:
        numbers = (self.client_failures, self.client_window_s, self.global_per_minute)
        if min(numbers) < 1 or self.client_max_delay_s < 1 or self.device_failures < 1:
            raise ValueError("Login limits must be positive.")

    @classmethod
    def from_settings(cls, users: Any) -> LoginLimits:
        return cls(
            client_failures=users.client_failures,
            client_window_s=users.client_window_minutes * 60,
            client_max_delay_s=users.client_max_delay_minutes * 60,
            global_per_minute=users.global_failures_per_minute,
            trust_s=users.trusted_device_days * 86400,
            device_failures=users.lockout_failures,
        )


@dataclass(frozen=True)
class Refusal:
    """A throttled attempt: why, whether to audit it now, and how many were refused since the
    last audited one (this one included)."""

    reason: str  # CLIENT_THROTTLED or GLOBAL_THROTTLED
    audit: bool
    refused: int


@dataclass
class _Window:
    failures: deque[int]
    refused: int = 0
    audited_at: int | None = None


@dataclass
class LoginThrottle:
    """Failed logins per client address and in total, in memory (thread-safe)."""

    limits: LoginLimits = field(default_factory=LoginLimits)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Window] = OrderedDict()
        self._global = _Window(deque(maxlen=self.limits.global_per_minute))

    def check(self, client: str, *, now: int) -> Refusal | None:
        """A :class:`Refusal` if an attempt from ``client`` must be refused now, else None."""
        with self._lock:
            recent = [t for t in self._global.failures if t > now - 60]
            if len(recent) >= self.limits.global_per_minute:
                return _refuse(self._global, "GLOBAL_THROTTLED", now)
            window = self._clients.get(client_key(client))
            if window is not None and now < self._wait_until(window, now):
                return _refuse(window, "CLIENT_THROTTLED", now)
            return None

    def failed(self, client: str, *, now: int) -> None:
        """Count one failed login from ``client``."""
        key, limit = client_key(client), self.limits.client_failures + 32  # enough for the cap
        with self._lock:
            self._global.failures.append(now)
            window = self._clients.pop(key, None) or _Window(deque(maxlen=limit))
            window.failures.append(now)
            self._clients[key] = window  # most recently failing last
            while len(self._clients) > self.limits.max_clients:
                self._clients.popitem(last=False)

    def wait_s(self, client: str, *, now: int) -> int:
        """Seconds until ``client`` may try again (0 if it may now); for tests and status."""
        with self._lock:
            window = self._clients.get(client_key(client))
            return 0 if window is None else max(0, self._wait_until(window, now) - now)

    def _wait_until(self, window: _Window, now: int) -> int:
        start = now - self.limits.client_window_s
        while window.failures and window.failures[0] <= start:
            window.failures.popleft()
        over = len(window.failures) - self.limits.client_failures
        if over < 0:
            return 0
        return window.failures[-1] + min(1 << min(over, 30), self.limits.client_max_delay_s)


def _refuse(window: _Window, reason: str, now: int) -> Refusal:
    window.refused += 1
    due = window.audited_at is None or now - window.audited_at >= AUDIT_EVERY_S
    refused = window.refused
    if due:
        window.audited_at, window.refused = now, 0
    return Refusal(reason, due, refused)


def client_key(client: str) -> str:
    """The throttled unit: the address, or for IPv6 its /64 network (one host has many)."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return str(client)[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def device_token(cookie: str | None) -> str:
    """The browser's device token: its cookie if well-formed, else a new random one (which
    counts only once a login with it succeeds)."""
    return cookie if cookie is not None and is_device_token(cookie) else secrets.token_urlsafe(32)


def is_device_token(value: object) -> bool:
    return isinstance(value, str) and _DEVICE.fullmatch(value) is not None


class TrustedClients:
    """Devices and addresses with a recent successful login, per account id (SQLite)."""

    def __init__(self, path: Path, limits: LoginLimits) -> None:
        self.path, self.limits = Path(path), limits
        with self._db() as db:
            db.executescript(_SCHEMA)

    def device_accounts(self, device: str | None, *, now: int) -> set[str]:
        """Ids of the accounts for which ``device`` is trusted now."""
        if not is_device_token(device):
            return set()
        with self._db() as db:
            rows = db.execute(
                "SELECT user_id FROM login_trust WHERE kind = 'device' AND digest = ?"
                " AND last_ok > ?",
                (_digest("device", str(device)), now - self.limits.trust_s),
            ).fetchall()
        return {r[0] for r in rows}

    def address_known(self, user_id: str, client: str, *, now: int) -> bool:
        with self._db() as db:
            row = db.execute(
                "SELECT 1 FROM login_trust WHERE user_id = ? AND kind = 'address' AND digest = ?"
                " AND last_ok > ?",
                (user_id, _address_digest(user_id, client), now - self.limits.trust_s),
            ).fetchone()
        return row is not None

    def remember(self, user_id: str, *, client: str, device: str | None, now: int) -> None:
        """After a successful login: trust this device and address for the account."""
        items = [("address", _address_digest(user_id, client))] if client else []
        if is_device_token(device):
            items.append(("device", _digest("device", str(device))))
        with self._db() as db:
            db.execute("DELETE FROM login_trust WHERE last_ok <= ?", (now - self.limits.trust_s,))
            db.executemany(
                "INSERT INTO login_trust VALUES (?, ?, ?, ?, 0) ON CONFLICT DO UPDATE"
                " SET last_ok = excluded.last_ok, failures = 0",
                [(user_id, kind, digest, now) for kind, digest in items],
            )

    def device_failed(self, user_id: str, device: str | None) -> None:
        """A wrong password from a trusted device; too many in a row end its trust."""
        if not is_device_token(device):
            return
        key = (user_id, _digest("device", str(device)))
        with self._db() as db:
            db.execute(
                "UPDATE login_trust SET failures = failures + 1"
                " WHERE user_id = ? AND kind = 'device' AND digest = ?",
                key,
            )
            db.execute(
                "DELETE FROM login_trust WHERE user_id = ? AND kind = 'device' AND digest = ?"
                " AND failures >= ?",
                (*key, self.limits.device_failures),
            )

    def forget_user(self, user_id: str) -> int:
        """Drop every trusted device and address of an account (when it is removed)."""
        with self._db() as db:
            return db.execute("DELETE FROM login_trust WHERE user_id = ?", (user_id,)).rowcount

    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return connect(self.path, SESSION_STORE, pragmas=("journal_mode = WAL",))


def _digest(kind: str, value: str) -> str:
    return hashlib.sha256(f"kapp/v1 login-trust\0{kind}\0{value}".encode()).hexdigest()


def _address_digest(user_id: str, client: str) -> str:
    return _digest("address", f"{user_id}\0{client_key(client)}")
