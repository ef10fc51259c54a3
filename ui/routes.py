"""Plain HTTP routes beside the Gradio app: login, logout, source views and downloads.

The session cookie is HttpOnly, SameSite=Strict (and Secure when the server speaks TLS); the
page at ``/`` redirects to ``/login`` without a live session. Source and download routes take
only ids from the browser and authorise them from the session's user
(:class:`appliance.access.Access`): another group's id is answered 403 and audited.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from appliance.errors import ApplianceError, AuthError, Forbidden
from appliance.sessions import COOKIE_NAME
from appliance.users import User

from .context import UiContext
from .i18n import pick_language, t

HTML_PAGES = ("/", "/index.html")


def language(request: Request) -> str:
    return pick_language(request.headers.get("accept-language"), request.cookies.get("lang"))


def session_user(ctx: UiContext, request: Request) -> User:
    return ctx.sessions.resolve(request.cookies.get(COOKIE_NAME), now=ctx.now()).user


def add_routes(app: FastAPI, ctx: UiContext) -> None:
    router = APIRouter(include_in_schema=False)
    secure_cookie = ctx.runtime.settings.serve.tls_cert is not None

    @router.get("/login")
    def login_form(request: Request) -> HTMLResponse:
        from .format import login_page

        ended = request.query_params.get("ended") == "1"
        lang = language(request)
        error = t(lang, "login.ended") if ended else ""
        return _page(login_page(lang, error=error))

    @router.post("/login")
    def login(request: Request, username: str = Form(""), password: str = Form("")) -> Response:
        from .format import login_page

        client = request.client.host if request.client else ""
        try:
            session_id, _ = ctx.sessions.login(username, password, now=ctx.now(), client=client)
        except AuthError as exc:
            lang = language(request)
            body = login_page(lang, error=f"{t(lang, 'login.failed')}: {exc.message}")
            return _page(body, status=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            session_id,
            max_age=ctx.sessions.lifetime_s,
            httponly=True,
            samesite="strict",
            secure=secure_cookie,
            path="/",
        )
        return response

    @router.post("/logout")
    def logout(request: Request) -> Response:
        ctx.sessions.logout(request.cookies.get(COOKIE_NAME), now=ctx.now())
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
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
    return JSONResponse(
        {"error": {"message": exc.message, "code": exc.code}},
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
            if self.ctx.session_name(request.cookies) is None:
                ended = "?ended=1" if COOKIE_NAME in request.cookies else ""
                await RedirectResponse(f"/login{ended}", status_code=303)(scope, receive, send)
                return
        await self.app(scope, receive, send)
