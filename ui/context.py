"""What every page shares: the services, and the user resolved from the session on each event.

Pages never trust a value the browser sends to say who is asking: every handler calls
:meth:`UiContext.user` (or :meth:`UiContext.admin`) with the Gradio request, which looks the
HttpOnly session cookie up in :class:`appliance.sessions.SessionStore` and checks that the page's
``session_hash`` (the key of its server-side state) belongs to that login
(:class:`ui.binding.HashBindings`): another login's page is refused and audited.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from appliance.access import Access
from appliance.conversations import ConversationStore
from appliance.errors import ApplianceError, AuthError, Forbidden, NotFound
from appliance.login_guard import LoginLimits
from appliance.sessions import COOKIE_NAME, SESSIONS_FILE, SessionStore
from appliance.uploads import Uploads
from appliance.users import User
from ingest.errors import IngestError
from secure.errors import SecureError

from .binding import HashBindings
from .cache import UiCache
from .errors import error_message, request_lang
from .i18n import pick_language
from .upload_owners import Owners

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
_SHOWN = (ApplianceError, SecureError, IngestError)


@dataclass
class UiContext:
    runtime: Any
    sessions: SessionStore
    conversations: ConversationStore
    access: Access
    uploads: Uploads
    bindings: HashBindings = field(default_factory=lambda: HashBindings(ttl_s=86400))
    cache: UiCache | None = None
    owners: Owners | None = None  # who uploaded each cached file (ui.upload_owners)

    @classmethod
    def build(cls, runtime: Any) -> UiContext:
        settings, app, knowledge = runtime.settings, runtime.app, runtime.knowledge
        sessions = SessionStore(
            settings.home / SESSIONS_FILE,
            app.users,
            app.secure,
            minutes=settings.serve.session_minutes,
            limits=LoginLimits.from_settings(settings.users),
            idle_minutes=settings.serve.session_idle_minutes,
        )
        return cls(
            runtime=runtime,
            sessions=sessions,
            conversations=app.conversations,
            access=Access(knowledge, clock=runtime.clock),
            uploads=runtime.uploads,
            bindings=HashBindings(ttl_s=sessions.lifetime_s),
        )

    def now(self) -> int:
        return int(self.runtime.clock())

    @property
    def upload_cache(self) -> Path:
        """The folder Gradio's upload route writes into (the only source of uploaded files)."""
        if self.cache is None:
            raise RuntimeError("the UI cache is not open")
        return self.cache.path

    def foreign_upload(self, path: Path, user: Any) -> bool:
        """Whether another login uploaded this cached file."""
        return self.owners is not None and self.owners.foreign(path, user.name)

    def session_name(self, cookies: Any, *, touch: bool = False) -> str | None:
        """The user name of a live session (Gradio's auth hook), or None. Not activity by
        default: Gradio asks on every request, polls and heartbeats included."""
        try:
            return self.sessions.resolve(_cookie(cookies), now=self.now(), touch=touch).user.name
        except ApplianceError:
            return None

    def user(self, request: gr.Request | None, *, touch: bool = True) -> User:
        """The current account behind this event's session cookie, if the page's
        ``session_hash`` is this login's own; AuthError or Forbidden otherwise.
        ``touch=False`` for background polls (they do not keep an idle session alive)."""
        cookies = getattr(request, "cookies", None) if request is not None else None
        cookie = _cookie(cookies)
        user = self.sessions.resolve(cookie, now=self.now(), touch=touch).user
        page = getattr(request, "session_hash", None) if request is not None else None
        if page is not None:
            self._own_page(page, cookie, user.name, client=_client(request))
        return user

    def page_owner(self, session_hash: str, cookies: Any, *, client: str = "") -> User:
        """:meth:`user` for a request that names a page by its hash alone (Gradio's queue
        and heartbeat routes, checked before Gradio sees them)."""
        cookie = _cookie(cookies)
        try:
            user = self.sessions.resolve(cookie, now=self.now(), touch=False).user
        except AuthError:
            if self.bindings.bound(session_hash):
                self._refused(session_hash, cookie, "anonymous", client)
            raise
        self._own_page(session_hash, cookie, user.name, client=client)
        return user

    def _own_page(self, session_hash: str, cookie: str | None, name: str, *, client: str) -> None:
        if self.bindings.claim(session_hash, cookie, now=self.now()):
            return
        self._refused(session_hash, cookie, f"user:{name}", client)
        raise Forbidden(
            "This page belongs to another sign-in.",
            code="SESSION_HASH_MISMATCH",
            hint="Reload the page.",
        )

    def _refused(self, session_hash: str, cookie: str | None, actor: str, client: str) -> None:
        if not self.bindings.first_refusal(session_hash, cookie):
            return  # a page polling every second is audited once, not once a second
        self.runtime.app.secure.record(
            "access.denied",
            actor=actor,
            now=self.now(),
            object="ui-page",
            outcome="refused",
            reason="SESSION_HASH_MISMATCH",
            details={"client": client[:64]} if client else {},
        )

    def admin(self, request: gr.Request | None) -> User:
        user = self.user(request)
        if not user.is_admin:
            self.runtime.app.secure.record(
                "access.denied",
                actor=f"user:{user.name}",
                now=self.now(),
                object="admin",
                outcome="refused",
                reason="NOT_ADMIN",
            )
            refusal = Forbidden("Administrators only.")
            refusal.audited = True
            raise refusal
        return user

    def refuse_file(
        self, cookies: Any, raw: str, *, route: str, reason: str = "UPLOAD_PATH"
    ) -> None:
        """Audit a refused event body: a client-named file path (``access.denied``, reason
        UPLOAD_PATH) or one too large (BODY_TOO_LARGE)."""
        name = self.session_name(cookies)
        audit = self.runtime.app.secure
        audit.record(
            "access.denied",
            actor=f"user:{name}" if name else "anonymous",
            now=self.now(),
            object=audit.audit.protect(str(raw)[:512]),
            outcome="refused",
            reason=reason,
            details={"route": route[:128]},
        )

    def guarded(self, fn: F) -> F:
        """Show appliance errors as a Gradio error message (no traceback to the browser; see
        `ui.errors` for what is shown), and audit every refusal (:meth:`refused`)."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except _SHOWN as exc:
                self.refused(fn.__name__, _request_of(args, kwargs), exc)
                raise gr.Error(error_message(exc, request_lang(args, kwargs))) from None

        return wrapper  # type: ignore[return-value]

    def guarded_stream(self, fn: F) -> F:
        """:meth:`guarded` for generator handlers (streamed answers)."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except _SHOWN as exc:
                self.refused(fn.__name__, _request_of(args, kwargs), exc)
                raise gr.Error(error_message(exc, request_lang(args, kwargs))) from None

        return wrapper  # type: ignore[return-value]

    def refused(self, handler: str, request: gr.Request | None, exc: Exception) -> None:
        """Audit one refused UI event (unless the code that refused it did): access refusals as
        ``access.denied``, anything else (bad input, a failed operation) as ``ui.refused``."""
        if getattr(exc, "audited", False):
            return
        cookies = getattr(request, "cookies", None) if request is not None else None
        name = self.session_name(cookies)
        access = isinstance(exc, AuthError | Forbidden | NotFound)
        self.runtime.app.secure.record(
            "access.denied" if access else "ui.refused",
            actor=f"user:{name}" if name else "anonymous",
            now=self.now(),
            object=f"ui:{handler}",
            outcome="refused",
            reason=str(getattr(exc, "code", type(exc).__name__))[:64],
        )

    def lang(self, request: gr.Request | None) -> str:
        if request is None:
            return "en"
        headers = dict(getattr(request, "headers", {}) or {})
        cookies = dict(getattr(request, "cookies", {}) or {})
        return pick_language(headers.get("accept-language"), cookies.get("lang"))

    def close(self) -> None:
        self.uploads.close()
        if self.cache is not None:
            self.cache.close()


def _cookie(cookies: Any) -> str | None:
    if not cookies:
        return None
    value = dict(cookies).get(COOKIE_NAME)
    return value if isinstance(value, str) else None


def _request_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    for value in (*args, *kwargs.values()):
        if isinstance(value, gr.Request):
            return value
    return None


def _client(request: Any) -> str:
    client = getattr(request, "client", None)
    return str(getattr(client, "host", "") or "")
