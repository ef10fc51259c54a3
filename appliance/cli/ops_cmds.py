"""`status` and `report`."""

from __future__ import annotations

from typing import Any

import click

from ._context import CliContext, emit_json, parse_duration, pass_ctx, require_home
from ._open import open_home


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--verify-models",
    is_flag=True,
    help="Also re-hash every model file (slow for large models).",
)
@pass_ctx
def status(ctx: CliContext, as_json: bool, verify_models: bool) -> None:
    """Health at four levels: components, services, the appliance, recent tasks.

    Exits 1 when the appliance cannot answer (Milvus unreachable or audit log not writable);
    a locked model only degrades it (extractive answers still work).
    """
    from ..knowledge import Knowledge
    from ..ops.render import render_status
    from ..ops.status import collect_status
    from ..ops.tasks import TaskStore

    app = open_home(ctx)
    kb = Knowledge(app.settings, app.secure)
    tasks = TaskStore.for_settings(app.settings)
    try:
        result = collect_status(
            app, kb, now=ctx.now(), task_store=tasks, verify_models=verify_models
        )
    finally:
        tasks.close()
        _close_store(kb)
    if as_json:
        emit_json(result)
    else:
        click.echo(render_status(result))
    if result["overall"]["state"] == "down":
        raise SystemExit(1)


def _close_store(kb: Any) -> None:
    if "store" in vars(kb):  # opened (cached) during the check
        kb.store.close()


@click.command()
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help="How far back: e.g. 12h, 7d, 2w (or seconds).",
)
@click.option(
    "--by",
    type=click.Choice(["group", "day", "user"]),
    default="group",
    show_default=True,
    help="One row per group, per UTC day, or per user (needs monitoring.show_names).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@pass_ctx
def report(ctx: CliContext, since: str, by: str, fmt: str) -> None:
    """Usage per group, day or user: questions, outcomes, tokens, documents.

    Read from the bounded task store (no passphrase needed); the table says when the window
    reaches back past the oldest row it keeps.
    """
    from ..ops.report import build_report, render_csv, render_table
    from ..ops.tasks import TaskStore

    require_home(ctx)
    window = parse_duration(since)
    tasks = TaskStore.for_settings(ctx.settings())
    try:
        now = ctx.now()
        result = build_report(tasks, since=now - window, now=now, by=by)  # type: ignore[arg-type]
    finally:
        tasks.close()
    if fmt == "json":
        emit_json(result)
    elif fmt == "csv":
        click.echo(render_csv(result), nl=False)
    else:
        click.echo(render_table(result))
