"""`docs verify [--repair]`: does the index (Milvus) hold what the registry says?

After a Milvus crash, an outage during ingestion or a Milvus data directory restored from a
backup older than the home, this lists the documents whose chunks are missing, doubled, stale
or orphaned (see `ingest.reconcile`), and with ``--repair`` fixes them: stale and orphan rows
are deleted, and documents with missing or doubled chunks are indexed again from their
originals (the encrypted vault copy; in mirror mode the drop folder's file if it is unchanged).
The exit code is 0 when the index agrees (after repairing), 1 when something is left.
"""

from __future__ import annotations

from typing import Any

import click

from ingest.errors import SchemaMismatch
from ingest.reconcile import Finding, Report, compare, repair

from ..errors import ApplianceError
from ._context import CliContext, emit_json, pass_ctx


class IndexDisagrees(ApplianceError):
    code = "INDEX_DISAGREES"


@click.command("verify")
@click.option(
    "--repair",
    "do_repair",
    is_flag=True,
    help="Delete stale and orphan chunks and re-index documents whose chunks are missing or "
    "doubled, from their stored originals (audited as index.repair).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def verify(ctx: CliContext, do_repair: bool, as_json: bool) -> None:
    """Compare the document registry with the index: missing chunks, orphans, stale versions,
    duplicates, the wrong embedding model."""
    from .docs_cmds import audit_events, knowledge

    app, kb = knowledge(ctx)
    try:
        store = kb.store
    except SchemaMismatch as exc:
        _wrong_embedder(exc, kb, as_json)
        return
    report = compare(kb.registry, store)
    if do_repair and report.findings:
        app.secure.record(
            "index.repair",
            actor=ctx.actor(),
            now=ctx.now(),
            object=app.settings.milvus.collection,
            details=dict(report.counts()),
        )
        pipeline = kb.pipeline(events=audit_events(app, ctx))
        report = repair(
            report,
            store=store,
            reindex=lambda doc_id: pipeline.reindex(doc_id, unchanged_only=True),
            delete_rows=lambda doc_id, version: pipeline.milvus.call(
                lambda: store.delete_document(doc_id, version=version),
                what=f"deleting {doc_id}",
            ),
        )
        fixed, unrepaired = report.repaired, report.findings
        report = compare(kb.registry, store)  # what the index holds now
        report.repaired = fixed
        report.findings += unrepaired
    _print(report, kb, as_json)
    if report.findings:
        raise IndexDisagrees(
            f"{len(report.findings)} disagreement(s) between the registry and the index.",
            hint="Run `appliance docs verify --repair` (re-indexes from the stored originals)."
            if not do_repair
            else "See the lines marked 'unrepaired': drop those documents again.",
        )


def _wrong_embedder(exc: SchemaMismatch, kb: Any, as_json: bool) -> None:
    finding = Finding("wrong-embedder", "*", None, 0, exc.message)
    report = Report(findings=[finding])
    _print(report, kb, as_json, registry=False)
    raise IndexDisagrees(
        exc.message,
        hint="Either configure that embedding model again, or set milvus.collection to a new "
        "name and run `appliance docs verify --repair`: every document is indexed again into "
        "the new collection from its stored original.",
    )


def _print(report: Report, kb: Any, as_json: bool, *, registry: bool = True) -> None:
    if as_json:
        emit_json(report.to_dict())
        return
    if registry:
        click.echo(
            f"registry: {report.documents} indexed documents, {report.expected_chunks} chunks; "
            f"index: {report.index_rows} rows"
            + (f" ({report.pending} versions wait for clean-up)" if report.pending else "")
        )
    docs = kb.registry.get_many({f.doc_id for f in report.findings + report.repaired})
    for label, findings in (("repaired", report.repaired), ("", report.findings)):
        for f in findings:
            doc = docs.get(f.doc_id)
            where = f"  {doc.rel_path} ({doc.group})" if doc is not None else ""
            version = f" v{f.version}" if f.version is not None else ""
            detail = f" [{f.detail}]" if f.detail else ""
            prefix = f"{label}: " if label else ""
            click.echo(
                f"{prefix}{f.kind:<10} {f.doc_id}{version}: {f.chunks} chunks{where}{detail}"
            )
    if not report.findings:
        click.echo("The index agrees with the registry: nothing to repair.")
