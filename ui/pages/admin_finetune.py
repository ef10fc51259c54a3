"""Admin tab "Fine-tuning": every job with its progress, the newest (or a chosen) job's loss curve
live, and cancel. Read from the same records as `appliance finetune status`; every handler checks
the admin role on the server. The page polls while it is open (a timer only admins' pages run)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from appliance.errors import ApplianceError

from ..context import UiContext
from ..format import html_table, message_html
from ..i18n import t

Label = Callable[[str], Any]
POLL_S = 5.0
_COLS = ("col.id", "col.name", "ft.base", "ft.data", "col.status", "ft.step", "ft.loss",
         "ft.rate", "ft.eta", "ft.checkpoint")  # fmt: skip


def build(ctx: UiContext, L: Label) -> gr.Timer:
    """Lay out the tab; returns its timer (activated for administrators when the page loads)."""
    with gr.Row():
        job_id = gr.Textbox(label=L("ft.job"), elem_id="ft-job", scale=2)
        refresh = gr.Button(L("admin.refresh"), elem_id="ft-refresh")
        cancel = gr.Button(L("ft.cancel"), variant="stop", elem_id="ft-cancel")
    table = gr.HTML(elem_id="ft-table")
    plot = gr.LinePlot(x="step", y="loss", title=L("ft.curve"), elem_id="ft-loss", height=300)
    result = gr.HTML(elem_id="ft-result")
    timer = gr.Timer(POLL_S, active=False)

    @ctx.guarded
    def show(chosen: str, request: gr.Request) -> tuple[str, Any]:
        ctx.admin(request)
        return jobs_html(ctx, ctx.lang(request)), loss_frame(ctx, chosen.strip() or None)

    @ctx.guarded
    def on_cancel(chosen: str, request: gr.Request) -> tuple[str, Any, str]:
        admin, lang = ctx.admin(request), ctx.lang(request)
        try:
            job = service(ctx).cancel(chosen.strip(), actor=f"user:{admin.name}", now=ctx.now())
            note = message_html(t(lang, "ft.cancelled", job=job["id"]))
        except ApplianceError as exc:
            note = message_html(exc.message, kind="error")
        return jobs_html(ctx, lang), loss_frame(ctx, chosen.strip() or None), note

    refresh.click(show, [job_id], [table, plot])
    timer.tick(show, [job_id], [table, plot], show_progress="hidden")
    cancel.click(on_cancel, [job_id], [table, plot, result])
    return timer


def service(ctx: UiContext) -> Any:
    from appliance.finetune.jobs import Finetuning

    return Finetuning(ctx.runtime.app)


def jobs_html(ctx: UiContext, lang: str) -> str:
    rows = [_row(job) for job in service(ctx).jobs(50)]
    return html_table([t(lang, k) for k in _COLS], rows, table_id="ft-jobs")


def _row(job: dict[str, Any]) -> list[str]:
    reason = f" [{job['reason_code']}]" if job["reason_code"] else ""
    eta = job["eta_s"] if job["state"] == "running" else None
    return [
        job["id"],
        job["name"],
        job["base"],
        job["dataset"],
        job["state"] + reason,
        f"{job['step']}/{job['total_steps']} ({job['percent']}%)",
        "-" if job["loss"] is None else f"{job['loss']:.4f}",
        "-" if not job["tokens_per_s"] else f"{job['tokens_per_s']:.0f} tok/s",
        _minutes(eta),
        str(job["checkpoint_step"] or "-"),
    ]


def _minutes(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    return f"{seconds / 60:.1f} min"


def loss_frame(ctx: UiContext, job_id: str | None) -> pd.DataFrame:
    """Step and loss of ``job_id`` (default: the newest job), for the line plot."""
    svc = service(ctx)
    if job_id is None:
        latest = svc.latest()
        job_id = latest["id"] if latest else None
    rows = svc.db.losses(job_id) if job_id else []
    return pd.DataFrame({"step": [r["step"] for r in rows], "loss": [r["loss"] for r in rows]})
