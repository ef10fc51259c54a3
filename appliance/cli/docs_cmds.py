"""`ingest`, `docs …`, `search`."""

from __future__ import annotations

import sys
from typing import Any

import click

from ingest.errors import StoreUnavailable

from ..errors import NotFound, UsageError
from ._context import CliContext, emit_json, pass_ctx
from ._open import open_home

_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def knowledge(ctx: CliContext) -> tuple[Any, Any]:
    """The unlocked home and its document services (imported lazily: they load Milvus)."""
    from ..knowledge import Knowledge

    app = open_home(ctx)
    return app, Knowledge(app.settings, app.secure)


def audit_events(app: Any, ctx: CliContext) -> Any:
    """The audit sink plus the ops sink (task store: `appliance status` and `report`)."""
    from ..knowledge import AuditEvents
    from ..ops.events import FanoutEvents, OpsEvents
    from ..ops.tasks import TaskStore

    ops = OpsEvents(tasks=TaskStore.for_settings(app.settings))
    return FanoutEvents(AuditEvents(app.secure, actor=ctx.actor()), ops)


class _Progress:
    """A progress bar over files with pages and chunks as counters (stderr, terminals only)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(unit="file", desc="ingest", file=sys.stderr, disable=None)
        self.pages = self.chunks = self.failed = 0

    def __call__(self, result: Any) -> None:
        self.pages += result.pages
        self.chunks += result.chunks
        self.failed += result.outcome == "failed"
        self.bar.update(1)
        self.bar.set_postfix(pages=self.pages, chunks=self.chunks, failed=self.failed)

    def close(self) -> None:
        self.bar.close()


@click.command()
@click.option(
    "--once",
    "mode",
    flag_value="once",
    default=True,
    help="Process what is in the drop folder now, then exit (default).",
)
@click.option(
    "--watch",
    "mode",
    flag_value="watch",
    help="Keep watching the drop folder and process changes as they come.",
)
@_json
@pass_ctx
def ingest(ctx: CliContext, mode: str, as_json: bool) -> None:
    """Index the drop folder (`<home>/drop/<group>/…`) into the knowledge base."""
    app, kb = knowledge(ctx)
    pipeline = kb.pipeline(events=audit_events(app, ctx))
    settings = app.settings.ingest
    if mode == "watch":
        from ingest.watch import watch

        click.echo(f"Watching {pipeline.drop} ({settings.mode} mode); Ctrl-C stops.", err=True)

        def run_pass() -> None:
            try:
                report = pipeline.run_once()
            except StoreUnavailable as exc:  # keep watching: the next pass tries again
                click.echo(f"error: {exc.diagnostics()}", err=True)
                return
            for f in report.files:
                if f.outcome != "unchanged":
                    click.echo(_line(f))
            _outage(report)

        from ..ops.runtime_state import watch_heartbeat

        try:
            with watch_heartbeat(app.settings.home, mode=settings.mode) as counted:
                watch(
                    pipeline.drop,
                    counted(run_pass),
                    interval_s=settings.watch_interval_s,
                    settle_s=settings.settle_s,
                )
        except KeyboardInterrupt:
            click.echo("Stopped.", err=True)
        return
    progress = _Progress()
    try:
        report = pipeline.run_once(progress=progress, settle=False)
    finally:
        progress.close()
    if as_json:
        emit_json(
            {
                "job": report.job_id,
                "seconds": round(report.seconds, 3),
                "totals": report.totals,
                "milvus_retries": report.milvus_retries,
                "milvus_wait_s": round(report.milvus_wait_s, 3),
                "files": [_file_dict(f) for f in report.files],
            }
        )
        return
    for f in report.files:
        if f.outcome != "unchanged":
            click.echo(_line(f))
    t = report.totals
    click.echo(
        f"{t['indexed']} indexed, {t['unchanged']} unchanged, {t['failed']} quarantined, "
        f"{t['deleted']} removed; {t['pages']} pages, {t['chunks']} chunks in "
        f"{report.seconds:.1f} s."
    )
    _outage(report)


def _outage(report: Any) -> None:
    if report.milvus_retries:
        click.echo(
            f"Milvus was unavailable during this run: {report.milvus_retries} calls retried, "
            f"{report.milvus_wait_s:.1f} s waited; nothing was quarantined for it.",
            err=True,
        )


def _line(f: Any) -> str:
    if f.outcome == "failed":
        more = f" (details: appliance docs show {f.doc_id} --details)" if f.doc_id else ""
        return f"quarantined {f.rel_path} [{f.code}]: {f.reason}{more}"
    if f.outcome == "indexed":
        extra = f" ({'; '.join(f.warnings)})" if f.warnings else ""
        return f"indexed {f.rel_path}: {f.pages} pages, {f.chunks} chunks{extra}"
    return f"{f.outcome} {f.rel_path}"


def _file_dict(f: Any) -> dict[str, Any]:
    return {
        "path": f.rel_path,
        "outcome": f.outcome,
        "doc_id": f.doc_id,
        "group": f.group,
        "code": f.code,
        "reason": f.reason,
        "pages": f.pages,
        "chunks": f.chunks,
        "warnings": list(f.warnings),
        "stages": {k: round(v, 4) for k, v in f.stages.items()},
    }


@click.group()
def docs() -> None:
    """Documents in the knowledge base."""


def _doc_dict(d: Any) -> dict[str, Any]:
    return {
        "id": d.doc_id,
        "path": d.rel_path,
        "group": d.group,
        "status": d.status,
        "source": d.source,
        "version": d.version,
        "format": d.format,
        "size": d.size,
        "pages": d.pages,
        "chunks": d.chunks,
        "error_code": d.error_code,
        "error": d.error,
        "warnings": [w for w in d.warnings.split("\n") if w],
        "updated_at": d.updated_at,
    }


@docs.command("list")
@click.option("--group", help="Only this group.")
@click.option(
    "--status", type=click.Choice(["indexed", "failed", "indexing"]), help="Only this status."
)
@_json
@pass_ctx
def docs_list(ctx: CliContext, group: str | None, status: str | None, as_json: bool) -> None:
    """Documents with their group, status and size."""
    _, kb = knowledge(ctx)
    rows = [_doc_dict(d) for d in kb.registry.documents(group=group, status=status)]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No documents.")
    for r in rows:
        tail = (
            f"[{r['error_code']}] {r['error']}"
            if r["status"] == "failed"
            else f"{r['pages']} pages, {r['chunks']} chunks"
        )
        click.echo(f"{r['id']}  {r['status']:<8} {r['group']:<12} {r['path']}  {tail}")


def _document(kb: Any, doc_id: str) -> Any:
    doc = kb.registry.get(doc_id)
    if doc is None:
        raise NotFound(f"No document {doc_id}.", hint="See `appliance docs list`.")
    return doc


@docs.command("show")
@click.argument("doc_id")
@click.option(
    "--details",
    is_flag=True,
    help="Also decrypt why the last ingestion failed in the parser's own words (may quote the "
    "document or name server paths; audited as document.details).",
)
@pass_ctx
def docs_show(ctx: CliContext, doc_id: str, details: bool) -> None:
    """One document's record (JSON)."""
    _, kb = knowledge(ctx)
    doc = _document(kb, doc_id)
    info = _doc_dict(doc)
    if doc.title_enc:
        info["title"] = kb.cipher.open(f"title:{doc.doc_id}:{doc.version}", doc.title_enc).decode(
            "utf-8"
        )
    if details:
        info["error_detail"] = kb.failure_detail(doc, actor=ctx.actor(), now=ctx.now())
    emit_json(info)


@docs.command("delete")
@click.argument("doc_id")
@pass_ctx
def docs_delete(ctx: CliContext, doc_id: str) -> None:
    """Remove a document: its chunks leave the index and its vault copy is deleted."""
    app, kb = knowledge(ctx)
    doc = _document(kb, doc_id)
    app.secure.record(
        "document.delete",
        actor=ctx.actor(),
        now=ctx.now(),
        object=doc_id,
        details={"group": doc.group},
    )
    kb.pipeline().delete_document(doc_id)
    click.echo(f"Deleted {doc_id} ({doc.rel_path}).")


@docs.command("reindex")
@click.argument("doc_id", required=False)
@pass_ctx
def docs_reindex(ctx: CliContext, doc_id: str | None) -> None:
    """Parse, chunk and embed again one document (or all) from its stored original."""
    app, kb = knowledge(ctx)
    pipeline = kb.pipeline(events=audit_events(app, ctx))
    targets = [doc_id] if doc_id else [d.doc_id for d in kb.registry.documents(status="indexed")]
    for target in targets:
        result = pipeline.reindex(target)
        click.echo(_line(result))


@click.command()
@click.argument("question")
@click.option("--user", "user_name", required=True, help="Search as this user (their groups).")
@click.option("--limit", type=click.IntRange(1, 100), default=None, help="Passages to return.")
@click.option(
    "--mode", type=click.Choice(["hybrid", "dense", "sparse"]), default="hybrid", show_default=True
)
@_json
@pass_ctx
def search(
    ctx: CliContext, question: str, user_name: str, limit: int | None, mode: str, as_json: bool
) -> None:
    """The passages USER may see that best answer QUESTION."""
    app, kb = knowledge(ctx)
    user = app.users.get(user_name)
    if user.disabled:
        raise UsageError(f"User {user_name} is disabled.")
    from ..knowledge import effective_groups

    groups = effective_groups(user.groups)
    result = kb.retriever.search(
        question,
        groups=groups,
        limit=limit or app.settings.retrieval.top_k,
        mode=mode,
    )
    app.secure.record(
        "search",
        actor=f"user:{user.name}",
        now=ctx.now(),
        object=app.secure.audit.protect(question),
        details={"results": len(result.passages), "mode": mode},
    )
    if as_json:
        emit_json(
            {
                "question": question,
                "user": user.name,
                "groups": groups,
                "trust": result.trust.__dict__ if result.trust else None,
                "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
                "passages": [p.to_dict() for p in result.passages],
            }
        )
        return
    if not result.passages:
        click.echo("No passages found in documents this user may see.")
    for i, p in enumerate(result.passages, 1):
        where = f"p. {p.page_start}" if p.page_start else ""
        section = " > ".join(p.section)
        click.echo(f"[{i}] {p.document} ({p.group}) {where} {section}".rstrip())
        click.echo("    " + p.text[:400].replace("\n", " ") + ("…" if len(p.text) > 400 else ""))


__all__ = ["docs", "ingest", "search"]
