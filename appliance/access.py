"""Document-level authorisation of source views and downloads, from the session's user.

The browser only ever names ids; this module decides, from the *server-side* user, whether the
id belongs to a current document of one of the user's groups (plus ``public``). A refusal is one
:class:`Forbidden` whatever the cause (unknown id, another group, a replaced version, downloads
turned off), so ids of other groups cannot be probed, and every refusal is audited as
``access.denied`` with the precise reason. Successful downloads are audited too.

In mirror mode the original is read from the drop folder, which others can write to: it is
opened without following a link at any level (`ingest.safefs`), below the document's own group
folder, and served only if it is still the indexed content (size and keyed hash as registered).
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from ingest.drop import group_of
from ingest.errors import LinkRefused, Rejected
from ingest.registry import Document
from ingest.safefs import open_below
from ingest.schema import open_passage
from secure.keys import LABEL_CONTENT_HMAC

from .errors import Forbidden
from .rag.passage_fields import PassageFields, opened_fields
from .users import User

if TYPE_CHECKING:
    from .knowledge import Knowledge

_CHUNK_ID = re.compile(r"([A-Za-z0-9._-]{1,256}):([0-9]{1,18}):([0-9]{1,18})")
_DOC_ID = re.compile(r"[A-Za-z0-9._-]{1,256}")


@dataclass(frozen=True)
class SourceView(PassageFields):
    """One passage a user may see, as the sources panel shows it."""

    downloadable: bool


@dataclass(frozen=True)
class Original:
    name: str
    data: bytes
    media_type: str


class Access:
    """Authorises reads of passages and originals for one serving process."""

    def __init__(self, knowledge: Knowledge, *, clock: Callable[[], float] = time.time) -> None:
        self.knowledge, self.clock = knowledge, clock
        self.settings, self.home = knowledge.settings, knowledge.home

    def groups(self, user: User) -> list[str]:
        from .knowledge import effective_groups

        return effective_groups(user.groups)

    def document_for(self, user: User, doc_id: str, *, action: str = "document.view") -> Document:
        """The current, indexed document ``doc_id`` if ``user`` may see it; else Forbidden."""
        if not isinstance(doc_id, str) or not _DOC_ID.fullmatch(doc_id):
            raise self._deny(user, action, "(invalid id)", "BAD_ID")
        doc = self.knowledge.registry.get(doc_id)
        return self._check(user, doc, doc_id, action)

    def source_for(self, user: User, chunk_id: str) -> SourceView:
        """The passage ``chunk_id`` of a current document of the user's groups; else Forbidden."""
        action = "source.view"
        match = _CHUNK_ID.fullmatch(chunk_id) if isinstance(chunk_id, str) else None
        if match is None:
            raise self._deny(user, action, "(invalid id)", "BAD_ID")
        doc = self._check(user, self.knowledge.registry.get(match[1]), chunk_id, action)
        if int(match[2]) != doc.version:
            raise self._deny(user, action, chunk_id, "NOT_CURRENT")
        hit = self.knowledge.store.get(chunk_id)
        if hit is None or hit.doc_id != doc.doc_id or doc.group not in hit.groups:
            raise self._deny(user, action, chunk_id, "NO_CHUNK")
        body = open_passage(self.knowledge.cipher, hit.id, hit.payload)
        return SourceView(
            **opened_fields(hit.id, doc, body), downloadable=self.downloads_allowed(user)
        )

    def downloads_allowed(self, user: User) -> bool:
        return self.settings.serve.downloads and not user.disabled

    def original_for(self, user: User, doc_id: str) -> Original:
        """The original file of a document the user may see (downloads on); else Forbidden."""
        action = "document.download"
        doc = self.document_for(user, doc_id, action=action)
        if not self.settings.serve.downloads:
            raise self._deny(user, action, doc_id, "DOWNLOADS_OFF")
        data = self._original_bytes(user, doc)
        name = PurePosixPath(doc.rel_path).name
        self.home.record(
            action,
            actor=f"user:{user.name}",
            now=int(self.clock()),
            object=doc.doc_id,
            details={"group": doc.group, "bytes": len(data)},
        )
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Original(name, data, media)

    def _original_bytes(self, user: User, doc: Document) -> bytes:
        if doc.source == "mirror":
            return self._mirror_bytes(user, doc)
        if not doc.vault_id:
            raise self._deny(user, "document.download", doc.doc_id, "NO_ORIGINAL")
        return self.knowledge.vault.open_bytes(doc.vault_id)

    def _mirror_bytes(self, user: User, doc: Document) -> bytes:
        """The live file, if it is still the indexed one inside the document's group folder."""
        if group_of(doc.rel_path) != doc.group:
            raise self._deny(user, "document.download", doc.doc_id, "OUTSIDE_GROUP")
        try:
            with open_below(self.settings.drop_dir, doc.rel_path) as opened:
                data = opened.read_all()
        except LinkRefused:
            raise self._deny(user, "document.download", doc.doc_id, "SYMLINK") from None
        except (OSError, ValueError, Rejected):
            raise self._deny(user, "document.download", doc.doc_id, "NO_ORIGINAL") from None
        key = self.home.derive(LABEL_CONTENT_HMAC)
        digest = hmac.new(key, data, hashlib.sha256).hexdigest()
        if len(data) != doc.size or not hmac.compare_digest(digest, doc.content_hmac or ""):
            raise self._deny(user, "document.download", doc.doc_id, "CHANGED")
        return data

    def _check(self, user: User, doc: Document | None, shown: str, action: str) -> Document:
        if doc is None:
            raise self._deny(user, action, shown, "UNKNOWN")
        if user.disabled:
            raise self._deny(user, action, shown, "USER_DISABLED")
        if doc.group not in self.groups(user):
            raise self._deny(user, action, shown, "GROUP")
        if doc.status != "indexed":
            raise self._deny(user, action, shown, "NOT_CURRENT")
        return doc

    def _deny(self, user: User, action: str, obj: str, reason: str) -> Forbidden:
        self.home.record(
            "access.denied",
            actor=f"user:{user.name}",
            now=int(self.clock()),
            object=obj[:300],
            outcome="refused",
            reason=reason,
            details={"request": action},
        )
        refusal = Forbidden(
            "That source does not exist or you may not see it.",
            hint="Ask an administrator if you need access to this document's group.",
        )
        refusal.audited = True
        return refusal
