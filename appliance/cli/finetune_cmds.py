"""`finetune data …` and the job commands (`finetune start/status/list/cancel/resume`)."""

from __future__ import annotations

from pathlib import Path

import click

from ._context import CliContext, emit_json, iso, pass_ctx
from ._open import open_home
from .finetune_jobs import (
    finetune_cancel,
    finetune_list,
    finetune_resume,
    finetune_run,
    finetune_start,
    finetune_status,
)

_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def finetune() -> None:
    """Fine-tune a model on your own data (LoRA), encrypted end to end."""


@finetune.group("data")
def finetune_data() -> None:
    """Training data sets (JSONL, chat or QA form), kept encrypted in the home."""


@finetune_data.command("add")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--name", required=True, help="Name of the data set (letters, digits, . _ -).")
@pass_ctx
def data_add(ctx: CliContext, file: Path, name: str) -> None:
    """Validate every row of FILE and store it encrypted (the file is not needed afterwards).

    A file with bad rows is refused with their line numbers and nothing is imported.
    """
    app = open_home(ctx)
    ds = app.training_data.add(file, name=name, actor=ctx.actor(), now=ctx.now())
    c = ds.counts
    click.echo(
        f"Imported {c['rows']} rows as {ds.name} ({ds.id}): {c['qa']} QA "
        f"({c['impossible']} unanswerable), {c['chat']} chat; sha256 {ds.sha256}. "
        f"You may delete {file} now."
    )


@finetune_data.command("list")
@_json
@pass_ctx
def data_list(ctx: CliContext, as_json: bool) -> None:
    """Imported data sets: rows, hash, when and by whom."""
    app = open_home(ctx)
    sets = app.training_data.list()
    if as_json:
        emit_json([d.to_dict() for d in sets])
        return
    if not sets:
        click.echo("No training data sets.")
    for d in sets:
        c = d.counts
        click.echo(
            f"{d.name}: {c['rows']} rows ({c['qa']} QA, {c['impossible']} unanswerable, "
            f"{c['chat']} chat), {d.size} bytes, sha256 {d.sha256[:16]}…, added "
            f"{iso(d.created_at)} by {d.created_by}"
        )


@finetune_data.command("remove")
@click.argument("name")
@pass_ctx
def data_remove(ctx: CliContext, name: str) -> None:
    """Crypto-shred a data set: its key is destroyed, then its ciphertext and record."""
    app = open_home(ctx)
    ds = app.training_data.remove(name, actor=ctx.actor(), now=ctx.now())
    click.echo(
        f"Removed {ds.name} ({ds.id}): its key is destroyed. Run `appliance keys rotate` and "
        "`appliance keys trim` to make old backups of the key store unreadable too."
    )


for _command in (
    finetune_start,
    finetune_status,
    finetune_list,
    finetune_cancel,
    finetune_resume,
    finetune_run,
):
    finetune.add_command(_command)
