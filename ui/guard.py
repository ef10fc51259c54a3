"""ASGI guards in front of the Gradio app: cross-site requests, foreign pages, unused routes.

:class:`OriginGuard` (CSRF defence that does not rely on SameSite): a state-changing request
(POST, PUT, PATCH, DELETE) outside the bearer-token API ``/v1/`` whose ``Origin`` (or, without
one, ``Referer``) is not this server's own origin is refused 403 and audited (``CSRF_ORIGIN``);
one with neither header that carries the session cookie is refused too (``CSRF_NO_ORIGIN``;
``/login`` excepted, its form has a CSRF token): browsers send ``Origin`` on every POST, so only
a forged or non-browser request lacks both.

:class:`PageGuard`: Gradio's routes that name a page by its ``session_hash`` (queue join and
data, heartbeat, cancel) are checked against the login that owns the hash
(:meth:`ui.context.UiContext.page_owner`) before Gradio sees them; Gradio routes the UI does
not use, among them the deep-link route that writes a page's state to disk, answer 404.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import QueryParams

from appliance.asgi import read_body, replay
from appliance.errors import ApplianceError, AuthError, TooLarge
from appliance.sessions import COOKIE_NAME

from .context import UiContext

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PREFIX = "/v1/"
LOGIN = "/login"
GRADIO = "/gradio_api/"
# Unused by the UI and unsafe for it: writes page state to disk, writes uploads outside the
# cache, bypasses the queue (and so the page checks), or reads a page's state by its hash.
REFUSED = (
    "/gradio_api/deep_link",
    "/gradio_api/process_recording",
    "/gradio_api/run/",
    "/gradio_api/api/",
    "/gradio_api/call/",
    "/gradio_api/stream/",
    "/gradio_api/component_server",
)
HASH_IN_BODY = frozenset({"/gradio_api/queue/join", "/gradio_api/cancel"})
MAX_BODY = 1 << 20
_DEFAULT_PORT = {"http": ":80", "https": ":443"}


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` in lower case, without the scheme's default port."""
    parts = urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), parts.netloc.lower().rpartition("@")[2]
    default = _DEFAULT_PORT.get(scheme)
    if default and host.endswith(default):
        host = host.removesuffix(default)
    return f"{scheme}://{host}"


def own_origins(request: Request, ctx: UiContext) -> set[str]:
    """This server's origin as the browser sees it: ``serve.public_origin``, else the Host
    header with the request's scheme (https too behind a TLS-terminating proxy)."""
    serve = ctx.runtime.settings.serve
    if serve.public_origin:
        return {origin_of(serve.public_origin)}
    host = request.headers.get("host", "")
    schemes = {request.url.scheme} | ({"https"} if serve.behind_tls_proxy else set())
    return {origin_of(f"{scheme}://{host}") for scheme in schemes}


def claimed_origin(request: Request) -> str | None:
    origin = request.headers.get("origin")
    if origin is not None:
        return origin_of(origin) if origin.strip().lower() != "null" else "null"
    referer = request.headers.get("referer")
    return origin_of(referer) if referer else None


class OriginGuard:
    def __init__(self, app: Any, ctx: UiContext) -> None:
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        reason = self.verdict(request)
        if reason is None:
            await self.app(scope, receive, send)
            return
        claimed = claimed_origin(request) or ""
        self.ctx.runtime.app.secure.record(
            "access.denied",
            actor=_actor(self.ctx, request),
            now=self.ctx.now(),
            object=scope["path"][:200],
            outcome="refused",
            reason=reason,
            details={"client": _client(request), "origin": claimed[:200]},
        )
        await _refuse(403, "Cross-site request refused. Reload the page and try again.")(
            scope, receive, send
        )

    def verdict(self, request: Request) -> str | None:
        """None if the request may pass, else the audit reason."""
        if request.url.path.startswith(API_PREFIX):
            return None  # bearer tokens only: a browser's cookies authenticate nothing there
        claimed = claimed_origin(request)
        if claimed is None:  # the login form has its own CSRF token
            cookie = COOKIE_NAME in request.cookies and request.url.path != LOGIN
            return "CSRF_NO_ORIGIN" if cookie else None
        return None if claimed in own_origins(request, self.ctx) else "CSRF_ORIGIN"


class PageGuard:
    def __init__(self, app: Any, ctx: UiContext) -> None:
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(GRADIO):
            await self.app(scope, receive, send)
            return
        if path.startswith(REFUSED):
            await _refuse(404, "Not Found")(scope, receive, send)
            return
        named, page, receive = await _page_of(scope, receive)
        if named and page is None:
            await _refuse(400, "Session hash not found.")(scope, receive, send)
            return
        if page is not None:
            request = Request(scope)
            try:
                self.ctx.page_owner(page, request.cookies, client=_client(request))
            except ApplianceError as exc:
                status = 401 if isinstance(exc, AuthError) else 403
                await _refuse(status, exc.message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _page_of(scope: Any, receive: Any) -> tuple[bool, str | None, Any]:
    """Whether the route names a page, the session_hash it names, and a ``receive`` that
    replays the body read to find it."""
    path = scope["path"]
    if path == "/gradio_api/queue/data":
        # Read as Gradio reads it (Starlette's QueryParams); a hash named twice is refused,
        # since the check and Gradio could each take a different one (the first, the last).
        found = QueryParams(scope.get("query_string", b"")).getlist("session_hash")
        return True, (found[0] if len(found) == 1 else None), receive
    if path.startswith("/gradio_api/heartbeat/"):
        return True, path.removeprefix("/gradio_api/heartbeat/").strip("/") or None, receive
    if path.rstrip("/") not in HASH_IN_BODY or scope["method"] != "POST":
        return False, None, receive
    try:
        body = await read_body(receive, MAX_BODY) or b""
    except TooLarge:
        body = b""  # no session hash found: refused 400 (FileGuard, outside, answers 413 first)
    try:
        data = json.loads(body, object_pairs_hook=_unique_keys) if body else {}
    except ValueError:  # not JSON, or a key named twice (which one would Gradio take?)
        data = {}
    page = data.get("session_hash") if isinstance(data, dict) else None
    return True, (page if isinstance(page, str) else None), replay(body, receive)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key is repeated")
    return dict(pairs)


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": message}, status_code=status, headers={"Cache-Control": "no-store"}
    )


def _actor(ctx: UiContext, request: Request) -> str:
    name = ctx.session_name(request.cookies)
    return f"user:{name}" if name else "anonymous"


def _client(request: Request) -> str:
    return request.client.host if request.client else ""
