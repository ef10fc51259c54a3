"""Admin tab: users (add, disable, enable, reset password) through :class:`UserStore`.

Disabling an account or resetting its password also ends its web sessions at once; every change
is audited with the same action names as `appliance users …`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from ..context import UiContext
from ..format import html_table, user_rows
from ..i18n import t

Label = Callable[[str], Any]
_COLS = ("col.name", "col.role", "col.groups", "col.disabled", "col.locked")


def users_html(ctx: UiContext, lang: str) -> str:
    users = ctx.runtime.app.users.list_users()
    rows = user_rows(users, now=ctx.now(), lang=lang)
    return html_table([t(lang, k) for k in _COLS], rows, table_id="users")


def build(ctx: UiContext, L: Label) -> None:
    refresh = gr.Button(L("admin.refresh"), elem_id="users-refresh")
    table = gr.HTML(elem_id="users-table")
    with gr.Row():
        name = gr.Textbox(label=L("admin.user_name"), elem_id="user-name")
        role = gr.Dropdown(["staff", "admin"], value="staff", label=L("admin.role"))
        groups = gr.Textbox(label=L("admin.groups"), elem_id="user-groups")
        password = gr.Textbox(label=L("admin.new_password"), type="password", elem_id="user-pw")
    with gr.Row():
        add = gr.Button(L("admin.add_user"), variant="primary", elem_id="user-add")
        disable = gr.Button(L("admin.disable"), elem_id="user-disable")
        enable = gr.Button(L("admin.enable"), elem_id="user-enable")
        reset = gr.Button(L("admin.reset_password"), elem_id="user-reset")
    result = gr.Markdown(elem_id="user-result")

    def audit(admin: str, action: str, target: str, **details: Any) -> None:
        ctx.runtime.app.secure.record(
            action, actor=f"user:{admin}", now=ctx.now(), object=target, details=details
        )

    @ctx.guarded
    def show(request: gr.Request) -> str:
        ctx.admin(request)
        return users_html(ctx, ctx.lang(request))

    @ctx.guarded
    def on_add(n: str, r: str, g: str, pw: str, request: gr.Request) -> tuple[str, str, str]:
        admin, lang = ctx.admin(request), ctx.lang(request)
        store = ctx.runtime.app.users
        user = store.add_user(n.strip(), role=r, groups=g, password=pw, now=ctx.now())
        audit(admin.name, "user.add", user.name, role=user.role, groups=",".join(user.groups))
        return t(lang, "admin.done"), users_html(ctx, lang), ""

    @ctx.guarded
    def on_disable(n: str, request: gr.Request) -> tuple[str, str]:
        admin, lang = ctx.admin(request), ctx.lang(request)
        target = ctx.runtime.app.users.get(n.strip())
        ctx.runtime.app.users.disable(target.name)
        ctx.sessions.end_user_sessions(target.name)
        audit(admin.name, "user.disable", target.name)
        return t(lang, "admin.done"), users_html(ctx, lang)

    @ctx.guarded
    def on_enable(n: str, request: gr.Request) -> tuple[str, str]:
        admin, lang = ctx.admin(request), ctx.lang(request)
        target = ctx.runtime.app.users.get(n.strip())
        ctx.runtime.app.users.enable(target.name)
        audit(admin.name, "user.enable", target.name)
        return t(lang, "admin.done"), users_html(ctx, lang)

    @ctx.guarded
    def on_reset(n: str, pw: str, request: gr.Request) -> tuple[str, str, str]:
        admin, lang = ctx.admin(request), ctx.lang(request)
        target = ctx.runtime.app.users.get(n.strip())
        ctx.runtime.app.users.set_password(target.name, pw, now=ctx.now())
        ctx.sessions.end_user_sessions(target.name)
        audit(admin.name, "user.passwd", target.name)
        return t(lang, "admin.done"), users_html(ctx, lang), ""

    refresh.click(show, None, [table])
    add.click(on_add, [name, role, groups, password], [result, table, password])
    disable.click(on_disable, [name], [result, table])
    enable.click(on_enable, [name], [result, table])
    reset.click(on_reset, [name, password], [result, table, password])
