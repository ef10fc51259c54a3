"""What the browser is told when an event fails.

Gradio shows an error's message as HTML (sanitised, but links and images survive), so the text
is escaped here. Only errors written for the person who asked (:func:`appliance.errors
.is_user_facing`: wrong input, not allowed, not found...) are shown in their own words; any other
error may name server paths (a database, a key store) or quote stored data, so the browser gets
its code and a generic, translated line, and the server log gets the diagnostics.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from appliance.errors import KnowledgeUnavailable, is_user_facing
from ingest.errors import StoreUnavailable

from .i18n import pick_language, t

log = logging.getLogger(__name__)


def error_message(exc: BaseException, lang: str) -> str:
    """The escaped HTML message of ``exc`` for the browser."""
    return html.escape(shown_text(exc, lang))


def shown_text(exc: BaseException, lang: str) -> str:
    """The plain text the browser may see of ``exc`` (the server log gets an internal error's
    diagnostics)."""
    if isinstance(exc, StoreUnavailable):  # the index is down: say so, the cause to the log
        log.error("web request failed [%s]: %s", exc.code, _diagnostics(exc))
        exc = KnowledgeUnavailable.from_store(exc)
    if isinstance(exc, KnowledgeUnavailable):
        return t(lang, "error.knowledge_unavailable")
    if is_user_facing(exc):
        return _diagnostics(exc)
    code = str(getattr(exc, "code", "") or type(exc).__name__)
    log.error("web request failed [%s]: %s", code, _diagnostics(exc))
    return t(lang, "error.internal", code=code)


def request_lang(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """The interface language of the event whose handler got these arguments ('en' when none
    of them is a request)."""
    for value in (*args, *kwargs.values()):
        headers = getattr(value, "headers", None)
        if headers is not None and hasattr(value, "cookies"):
            cookies = dict(getattr(value, "cookies", {}) or {})
            return pick_language(dict(headers).get("accept-language"), cookies.get("lang"))
    return "en"


def _diagnostics(exc: BaseException) -> str:
    diagnostics = getattr(exc, "diagnostics", None)
    return str(diagnostics()) if callable(diagnostics) else str(exc)


__all__ = ["error_message", "request_lang", "shown_text"]
