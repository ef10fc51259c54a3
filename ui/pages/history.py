"""The history tab: the user's own conversations (encrypted at rest), reopened into the chat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from ..context import UiContext
from ..format import render_conversation
from .chat import reopen

Label = Callable[[str], Any]


def build(ctx: UiContext, L: Label, chat: dict[str, Any]) -> None:
    with gr.Row():
        # Any value reaches on_load, which refuses and audits another user's conversation
        # (Gradio's own choice check refused it before, unaudited).
        pick = gr.Dropdown(
            label=L("history.pick"), choices=[], elem_id="history-pick", allow_custom_value=True
        )
        refresh = gr.Button(L("admin.refresh"), elem_id="history-refresh")
        load = gr.Button(L("history.load"), variant="primary", elem_id="history-load")

    @ctx.guarded
    def on_refresh(request: gr.Request) -> Any:
        user = ctx.user(request)
        items = [(c.title, c.id) for c in ctx.conversations.history(user.id)]
        return gr.update(choices=items, value=items[0][1] if items else None)

    @ctx.guarded
    def on_load(conv: str | None, request: gr.Request) -> tuple[Any, ...]:
        user, lang = ctx.user(request), ctx.lang(request)
        if not conv:
            return gr.update(), gr.update(), gr.update(), gr.update()
        items = reopen(ctx, user, conv)  # NotFound unless the conversation is the user's own
        sources = chat["sources_html"](items, request)
        return render_conversation(items, lang=lang), sources, items, conv

    refresh.click(on_refresh, None, [pick])
    load.click(
        on_load,
        [pick],
        [chat["conversation"], chat["sources"], chat["turns"], chat["conversation_id"]],
    )
