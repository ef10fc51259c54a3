"""The appliance's small SQLite stores (users, sessions, login trust, conversations) open their
file the same way: a short connection per call (safe across threads), autocommit unless a
transaction is asked for (``BEGIN IMMEDIATE``, committed on success, rolled back otherwise), and
every SQLite failure turned into one :class:`ApplianceError` that names the store and what to do.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ApplianceError


@dataclass(frozen=True)
class Store:
    """What an error says of one store: its name, its code and the operator's next step."""

    what: str  # e.g. "user database"
    code: str  # e.g. "USER_STORE"
    hint: str

    def broken(self, path: Path, exc: Exception | str) -> ApplianceError:
        return ApplianceError(
            f"The {self.what} at {path} cannot be used ({exc}).", code=self.code, hint=self.hint
        )


@contextlib.contextmanager
def connect(
    path: Path, store: Store, *, pragmas: Iterable[str] = (), transaction: bool = False
) -> Iterator[sqlite3.Connection]:
    """One connection to ``path`` with ``pragmas`` applied (``"journal_mode = WAL"``...)."""
    try:
        db = sqlite3.connect(path, timeout=10, isolation_level=None)
    except sqlite3.Error as exc:
        raise store.broken(path, exc) from exc
    try:
        for pragma in pragmas:
            db.execute(f"PRAGMA {pragma}")
        if transaction:
            db.execute("BEGIN IMMEDIATE")
        yield db
        if transaction:
            db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise store.broken(path, exc) from exc
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.close()
