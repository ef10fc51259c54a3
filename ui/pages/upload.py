"""The upload tab: files into one of the user's groups, with each file's ingestion state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from appliance.errors import InvalidInput

from ..context import UiContext
from ..file_guard import checked_upload
from ..format import html_table, upload_rows
from ..i18n import t

Label = Callable[[str], Any]
POLL_S = 1.0


def build(ctx: UiContext, L: Label) -> dict[str, Any]:
    # Any value reaches on_upload, where Uploads.save refuses and audits a group the user may
    # not upload into (Gradio's own choice check refused it before, unaudited).
    group = gr.Dropdown(
        label=L("upload.group"), choices=[], elem_id="upload-group", allow_custom_value=True
    )
    files = gr.File(
        label=L("upload.files"), file_count="multiple", type="filepath", elem_id="upload-files"
    )
    submit = gr.Button(L("upload.submit"), variant="primary", elem_id="upload-submit")
    table = gr.HTML(elem_id="upload-table")
    timer = gr.Timer(POLL_S, active=True)

    def rows(request: gr.Request) -> str:
        user, lang = ctx.user(request, touch=False), ctx.lang(request)  # a poll, not activity
        return uploads_html(ctx, user, lang)

    @ctx.guarded
    def on_upload(chosen: str | None, paths: list[str] | None, request: gr.Request) -> Any:
        user, lang = ctx.user(request), ctx.lang(request)
        if not chosen:
            raise InvalidInput(t(lang, "upload.group"))
        cookies = getattr(request, "cookies", None)
        files = [
            checked_upload(
                str(raw),
                ctx.upload_cache,
                lambda bad: ctx.refuse_file(cookies, bad, route="upload"),
                lambda path: ctx.foreign_upload(path, user),
            )
            for raw in paths or []
        ]
        for path in files:
            try:
                ctx.uploads.save(user, filename=path.name, source=path, group=chosen)
            finally:
                path.unlink(missing_ok=True)  # no plaintext copy left in Gradio's cache
        return None, uploads_html(ctx, user, lang)

    submit.click(on_upload, [group, files], [files, table])

    @ctx.guarded
    def poll(request: gr.Request) -> Any:
        return rows(request)

    timer.tick(poll, None, [table], show_progress="hidden")
    return {"group": group, "table": table}


def group_choices(ctx: UiContext, user: Any) -> Any:
    choices = ctx.uploads.groups_for(user)
    return gr.update(choices=choices, value=choices[0] if choices else None)


def uploads_html(ctx: UiContext, user: Any, lang: str) -> str:
    headers = [t(lang, k) for k in ("upload.file", "upload.group", "upload.state", "upload.reason")]
    rows = upload_rows(ctx.uploads.status(user), lang)
    return html_table(headers, rows, table_id="uploads") if rows else t(lang, "upload.none")
