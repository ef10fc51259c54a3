"""Which login owns a Gradio ``session_hash``.

Gradio keeps each page's state (the chat turns with their passages, the open conversation)
under the ``session_hash`` the browser picked; it appears in URLs and access logs. The first
event of a hash binds it to the login session that sent it; from then on only that login may
use it. A login is remembered only as a keyed digest of its session id (the key is random per
process), never the id. The map is bounded (at most ``per_login`` hashes per login, the oldest
forgotten first, so one login can only push out its own pages) and entries expire ``ttl_s``
after their last use, by when the login itself has ended.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict

MAX_HASH_LEN = 128
REPORTED_KEPT = 4096
PURGE_EVERY_S = 60.0


class HashBindings:
    def __init__(self, *, ttl_s: float, per_login: int = 256) -> None:
        self.ttl_s, self.per_login = ttl_s, per_login
        self._key = secrets.token_bytes(32)
        self._owner: dict[str, tuple[str, float]] = {}
        self._pages: dict[str, OrderedDict[str, None]] = {}
        self._reported: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._purged_at = 0.0
        self._lock = threading.Lock()

    def login_key(self, session_id: str | None) -> str:
        """The digest a login is known by here ("" for no login)."""
        if not session_id:
            return ""
        return hmac.new(self._key, session_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def claim(self, session_hash: str, session_id: str | None, *, now: float) -> bool:
        """True if ``session_hash`` belongs to this login (binding it when it is new)."""
        if not isinstance(session_hash, str) or not 0 < len(session_hash) <= MAX_HASH_LEN:
            return False
        login = self.login_key(session_id)
        with self._lock:
            self._purge(now)
            owner = self._owner.get(session_hash)
            if owner is not None and owner[0] != login:
                return False
            if not login:
                return False  # no login binds nothing
            self._owner[session_hash] = (login, now)
            pages = self._pages.setdefault(login, OrderedDict())
            pages[session_hash] = None
            pages.move_to_end(session_hash)
            while len(pages) > self.per_login:
                oldest, _ = pages.popitem(last=False)
                self._owner.pop(oldest, None)
            return True

    def bound(self, session_hash: str) -> bool:
        with self._lock:
            return session_hash in self._owner

    def first_refusal(self, session_hash: str, session_id: str | None) -> bool:
        """True the first time this (hash, login) pair is refused: audit once, not per poll."""
        pair = (session_hash[:MAX_HASH_LEN], self.login_key(session_id))
        with self._lock:
            if pair in self._reported:
                return False
            self._reported[pair] = None
            while len(self._reported) > REPORTED_KEPT:
                self._reported.popitem(last=False)
            return True

    def _purge(self, now: float) -> None:
        if now - self._purged_at < PURGE_EVERY_S:
            return
        self._purged_at = now
        for session_hash, (login, used) in list(self._owner.items()):
            if now - used > self.ttl_s:
                del self._owner[session_hash]
                pages = self._pages.get(login)
                if pages is not None:
                    pages.pop(session_hash, None)
                    if not pages:
                        del self._pages[login]
