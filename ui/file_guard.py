"""Only files that this server's upload route put into its own upload cache may enter an event.

Gradio turns any ``FileData`` a client sends (``{"path": …}``) into a server-side file: it copies
a local path into its cache, or downloads a URL. It checks that the path came from an upload only
when ``Blocks.has_launched`` is set, which ``mount_gradio_app`` never does; so a logged-in user
could name the audit log, the settings file, key files or another group's files, and the upload
event copied them into the user's group (security review, issue 12, item 1).

:class:`FileGuard` closes that at the door, for every event of every component: an ASGI
middleware in front of the Gradio app reads each event body (capped) and refuses it, before
Gradio sees it, if any object in it names a ``path`` that is a URL or does not resolve (links
followed) to a regular file inside the upload cache that this login uploaded
(:mod:`ui.upload_owners`). Refusals are audited as ``access.denied``
(reason ``UPLOAD_PATH``) with the user of the session cookie, and answered 403 with a generic
message; a body over :data:`MAX_EVENT_BODY` is refused 413 and audited (``BODY_TOO_LARGE``).
:func:`checked_upload` repeats the check where the upload handler takes a path, so the
appliance never copies a file from outside the cache even if the framework changes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from appliance.asgi import read_body, replay
from appliance.errors import Forbidden, TooLarge

MAX_EVENT_BODY = 2**20  # an event carries a question and small values, never file bytes
UPLOAD_ROUTE = "/gradio_api/upload"
# Our own routes take no FileData; everything else POSTed goes to Gradio.
OWN_ROUTES = ("/login", "/logout", "/v1/", "/ui/")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
REASON = "UPLOAD_PATH"
MESSAGE = "Only files uploaded through this page can be submitted."

# (ASGI scope, offending path or "", reason) -> records the refusal
Audit = Callable[[dict[str, Any], str, str], None]
# (ASGI scope, a cached file) -> whether the request's login uploaded it (ui.upload_owners)
Owned = Callable[[dict[str, Any], Path], bool]


def cached_file(raw: object, cache: Path) -> Path | None:
    """``raw`` as a regular file inside ``cache`` (after resolving every link), or None."""
    if not isinstance(raw, str) or not raw or "\x00" in raw or _URL.match(raw):
        return None
    root = os.path.realpath(cache)
    resolved = os.path.realpath(os.path.abspath(raw))
    if os.path.commonpath([root, resolved]) != root or resolved == root:
        return None
    if not os.path.isfile(resolved):
        return None
    return Path(resolved)


def named_paths(data: Any) -> Iterator[object]:
    """Every ``path`` value of every object in a decoded JSON document."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "path" in item:
                yield item["path"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def checked_upload(
    raw: str,
    cache: Path,
    refuse: Callable[[str], None],
    foreign: Callable[[Path], bool] = lambda path: False,
) -> Path:
    """The cached file behind ``raw``; otherwise (or if ``foreign``: another login uploaded
    it) ``refuse(raw)`` (which audits) and Forbidden."""
    found = cached_file(raw, cache)
    if found is None or foreign(found):
        refuse(raw)
        raise Forbidden(MESSAGE, hint="Choose the file again in the upload box.")
    return found


class FileGuard:
    """ASGI middleware: refuse Gradio event bodies that name files outside the upload cache."""

    def __init__(self, app: Any, *, cache: Path, audit: Audit, owned: Owned | None = None) -> None:
        self.app, self.cache, self.audit, self.owned = app, Path(cache), audit, owned

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not _guarded(scope):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, MAX_EVENT_BODY)
        except TooLarge:
            self.audit(scope, "", TooLarge.code)
            await json_reply(send, 413, "The request is too large.")
            return
        if body is None:
            return  # the client went away
        bad = self._offending(body, scope)
        if bad is not None:
            self.audit(scope, bad, REASON)
            await json_reply(send, 403, MESSAGE)
            return
        await self.app(scope, replay(body, receive), send)

    def _offending(self, body: bytes, scope: Any) -> str | None:
        if not body.strip():
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None  # not JSON: Gradio refuses it; no FileData can hide in it
        for raw in named_paths(data):
            found = cached_file(raw, self.cache)
            if found is None or (self.owned is not None and not self.owned(scope, found)):
                return str(raw)[:512]
        return None


def _guarded(scope: Any) -> bool:
    if scope.get("type") != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
        return False
    path = str(scope.get("path", ""))
    return path.rstrip("/") != UPLOAD_ROUTE and not path.startswith(OWN_ROUTES)


async def json_reply(send: Any, status: int, message: str) -> None:
    """Answer an ASGI request with ``{"detail": message}`` (for the guards in front of Gradio)."""
    body = json.dumps({"detail": message}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
