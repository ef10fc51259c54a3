"""The staff web UI: a Gradio app mounted at ``/`` of the `appliance serve` FastAPI app.

:func:`mount_ui` is registered as the ``appliance.web`` entry point ``ui``. Layout and event
wiring live in ``ui/pages``; formatting is pure (``ui/format.py``); every event resolves its user
from the session cookie on the server (``ui/context.py``).
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr
from fastapi import FastAPI

from .cache import UiCache
from .context import UiContext
from .file_guard import FileGuard
from .format import language_links
from .gate import RefusalLog, SessionGate
from .guard import OriginGuard, PageGuard, own_origins
from .headers import SecurityHeaders
from .i18n import TABLES, t
from .pages import admin, admin_finetune, admin_users, chat, history, upload
from .routes import LoginRedirect, add_routes
from .upload_owners import Owners, UploadGate

CITE_JS = """<script>
document.addEventListener('click', function (e) {
  var a = e.target.closest ? e.target.closest('a.cite') : null;
  if (!a) return;
  e.preventDefault();
  var el = document.getElementById('src-' + a.dataset.turn + '-' + a.dataset.n);
  if (!el) return;
  document.querySelectorAll('details.source.active').forEach(function (d) {
    d.classList.remove('active');
  });
  el.open = true;
  el.classList.add('active');
  el.scrollIntoView({block: 'nearest'});
});
</script>"""
CSS = """
.conversation .turn{margin-bottom:1rem}.conversation .question{font-weight:600}
.conversation .mode{font-size:.8em;opacity:.7}a.cite{font-weight:600;text-decoration:none}
details.source{border:1px solid #ddd;border-radius:6px;padding:.4rem;margin:.3rem 0}
details.source.active{border-color:#2563eb}details.source .meta{font-size:.85em;opacity:.8}
details.source mark{background:#fde68a}.kapp-table td,.kapp-table th{padding:2px 6px}
"""


def _key(key: str) -> str:
    return key.replace(".", "_")  # the browser's i18n library reads dots as nesting


def i18n() -> gr.I18n:
    return gr.I18n(
        **{lang: {_key(k): v for k, v in table.items()} for lang, table in TABLES.items()}
    )


def build_blocks(ctx: UiContext, labels: gr.I18n) -> gr.Blocks:

    def L(key: str) -> Any:
        return labels(_key(key))

    with gr.Blocks(title=TABLES["en"]["app.title"], analytics_enabled=False) as blocks:
        with gr.Row():
            header = gr.HTML(elem_id="header")
            mode = gr.HTML(elem_id="mode")
        with gr.Tabs():
            with gr.Tab(L("tab.chat"), id="chat"):
                parts = chat.build(ctx, L)
            with gr.Tab(L("tab.upload"), id="upload"):
                up = upload.build(ctx, L)
            with gr.Tab(L("tab.history"), id="history"):
                history.build(ctx, L, parts)
            with gr.Tab(L("tab.admin"), id="admin", visible=False) as admin_tab, gr.Tabs():
                with gr.Tab(L("admin.documents")):
                    admin.build_documents(ctx, L)
                with gr.Tab(L("admin.failures")):
                    admin.build_failures(ctx, L)
                with gr.Tab(L("admin.models")):
                    admin.build_models(ctx, L)
                with gr.Tab(L("admin.users")):
                    admin_users.build(ctx, L)
                with gr.Tab(L("admin.audit")):
                    admin.build_audit(ctx, L)
                with gr.Tab(L("admin.status")):
                    admin.build_status(ctx, L)
                with gr.Tab(L("admin.finetune")):
                    ft_timer = admin_finetune.build(ctx, L)

        @ctx.guarded
        def on_load(request: gr.Request) -> tuple[Any, ...]:
            user, lang = ctx.user(request), ctx.lang(request)
            return (
                header_html(user, lang),
                chat.mode_text(ctx, user, lang),
                gr.update(visible=user.is_admin),
                upload.group_choices(ctx, user),
                chat.model_update(ctx, user, lang, request.session_hash),
                gr.Timer(active=user.is_admin),  # the fine-tuning page polls for admins only
            )

        outputs = [header, mode, admin_tab, up["group"], parts["model"], ft_timer]
        blocks.load(on_load, None, outputs)
    return blocks


def _refused(ctx: UiContext, scope: Any, raw: str, reason: str) -> None:
    from starlette.requests import Request

    ctx.refuse_file(Request(scope).cookies, raw, route=str(scope.get("path", "")), reason=reason)


def _user_of(ctx: UiContext, scope: Any) -> str | None:
    from starlette.requests import Request

    return ctx.session_name(Request(scope).cookies)


def _own_origins(ctx: UiContext, scope: Any) -> set[str]:
    from starlette.requests import Request

    return own_origins(Request(scope), ctx)


def _invalid_session(ctx: UiContext, client: str, route: str, count: int) -> None:
    ctx.runtime.app.secure.record(
        "access.denied",
        actor="anonymous",
        now=ctx.now(),
        object=route[:128],
        outcome="refused",
        reason="SESSION_INVALID",
        details={"client": client[:64], "count": count},
    )


def header_html(user: Any, lang: str) -> str:
    import html

    return (
        f'<div id="whoami">{html.escape(t(lang, "signed_in_as"))} '
        f'<b id="username">{html.escape(user.name)}</b> ({html.escape(user.role)})'
        '<form method="post" action="/logout" style="display:inline;margin-left:1rem">'
        f'<button type="submit" id="logout">{html.escape(t(lang, "logout"))}</button>'
        f"</form> {language_links()}</div>"
    )


def mount_ui(app: FastAPI, runtime: Any) -> None:
    """Add the login/logout/source/download routes and mount the Gradio UI at ``/``.

    Call it after every other route is registered: the mount at ``/`` matches any path.
    Uploads land first in Gradio's cache, a private folder in memory (:mod:`ui.cache`), and are
    moved into the drop folder when submitted; Gradio routes that would write page state to disk
    (deep links) or serve a page to another login are refused (:mod:`ui.guard`).
    """
    settings = runtime.settings
    cache = UiCache.open(settings)
    # Gradio reads it when the components and the app are built (below), not later.
    os.environ["GRADIO_TEMP_DIR"] = str(cache.path)
    ctx = UiContext.build(runtime)
    ctx.cache = cache.start()
    ctx.owners = owners = Owners(cache.path)
    runtime.extras["ui"] = ctx
    add_routes(app, ctx)
    # Middleware runs outermost first, i.e. in the reverse of the order added here:
    # SecurityHeaders (framing, foreign CORS grants) -> OriginGuard (cross-site requests) ->
    # SessionGate (no live session: 401) -> UploadGate (quota, another login's uploads) ->
    # FileGuard (forged file paths) -> PageGuard (unused routes, a page of another login) ->
    # LoginRedirect.
    app.add_middleware(LoginRedirect, ctx=ctx)
    app.add_middleware(PageGuard, ctx=ctx)
    refused = lambda scope, raw, why: _refused(ctx, scope, raw, why)  # noqa: E731
    app.add_middleware(
        FileGuard,
        cache=cache.path,
        audit=refused,
        owned=lambda scope, path: owners.owned_by(path, _user_of(ctx, scope)),
    )
    app.add_middleware(
        UploadGate,
        owners=owners,
        user_of=lambda scope: _user_of(ctx, scope),
        quota_bytes=settings.serve.ui_upload_quota_mb * 2**20,
        audit=refused,
    )
    app.add_middleware(
        SessionGate,
        live=lambda cookies: ctx.session_name(cookies) is not None,
        refusals=RefusalLog(lambda client, route, n: _invalid_session(ctx, client, route, n)),
    )
    app.add_middleware(OriginGuard, ctx=ctx)
    app.add_middleware(SecurityHeaders, own_origins=lambda scope: _own_origins(ctx, scope))
    labels = i18n()
    blocks = build_blocks(ctx, labels)
    # Gradio checks that an event's files came from its upload route only once `launch()` has
    # set this flag, which mounting never does; FileGuard is the check we own, this is Gradio's.
    blocks.has_launched = True
    gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        auth_dependency=lambda request: ctx.session_name(request.cookies),
        max_file_size=settings.ingest.max_file_mb * 2**20,
        footer_links=[],
        run_history=False,
        i18n=labels,
        css=CSS,
        head=CITE_JS,
        show_error=False,  # our handlers raise gr.Error with a safe message; not raw exceptions
    )
