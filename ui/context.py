"""What every page shares: the services, and the user resolved from the session on each event.

Pages never trust a value the browser sends to say who is asking: every handler calls
:meth:`UiContext.user` (or :meth:`UiContext.admin`) with the Gradio request, which looks the
HttpOnly session cookie up in :class:`appliance.sessions.SessionStore`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from appliance.access import Access
from appliance.conversations import ConversationStore
from appliance.errors import ApplianceError, Forbidden
from appliance.sessions import COOKIE_NAME, SESSIONS_FILE, SessionStore
from appliance.uploads import Uploads
from appliance.users import User
from ingest.errors import IngestError
from secure.errors import SecureError

from .errors import error_message, request_lang
from .i18n import pick_language

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class UiContext:
    runtime: Any
    sessions: SessionStore
    conversations: ConversationStore
    access: Access
    uploads: Uploads

    @classmethod
    def build(cls, runtime: Any) -> UiContext:
        settings, app, knowledge = runtime.settings, runtime.app, runtime.knowledge
        sessions = SessionStore(
            settings.home / SESSIONS_FILE,
            app.users,
            app.secure,
            minutes=settings.serve.session_minutes,
        )
        return cls(
            runtime=runtime,
            sessions=sessions,
            conversations=ConversationStore.open(settings.home, app.secure),
            access=Access(knowledge, clock=runtime.clock),
            uploads=runtime.uploads,
        )

    def now(self) -> int:
        return int(self.runtime.clock())

    def session_name(self, cookies: Any) -> str | None:
        """The user name of a live session (Gradio's auth hook), or None."""
        try:
            return self.sessions.resolve(_cookie(cookies), now=self.now()).user.name
        except ApplianceError:
            return None

    def user(self, request: gr.Request | None) -> User:
        """The current account behind this event's session cookie; AuthError if none."""
        cookies = getattr(request, "cookies", None) if request is not None else None
        return self.sessions.resolve(_cookie(cookies), now=self.now()).user

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
            raise Forbidden("Administrators only.")
        return user

    def lang(self, request: gr.Request | None) -> str:
        if request is None:
            return "en"
        headers = dict(getattr(request, "headers", {}) or {})
        cookies = dict(getattr(request, "cookies", {}) or {})
        return pick_language(headers.get("accept-language"), cookies.get("lang"))

    def close(self) -> None:
        self.uploads.close()


def _cookie(cookies: Any) -> str | None:
    if not cookies:
        return None
    value = dict(cookies).get(COOKIE_NAME)
    return value if isinstance(value, str) else None


def guarded(fn: F) -> F:
    """Show appliance errors as a Gradio error message (no traceback to the browser; see
    `ui.errors` for what is shown)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ApplianceError, SecureError, IngestError) as exc:
            raise gr.Error(error_message(exc, request_lang(args, kwargs))) from None

    return wrapper  # type: ignore[return-value]


def guarded_stream(fn: F) -> F:
    """:func:`guarded` for generator handlers (streamed answers)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            yield from fn(*args, **kwargs)
        except (ApplianceError, SecureError, IngestError) as exc:
            raise gr.Error(error_message(exc, request_lang(args, kwargs))) from None

    return wrapper  # type: ignore[return-value]
