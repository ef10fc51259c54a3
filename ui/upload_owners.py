"""Each file in the web UI's upload cache belongs to the login that uploaded it, within a quota.

Gradio keeps one upload cache for every login (a private folder in memory, :mod:`ui.cache`):
on its own, any logged-in user who learns a cached path could read another user's unsubmitted
upload through ``/gradio_api/file=`` or submit it into their own group, and any user could fill
the memory file system with uploads that are never submitted (both found by an outside-style
review). :class:`UploadGate`, an ASGI middleware in front of Gradio:

* on ``POST /gradio_api/upload`` refuses (413, audited ``UPLOAD_QUOTA``) an upload that would
  take the user's unsubmitted files past ``serve.ui_upload_quota_mb``, or leave less than
  :data:`RESERVE_SHARE` of the cache's file system free (``UPLOAD_SPACE``), and records the
  user as the owner of every path Gradio answers with;
* on ``GET /gradio_api/file=<path>`` answers 404 for a cached file that is not the user's.

:class:`~ui.file_guard.FileGuard` and the upload handler refuse another login's cached file in
an event the same way (:meth:`Owners.owned_by`). Owners live in memory: the cache is emptied
when the server starts, so nothing in it predates them.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .file_guard import cached_file, json_reply

__all__ = ["RESERVE_SHARE", "Owners", "UploadGate"]

FILE_ROUTE = "/gradio_api/file="
UPLOAD_ROUTE = "/gradio_api/upload"
#: Share of the cache's file system an upload must leave free (/dev/shm is RAM).
RESERVE_SHARE = 0.25

UserOf = Callable[[dict[str, Any]], str | None]  # ASGI scope -> the session's user name
Audit = Callable[[dict[str, Any], str, str], None]  # (scope, object, reason)


class Owners:
    """Which login uploaded each cached file (thread-safe; vanished files are forgotten)."""

    def __init__(self, cache: Path) -> None:
        self.cache = Path(cache)
        self._owner: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, paths: list[str], user: str) -> None:
        with self._lock:
            for raw in paths:
                found = cached_file(raw, self.cache)
                if found is not None:
                    self._owner[str(found)] = user

    def owned_by(self, path: Path, user: str | None) -> bool:
        """Whether ``path`` (a resolved file inside the cache) was uploaded by ``user``."""
        with self._lock:
            return user is not None and self._owner.get(str(path)) == user

    def foreign(self, path: Path, user: str | None) -> bool:
        """Whether ``path`` was uploaded by a login other than ``user``."""
        with self._lock:
            owner = self._owner.get(str(path))
        return owner is not None and owner != user

    def bytes_of(self, user: str) -> int:
        """The size of ``user``'s files still waiting in the cache."""
        total = 0
        with self._lock:
            for path, owner in list(self._owner.items()):
                try:
                    size = os.stat(path).st_size
                except OSError:
                    del self._owner[path]  # submitted, swept or gone
                    continue
                total += size if owner == user else 0
        return total


class UploadGate:
    """ASGI middleware: quota and ownership of the upload cache (see the module docstring)."""

    def __init__(
        self, app: Any, *, owners: Owners, user_of: UserOf, quota_bytes: int, audit: Audit
    ) -> None:
        self.app, self.owners, self.user_of = app, owners, user_of
        self.quota_bytes, self.audit = quota_bytes, audit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = str(scope.get("path", "")) if scope.get("type") == "http" else ""
        if path.rstrip("/") == UPLOAD_ROUTE and scope.get("method") == "POST":
            await self._upload(scope, receive, send)
        elif path.startswith(FILE_ROUTE) and not self._readable(scope, path):
            await json_reply(send, 404, "Not Found")
        else:
            await self.app(scope, receive, send)

    def _readable(self, scope: Any, path: str) -> bool:
        found = cached_file(path.removeprefix(FILE_ROUTE), self.owners.cache)  # decoded once
        return found is None or self.owners.owned_by(found, self.user_of(scope))

    async def _upload(self, scope: Any, receive: Any, send: Any) -> None:
        user = self.user_of(scope)
        if user is None:  # no live session: SessionGate, outside, has refused it already
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(user, _length(scope))
        if refusal is not None:
            self.audit(scope, UPLOAD_ROUTE, refusal[0])
            await json_reply(send, 413, refusal[1])
            return
        reply = _Captured(send)
        await self.app(scope, receive, reply)
        if reply.status == 200:
            self.owners.record(_paths(reply.body), user)

    def _refusal(self, user: str, length: int) -> tuple[str, str] | None:
        if self.owners.bytes_of(user) + length > self.quota_bytes:
            mb = self.quota_bytes // 2**20
            return "UPLOAD_QUOTA", (
                f"Your files waiting to be submitted would exceed {mb} MB. Submit or remove "
                "them first."
            )
        fs = os.statvfs(self.owners.cache)
        if fs.f_bavail * fs.f_frsize - length < RESERVE_SHARE * fs.f_blocks * fs.f_frsize:
            return "UPLOAD_SPACE", "The upload area is full. Try again in a few minutes."
        return None


class _Captured:
    """An ASGI ``send`` that passes everything on and keeps the status and the body."""

    def __init__(self, send: Any) -> None:
        self.send, self.status, self.body = send, 0, b""

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body" and len(self.body) < 1 << 20:
            self.body += message.get("body", b"")
        await self.send(message)


def _length(scope: Any) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return 0
    return 0


def _paths(body: bytes) -> list[str]:
    try:
        data = json.loads(body)
    except ValueError:
        return []
    return [p for p in data if isinstance(p, str)] if isinstance(data, list) else []
