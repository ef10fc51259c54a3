"""Admin tabs: documents, ingestion failures, models and policies, audit log, system status.

Every handler checks the admin role from the session (:meth:`UiContext.admin`), whatever the
browser shows; the services are the ones the CLI calls (`docs delete/reindex`, `audit verify`,
`docs show --details`). Results go into ``gr.HTML`` as escaped text, never into ``gr.Markdown``
(a file name can be Markdown: ``[Re-login](https:evil.example).docx``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from appliance.errors import NotFound
from appliance.knowledge import AuditEvents
from secure.audit import verify_log
from secure.keys import LABEL_AUDIT_MAC

from ..context import UiContext
from ..format import (
    audit_rows,
    detail_html,
    document_rows,
    html_table,
    message_html,
    model_rows,
    reason_text,
    status_html,
)
from ..i18n import t

Label = Callable[[str], Any]
AUDIT_ROWS = 100
AUDIT_SCAN = 5000  # entries searched by the audit filter (newest first)
DOC_STATUSES = ("indexed", "indexing", "failed", "deleted")
_DOC_COLS = ("col.id", "col.path", "col.group", "col.status", "col.pages", "col.chunks",
             "col.error", "col.updated")  # fmt: skip
_MODEL_COLS = ("col.name", "col.loaded", "col.reason", "col.valid_until", "col.binding",
               "col.last_check", "col.roles")  # fmt: skip
_AUDIT_COLS = ("col.seq", "col.time", "col.actor", "col.action", "col.object", "col.outcome")


def _heads(lang: str, keys: tuple[str, ...]) -> list[str]:
    return [t(lang, k) for k in keys]


def documents_html(
    ctx: UiContext, lang: str, group: str, status: str, *, table_id: str = "documents"
) -> str:
    docs = ctx.runtime.knowledge.registry.documents(
        group=group.strip().lower() or None, status=status or None
    )
    return html_table(_heads(lang, _DOC_COLS), document_rows(docs, lang), table_id=table_id)


def build_documents(ctx: UiContext, L: Label) -> None:
    with gr.Row():
        group = gr.Textbox(label=L("admin.filter_group"), elem_id="docs-group")
        status = gr.Dropdown(
            ["", *DOC_STATUSES], value="", label=L("admin.filter_status"), elem_id="docs-status"
        )
        refresh = gr.Button(L("admin.refresh"), elem_id="docs-refresh")
    table = gr.HTML(elem_id="docs-table")
    with gr.Row():
        doc_id = gr.Textbox(label=L("admin.doc_id"), elem_id="docs-id")
        delete = gr.Button(L("admin.delete"), variant="stop", elem_id="docs-delete")
        reindex = gr.Button(L("admin.reindex"), elem_id="docs-reindex")
        details = gr.Button(L("admin.details"), elem_id="docs-details")
    result = gr.HTML(elem_id="docs-result")

    @ctx.guarded
    def show(g: str, s: str, request: gr.Request) -> str:
        ctx.admin(request)
        return documents_html(ctx, ctx.lang(request), g or "", s or "")

    @ctx.guarded
    def on_delete(target: str, g: str, s: str, request: gr.Request) -> tuple[str, str]:
        user, lang = ctx.admin(request), ctx.lang(request)
        kb = ctx.runtime.knowledge
        doc = registry_document(ctx, target)
        ctx.runtime.app.secure.record(
            "document.delete",
            actor=f"user:{user.name}",
            now=ctx.now(),
            object=doc.doc_id,
            details={"group": doc.group},
        )
        with ctx.uploads.lock:
            kb.pipeline().delete_document(doc.doc_id)
        done = message_html(t(lang, "admin.done"))
        return done, documents_html(ctx, lang, g or "", s or "")

    @ctx.guarded
    def on_reindex(target: str, g: str, s: str, request: gr.Request) -> tuple[str, str]:
        user, lang = ctx.admin(request), ctx.lang(request)
        kb = ctx.runtime.knowledge
        doc = registry_document(ctx, target)
        if doc.status != "indexed":
            raise NotFound(f"{doc.doc_id} is not indexed.", hint="Only indexed documents.")
        events = AuditEvents(ctx.runtime.app.secure, actor=f"user:{user.name}")
        with ctx.uploads.lock:
            result = kb.pipeline(events=events).reindex(doc.doc_id)
        text = f"{result.outcome} {result.rel_path} {reason_text(lang, result.code)}".strip()
        return message_html(text), documents_html(ctx, lang, g or "", s or "")

    @ctx.guarded
    def on_details(target: str, request: gr.Request) -> str:
        user, lang = ctx.admin(request), ctx.lang(request)
        return failure_details_html(ctx, lang, target, actor=f"user:{user.name}")

    refresh.click(show, [group, status], [table])
    delete.click(on_delete, [doc_id, group, status], [result, table])
    reindex.click(on_reindex, [doc_id, group, status], [result, table])
    details.click(on_details, [doc_id], [result])


def registry_document(ctx: UiContext, target: str) -> Any:
    """The registry's record of a document (NotFound if none). Admins manage every group's
    documents without being able to read them, so this is the registry's record (as the
    `appliance docs` commands use), not Access.document_for."""
    doc = ctx.runtime.knowledge.registry.get(target.strip())
    if doc is None:
        raise NotFound(f"No document {target.strip()}.", hint="Refresh the list.")
    return doc


def failure_details_html(ctx: UiContext, lang: str, target: str, *, actor: str) -> str:
    """Why the document's last ingestion failed, in the parser's own words (decrypted on
    demand and audited as ``document.details``, like `appliance docs show ID --details`)."""
    doc = registry_document(ctx, target)
    head = f"{doc.rel_path} {reason_text(lang, doc.error_code)}".strip()
    if not doc.error_detail:
        return message_html(f"{head} – {t(lang, 'admin.no_details')}")
    detail = ctx.runtime.knowledge.failure_detail(doc, actor=actor, now=ctx.now())
    return message_html(head) + detail_html(detail)


def build_failures(ctx: UiContext, L: Label) -> None:
    refresh = gr.Button(L("admin.refresh"), elem_id="failures-refresh")
    table = gr.HTML(elem_id="failures-table")

    @ctx.guarded
    def show(request: gr.Request) -> str:
        ctx.admin(request)
        return documents_html(ctx, ctx.lang(request), "", "failed", table_id="failures")

    refresh.click(show, None, [table])


def build_models(ctx: UiContext, L: Label) -> None:
    with gr.Row():
        refresh = gr.Button(L("admin.refresh"), elem_id="models-refresh")
        recheck = gr.Button(L("admin.recheck"), elem_id="models-recheck")
    table = gr.HTML(elem_id="models-table")

    def render(lang: str) -> str:
        rows = model_rows(ctx.runtime.models.states(), lang)
        return html_table(_heads(lang, _MODEL_COLS), rows, table_id="models")

    @ctx.guarded
    def show(request: gr.Request) -> str:
        ctx.admin(request)
        return render(ctx.lang(request))

    @ctx.guarded
    def on_recheck(request: gr.Request) -> str:
        ctx.admin(request)
        ctx.runtime.models.recheck()
        return render(ctx.lang(request))

    refresh.click(show, None, [table])
    recheck.click(on_recheck, None, [table])


def build_audit(ctx: UiContext, L: Label) -> None:
    with gr.Row():
        needle = gr.Textbox(label=L("admin.audit_filter"), elem_id="audit-filter")
        refresh = gr.Button(L("admin.refresh"), elem_id="audit-refresh")
        verify = gr.Button(L("admin.verify"), elem_id="audit-verify")
    verdict = gr.HTML(elem_id="audit-verdict")
    table = gr.HTML(elem_id="audit-table")

    @ctx.guarded
    def show(text: str, request: gr.Request) -> str:
        ctx.admin(request)
        entries = audit_entries(ctx, text or "")
        heads = _heads(ctx.lang(request), _AUDIT_COLS)
        return html_table(heads, audit_rows(entries), table_id="audit-log")

    @ctx.guarded
    def on_verify(request: gr.Request) -> str:
        ctx.admin(request)
        return message_html(verify_text(ctx, ctx.lang(request)), kind="verdict")

    refresh.click(show, [needle], [table])
    needle.submit(show, [needle], [table])
    verify.click(on_verify, None, [verdict])


def audit_entries(ctx: UiContext, text: str) -> list[Any]:
    """The newest entries (newest first) whose actor, action or object contains ``text``."""
    needle = text.strip().lower()
    if not needle:
        return list(reversed(ctx.runtime.app.secure.audit.tail(AUDIT_ROWS)))
    found = []
    for entry in reversed(ctx.runtime.app.secure.audit.tail(AUDIT_SCAN)):
        if any(needle in str(v).lower() for v in (entry.actor, entry.action, entry.object)):
            found.append(entry)
            if len(found) == AUDIT_ROWS:
                break
    return found


def verify_text(ctx: UiContext, lang: str) -> str:
    home = ctx.runtime.app.secure
    public = home.identity.public()
    result = verify_log(
        home.layout.audit,
        mac_key=home.derive(LABEL_AUDIT_MAC),
        verifier=lambda msg, sig: public.verify(msg, sig, purpose="kapp/v1 audit-checkpoint"),
    )
    if result.ok:
        return t(lang, "admin.verified", n=result.entries)
    return t(
        lang,
        "admin.broken",
        line=result.first_bad_line,
        seq=result.first_bad_seq,
        problem=result.problem,
    )


def build_status(ctx: UiContext, L: Label) -> None:
    refresh = gr.Button(L("admin.refresh"), elem_id="status-refresh")
    body = gr.HTML(elem_id="status-body")

    @ctx.guarded
    def show(request: gr.Request) -> str:
        ctx.admin(request)
        return status_html(collect(ctx))

    refresh.click(show, None, [body])


def collect(ctx: UiContext) -> dict[str, Any]:
    """`appliance.ops.status.collect_status` for this process (loaded models from memory)."""
    from appliance.ops.status import collect_status
    from appliance.ops.tasks import TaskStore

    runtime = ctx.runtime
    shared = getattr(runtime, "task_store", None) or runtime.extras.get("task_store")
    store = shared or TaskStore.for_settings(runtime.settings)
    try:
        return collect_status(
            runtime.app,
            runtime.knowledge,
            now=ctx.now(),
            task_store=store,
            loaded=runtime.models.loaded(),
        )
    finally:
        if shared is None:
            store.close()
