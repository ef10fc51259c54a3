"""Plain HTTP routes beside the Gradio app: login, logout, source views and downloads.

The session cookie is HttpOnly, SameSite=Strict, and Secure when the server speaks TLS, sits
behind a TLS-terminating proxy (``serve.behind_tls_proxy``) or the request came as https from a
trusted proxy (``X-Forwarded-Proto``); the page at ``/`` redirects to ``/login`` without a live
session. The login form carries a CSRF token (double submit: a random value in a cookie and in
a hidden field, compared in constant time); a mismatch is answered 403 and audited. Source and
download routes take only ids from the browser and authorise them from the session's user
(:class:`appliance.access.Access`): another group's id is answered 403 and audited.
"""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from appliance.errors import ApplianceError, AuthError, Forbidden, is_user_facing
from appliance.login_guard import DEVICE_COOKIE, device_token
from appliance.sessions import COOKIE_NAME
from appliance.users import User

from .context import UiContext
from .errors import shown_text
from .i18n import TABLES, pick_language, t

HTML_PAGES = ("/", "/index.html")
LANG_COOKIE = "lang"
LANG_COOKIE_S = 365 * 86400
CSRF_COOKIE = "kapp_login_csrf"
CSRF_COOKIE_S = 3600
_CSRF = re.compile(r"[A-Za-z0-9_-]{43}")
# Gradio's page picks its words from navigator.language; with a language chosen by the switch,
# this runs before Gradio's scripts so the whole page (not only our HTML) follows the choice.
_LOCALE_JS = (
    "<script>(function(l){{try{{var p=Navigator.prototype;"
    "Object.defineProperty(p,'language',{{get:function(){{return l}},configurable:true}});"
    "Object.defineProperty(p,'languages',{{get:function(){{return [l]}},configurable:true}});"
    '}}catch(e){{}}}})("{lang}")</script>'
)
# Gradio knows a fixed list of locales ("zh" alone is not in it; "zh-CN" falls back to "zh").
_BROWSER_LOCALE = {"en": "en", "zh": "zh-CN"}


def language(request: Request) -> str:
    return pick_language(request.headers.get("accept-language"), request.cookies.get(LANG_COOKIE))


def session_user(ctx: UiContext, request: Request) -> User:
    return ctx.sessions.resolve(request.cookies.get(COOKIE_NAME), now=ctx.now()).user


def secure_cookies(ctx: UiContext, request: Request) -> bool:
    """Whether cookies get the Secure flag: TLS here, behind a TLS proxy, or https as a trusted
    proxy says (uvicorn sets the scheme from X-Forwarded-Proto of ``serve.trusted_proxies``)."""
    serve = ctx.runtime.settings.serve
    return serve.tls_cert is not None or serve.behind_tls_proxy or request.url.scheme == "https"


def login_form_page(
    ctx: UiContext, request: Request, error: str = "", *, status: int = 200
) -> HTMLResponse:
    """The login form with a CSRF token, also set as the cookie the POST is checked against."""
    from .format import login_page

    token = request.cookies.get(CSRF_COOKIE, "")
    if not _CSRF.fullmatch(token):
        token = secrets.token_urlsafe(32)
    response = _page(login_page(language(request), error=error, csrf=token), status=status)
    response.set_cookie(
        CSRF_COOKIE,
        token,
        max_age=CSRF_COOKIE_S,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(ctx, request),
        path="/login",
    )
    return response


def csrf_ok(request: Request, sent: str) -> bool:
    kept = request.cookies.get(CSRF_COOKIE, "")
    return bool(_CSRF.fullmatch(kept)) and hmac.compare_digest(kept.encode(), sent.encode())


def add_routes(app: FastAPI, ctx: UiContext) -> None:
    router = APIRouter(include_in_schema=False)

    @router.get("/login")
    def login_form(request: Request) -> HTMLResponse:
        ended = request.query_params.get("ended") == "1"
        error = t(language(request), "login.ended") if ended else ""
        return login_form_page(ctx, request, error)

    @router.post("/login")
    def login(
        request: Request,
        username: str = Form(""),
        password: str = Form(""),
        csrf: str = Form(""),
    ) -> Response:
        client = request.client.host if request.client else ""
        if not csrf_ok(request, csrf):
            ctx.runtime.app.secure.record(
                "access.denied",
                actor="anonymous",
                now=ctx.now(),
                object="/login",
                outcome="refused",
                reason="CSRF_TOKEN",
                details={"client": client[:64]} if client else {},
            )
            return login_form_page(ctx, request, t(language(request), "login.expired"), status=403)
        device = device_token(request.cookies.get(DEVICE_COOKIE))
        try:
            session_id, _ = ctx.sessions.login(
                username, password, now=ctx.now(), client=client, device=device
            )
        except AuthError as exc:  # one message for every cause (the audit log has the reason)
            lang = language(request)
            error = f"{t(lang, 'login.failed')}: {exc.message}"
            return login_form_page(ctx, request, error, status=401)  # with a CSRF token
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            session_id,
            max_age=ctx.sessions.lifetime_s,
            httponly=True,
            samesite="strict",
            secure=secure_cookies(ctx, request),
            path="/",
        )
        response.set_cookie(  # recognises this browser at the next login (see login_guard)
            DEVICE_COOKIE,
            device,
            max_age=ctx.sessions.limits.trust_s,
            httponly=True,
            samesite="strict",
            secure=secure_cookies(ctx, request),
            path="/login",
        )
        response.delete_cookie(CSRF_COOKIE, path="/login", httponly=True, samesite="strict")
        return response

    @router.post("/logout")
    def logout(request: Request) -> Response:
        ctx.sessions.logout(request.cookies.get(COOKIE_NAME), now=ctx.now())
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(
            COOKIE_NAME,
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure_cookies(ctx, request),
        )
        return response

    @router.get("/ui/lang/{code}")
    def switch_language(request: Request, code: str) -> Response:
        """The language switch: remember the choice in a ``lang`` cookie, back to the page."""
        response = RedirectResponse("/", status_code=303)
        if code in TABLES:
            response.set_cookie(
                LANG_COOKIE,
                code,
                max_age=LANG_COOKIE_S,
                httponly=True,
                samesite="strict",
                secure=secure_cookies(ctx, request),
                path="/",
            )
        return response

    @router.get("/ui/source/{chunk_id}")
    def source(request: Request, chunk_id: str) -> Response:
        try:
            user = session_user(ctx, request)
            view = ctx.access.source_for(user, chunk_id)
        except ApplianceError as exc:
            return _error(exc)
        body = dict(view.__dict__, section=list(view.section))
        if view.downloadable:
            body["download_url"] = download_url(view.doc_id)
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @router.get("/ui/download/{doc_id}")
    def download(request: Request, doc_id: str) -> Response:
        try:
            user = session_user(ctx, request)
            original = ctx.access.original_for(user, doc_id)
        except ApplianceError as exc:
            return _error(exc)
        disposition = f"attachment; filename*=UTF-8''{quote(original.name)}"
        return Response(
            original.data,
            media_type=original.media_type,
            headers={
                "Content-Disposition": disposition,
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    app.include_router(router)


def download_url(doc_id: str) -> str:
    return f"/ui/download/{quote(doc_id, safe='')}"


def _page(body: str, *, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        body,
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
            "frame-ancestors 'none'; form-action 'self'",
        },
    )


def _error(exc: ApplianceError) -> JSONResponse:
    status = 401 if isinstance(exc, AuthError) else 403 if isinstance(exc, Forbidden) else 400
    if exc.code == "NOT_FOUND":
        status = 404
    message = exc.message
    if not is_user_facing(exc):  # e.g. the session store naming its path: logged, not shown
        status, message = 500, shown_text(exc, "en")
    return JSONResponse(
        {"error": {"message": message, "code": exc.code}},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


class LoginRedirect:
    """ASGI middleware: the UI page without a live session redirects to ``/login``."""

    def __init__(self, app: Any, ctx: UiContext) -> None:
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] in HTML_PAGES:
            request = Request(scope)
            if self.ctx.session_name(request.cookies, touch=True) is None:  # a page load
                ended = "?ended=1" if COOKIE_NAME in request.cookies else ""
                await RedirectResponse(f"/login{ended}", status_code=303)(scope, receive, send)
                return
            chosen = request.cookies.get(LANG_COOKIE)
            if chosen in TABLES:
                await self.app(scope, receive, with_locale(send, str(chosen)))
                return
        await self.app(scope, receive, send)


def with_locale(send: Any, lang: str) -> Any:
    """An ASGI ``send`` that puts :data:`_LOCALE_JS` at the start of an HTML page's head."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body" or not start:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = _inject(b"".join(chunks), dict(start.get("headers", [])), lang)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode("ascii")))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return wrapped


def _inject(body: bytes, headers: dict[bytes, bytes], lang: str) -> bytes:
    html_page = headers.get(b"content-type", b"").startswith(b"text/html")
    if not html_page or b"content-encoding" in headers:
        return body
    at = body.lower().find(b"<head>")
    if at < 0:
        return body
    at += len(b"<head>")
    return (
        body[:at]
        + _LOCALE_JS.format(lang=_BROWSER_LOCALE.get(lang, lang)).encode("utf-8")
        + body[at:]
    )
