"""Nothing of the web UI answers without a live session, whatever route the framework adds.

Gradio serves more routes than the page needs, and checks the login (``auth_dependency``) only
on some of them: ``/gradio_api/user``, ``/token``, ``/app_id``, ``/heartbeat/{session_hash}``,
``/startup-events``, ``/cancel``, ``/reset``, ``/stream/…`` and its own ``/logout`` answered
anyone (found by the attack suite, ``tests/attack``). :class:`SessionGate` sits in front of the
whole app and lets a request through only if it goes to one of our own routes (which check the
session or API key themselves), to a public asset of the page, or carries a live session cookie;
everything else is answered 401 before Gradio sees it. A new Gradio route is therefore closed by
default.

A refused request that *presented* a session cookie (forged, expired, logged out) is audited as
``access.denied`` (reason ``SESSION_INVALID``); at most one entry per client address and minute,
carrying how many refusals it stands for, so a flood cannot fill the audit log. A request with no
credential at all is the normal state of a browser before login and is not audited.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from appliance.sessions import COOKIE_NAME

# Routes of ours that authenticate (or are public) themselves; the UI page ("/") has its own
# redirect to /login (ui.routes.LoginRedirect).
OWN = re.compile(r"^/(login|healthz|readyz|metrics)$|^/(ui|v1)/")
PAGES = ("/", "/index.html")
# Static parts of the page: the same bytes for everyone, no data.
PUBLIC = re.compile(
    r"^/(assets/|static/|svelte/|favicon\.ico$|robots\.txt$|manifest\.json$|pwa_icon"
    r"|theme\.css$|gradio_api/theme\.css$)"
)
COALESCE_S = 60.0
MAX_CLIENTS = 10_000

Record = Callable[[str, str, int], None]  # (client address, route, refusals) -> audit entry


class RefusalLog:
    """Audits refused credentials, at most one entry per client address per minute."""

    def __init__(self, record: Record, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.record, self.clock = record, clock
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def refused(self, client: str, route: str) -> None:
        now = self.clock()
        with self._lock:
            last, pending = self._seen.get(client, (float("-inf"), 0))
            if now - last < COALESCE_S:
                self._seen[client] = (last, pending + 1)
                return
            if len(self._seen) >= MAX_CLIENTS:
                self._seen.clear()
            self._seen[client] = (now, 0)
        self.record(client, route, pending + 1)


class SessionGate:
    """ASGI middleware: the Gradio app's routes need a live session (401 otherwise)."""

    def __init__(self, app: Any, *, live: Callable[[Any], bool], refusals: RefusalLog) -> None:
        self.app, self.live, self.refusals = app, live, refusals

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or _open(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.live(request.cookies):
            await self.app(scope, receive, send)
            return
        if COOKIE_NAME in request.cookies:
            client = request.client.host if request.client else ""
            self.refusals.refused(client, scope["path"])
        await _unauthorised(scope, send)


def _open(scope: Any) -> bool:
    path = scope["path"]
    if path == "/logout":  # ours is POST; Gradio's own GET /logout is not for anyone
        return scope.get("method") == "POST"
    return path in PAGES or bool(OWN.match(path) or PUBLIC.match(path))


async def _unauthorised(scope: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    message = "Your session has ended, or you are not logged in. Log in."
    body = json.dumps({"detail": message}).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
