"""Uploads from the web UI into the drop folder, with their ingestion state.

A staff user may upload into their own groups only (admins into any valid group). The file name
is reduced to a safe base name (no path, no hidden or lock files, no control characters) and the
size is checked against ``ingest.max_file_mb`` before anything is written. The bytes go to a
hidden temp name in ``drop/<group>/`` (never picked up by a scan) and are renamed into place, so
ingestion only ever sees complete files. The group folder is opened without following a link
(`ingest.safefs`) and every write is made relative to it: a group folder replaced by a link
(into another group's folder, or the home) refuses the upload, audited.

Ingestion runs in this process: one background thread runs ``Knowledge.pipeline().run_once()``
whenever an upload arrives (a lock keeps passes one at a time). Do not point a separate
``appliance ingest --watch`` at the same home while the server runs; its passes would compete
for the same files. Each upload moves ``queued → parsing → indexed | failed`` (with the reason
code from the pipeline and its generic message, as in ``drop/_failed/<file>.reason.txt``; never
an exception's own text, which can quote the document or name a server path: see
`ingest.reasons`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ingest.drop import is_ignored, valid_group
from ingest.errors import LinkRefused, StoreUnavailable
from ingest.reasons import INTERNAL, reason_message
from ingest.safefs import open_dir

from .errors import Forbidden, InvalidInput, NotFound
from .users import User

if TYPE_CHECKING:
    from .knowledge import Knowledge

MAX_NAME_BYTES = 180
_FINAL = ("indexed", "failed")

_log = logging.getLogger(__name__)


def safe_filename(name: str) -> str:
    """The base name to store an uploaded file under; InvalidInput if none is safe."""
    base = unicodedata.normalize("NFC", str(name)).replace("\\", "/").rsplit("/", 1)[-1].strip()
    problem = ""
    if base in ("", ".", ".."):
        problem = "has no name"
    elif any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in base):
        problem = "contains control characters"
    elif is_ignored(base):
        problem = "is a hidden, lock or partial-download file"
    elif len(base.encode("utf-8")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise InvalidInput(
            f"The file name {name!r} {problem}.", hint="Rename the file and upload it again."
        )
    return base


@dataclass(frozen=True)
class Upload:
    id: str
    user: str
    group: str
    name: str
    rel_path: str
    saved_at: float
    state: str = "queued"  # queued | parsing | indexed | failed
    code: str = ""  # why it failed: a code of `ingest.reasons`
    reason: str = ""  # the code's generic message
    doc_id: str | None = None


class Uploads:
    """Saves uploads and runs their ingestion in one background thread."""

    def __init__(
        self,
        knowledge: Knowledge,
        *,
        events: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if events is None:
            from .knowledge import AuditEvents

            events = AuditEvents(knowledge.home, actor="ui:upload")
        self.knowledge, self.events, self.clock = knowledge, events, clock
        self.settings = knowledge.settings
        self._items: dict[str, Upload] = {}
        self._mutex = threading.Lock()  # guards _items
        self.lock = threading.RLock()  # one pipeline use at a time (passes, deletes, reindex)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch_s: float | None = None

    def watch_drop(self, interval_s: float) -> None:
        """Also ingest whatever appears in the drop folder (a file share, `cp`), every
        ``interval_s`` seconds: inside `serve` this replaces a separate `ingest --watch`,
        which could not share a Milvus Lite file with the server."""
        self._watch_s = interval_s
        self._kick()

    @property
    def watching(self) -> bool:
        return self._watch_s is not None

    def groups_for(self, user: User) -> list[str]:
        """Groups ``user`` may offer to upload into: a staff user's own groups; for admins
        also every group that already has a folder in the drop folder (:meth:`save` takes
        any valid group from an admin)."""
        groups = set(user.groups)
        drop = self.settings.drop_dir
        if user.is_admin and drop.is_dir():
            groups.update(
                p.name
                for p in drop.iterdir()
                if p.is_dir() and not p.is_symlink() and valid_group(p.name)
            )
        return sorted(groups)

    def save(self, user: User, *, filename: str, source: Path | IO[bytes], group: str) -> Upload:
        """Store one file in ``drop/<group>/`` and queue its ingestion."""
        group = group.strip().lower()
        if not valid_group(group) or (not user.is_admin and group not in user.groups):
            raise Forbidden(
                f"You may not upload into the group {group!r}.",
                hint="Pick one of your own groups.",
            )
        name = safe_filename(filename)
        limit = self.settings.ingest.max_file_mb * 2**20
        folder = self._group_folder(user, group)
        tmp = f".upload-{secrets.token_hex(8)}"
        try:
            # A complete file, dated past the settle time so the next pass takes it now.
            settled = self.clock() - self.settings.ingest.settle_s - 1
            size = _copy_limited(source, folder, tmp, limit, mtime=settled)
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=folder)
            os.close(folder)
        now = self.clock()
        item = Upload(secrets.token_hex(8), user.name, group, name, f"{group}/{name}", now)
        with self._mutex:
            self._items[item.id] = item
        self.knowledge.home.record(
            "document.upload",
            actor=f"user:{user.name}",
            now=int(now),
            object=item.id,
            # the same protected name as the service's document.index / .quarantine entry that
            # follows, so an auditor can tie the indexed document to the user who uploaded it
            details={
                "group": group,
                "bytes": size,
                "name": self.knowledge.home.audit.protect(item.rel_path),
            },
        )
        self._kick()
        return item

    def _group_folder(self, user: User, group: str) -> int:
        """A descriptor of ``drop/<group>`` (created 0700 if missing); Forbidden, audited, when
        it is a link."""
        drop = self.settings.drop_dir
        drop.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return open_dir(drop, [group], create=True, mode=0o700)
        except LinkRefused:
            self.knowledge.home.record(
                "access.denied",
                actor=f"user:{user.name}",
                now=int(self.clock()),
                object=group,
                outcome="refused",
                reason="SYMLINK",
                details={"request": "document.upload"},
            )
            raise Forbidden(
                f"The folder of the group {group!r} cannot take uploads.",
                hint="Ask an administrator: drop/<group> must be a folder, not a link.",
            ) from None

    def status(self, user: User, upload_id: str | None = None) -> list[Upload]:
        """The user's own uploads (newest first), or one of them; NotFound for others'."""
        with self._mutex:
            mine = [u for u in self._items.values() if u.user == user.name]
        if upload_id is None:
            return sorted(mine, key=lambda u: u.saved_at, reverse=True)
        found = [u for u in mine if u.id == upload_id]
        if not found:
            raise NotFound("No such upload.", hint="Upload the file again.")
        return found

    def wait(self, user: User, upload_id: str, *, timeout: float = 120.0) -> Upload:
        """Block until the upload is indexed or failed (for scripts and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.status(user, upload_id)[0]
            if item.state in _FINAL or time.monotonic() > deadline:
                return item
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ----- the background pass ----------------------------------------------------------------
    def _kick(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="ui-uploads", daemon=True)
            self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self._watch_s or 5)
            if self._stop.is_set():
                return
            self._wake.clear()
            if self._waiting() or self._watch_s is not None:
                try:
                    self.run_pass()
                except Exception:  # noqa: BLE001 - reported on the uploads; keep watching
                    if self._stop.is_set():
                        return  # shut down in a Milvus outage: the files stay queued
                    _log.exception("ingestion pass failed")

    def _retry_sleep(self, seconds: float) -> None:
        """The pipeline's pause between Milvus retries, cut short by :meth:`close`."""
        if self._stop.wait(seconds):
            raise StoreUnavailable(
                "The appliance is shutting down while Milvus is unavailable; the files stay in "
                "the drop folder and are ingested after the restart."
            )

    def _waiting(self) -> bool:
        with self._mutex:
            return any(u.state == "queued" for u in self._items.values())

    def run_pass(self) -> None:
        """One pipeline pass over the drop folder, updating the uploads it touches."""
        with self.lock:
            with self._mutex:
                taken = {u.rel_path: u.id for u in self._items.values() if u.state == "queued"}
                for upload_id in taken.values():
                    self._items[upload_id] = replace(self._items[upload_id], state="parsing")
            try:
                pipeline = self.knowledge.pipeline(
                    events=self.events, retry_sleep=self._retry_sleep
                )
                report = pipeline.run_once(progress=self._progress)
            except StoreUnavailable:  # the files wait in the drop folder: queued again
                self._requeue(taken)
                raise
            except Exception:  # the whole pass failed: say so on every upload in it
                # (generically: the exception can name server paths; _loop logs it)
                self._finish_rest(taken, INTERNAL)
                raise
            seen = {f.rel_path for f in report.files}
            self._finish_rest({p: i for p, i in taken.items() if p not in seen}, "not-picked-up")

    def _requeue(self, taken: dict[str, str]) -> None:
        code = "index-unavailable"
        with self._mutex:
            for upload_id in taken.values():
                item = self._items[upload_id]
                if item.state == "parsing":
                    self._items[upload_id] = replace(
                        item, state="queued", code=code, reason=reason_message(code)
                    )

    def _progress(self, result: Any) -> None:
        state = "failed" if result.outcome == "failed" else "indexed"
        if result.outcome not in ("indexed", "unchanged", "failed"):
            return
        code = result.code if result.outcome == "failed" else ""
        reason = reason_message(code) if code else ""
        with self._mutex:
            for key, item in self._items.items():
                if item.rel_path == result.rel_path and item.state == "parsing":
                    self._items[key] = replace(
                        item, state=state, code=code, reason=reason, doc_id=result.doc_id
                    )

    def _finish_rest(self, taken: dict[str, str], code: str) -> None:
        with self._mutex:
            for upload_id in taken.values():
                item = self._items[upload_id]
                if item.state == "parsing":
                    self._items[upload_id] = replace(
                        item, state="failed", code=code, reason=reason_message(code)
                    )


def _copy_limited(
    source: Path | IO[bytes], folder: int, name: str, limit: int, *, mtime: float
) -> int:
    """Copy into a new file ``name`` of the opened ``folder``; returns the bytes written."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=folder)
    with os.fdopen(fd, "wb") as out:
        if isinstance(source, Path):
            if source.stat().st_size > limit:
                raise _too_big(limit)
            with source.open("rb") as src:
                written = _pump(src, out, limit)
        else:
            written = _pump(source, out, limit)
        out.flush()
        os.utime(out.fileno(), (mtime, mtime))
        os.fsync(out.fileno())
    return written


def _pump(src: IO[bytes], out: IO[bytes], limit: int) -> int:
    written = 0
    while block := src.read(1 << 20):
        written += len(block)
        if written > limit:
            raise _too_big(limit)
        out.write(block)
    if written == 0:
        raise InvalidInput("The file is empty.", hint="Upload a file with content.")
    return written


def _too_big(limit: int) -> InvalidInput:
    return InvalidInput(
        f"The file is larger than the limit of {limit // 2**20} MB.",
        hint="Split the document or ask an administrator to raise ingest.max_file_mb.",
    )


__all__ = ["Upload", "Uploads", "safe_filename"]
