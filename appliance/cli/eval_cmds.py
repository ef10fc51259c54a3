"""`eval answers`: answer quality and latency of the real answer engine on a QA set."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..errors import ModelImportError, UsageError
from ._context import CliContext, emit_json, pass_ctx

BUNDLED = "bundled"
_ROWS = (
    ("em", "EM"),
    ("f1", "F1"),
    ("citation_precision", "citation precision"),
    ("right_citation_rate", "answers citing a right source"),
    ("abstention_accuracy", "abstention accuracy"),
    ("false_abstention", "false abstention"),
    ("p50_s", "latency p50 (s)"),
    ("p95_s", "latency p95 (s)"),
    ("tokens_per_s", "tokens/s"),
    ("errors", "errors"),
)


@click.command("answers")
@click.option(
    "--beir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="A BEIR-layout QA folder: queries.jsonl rows carry metadata.answers (and "
    "metadata.impossible for questions the corpus cannot answer).",
)
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=None,
    help="Ask N questions drawn with --seed (answerable and unanswerable in proportion).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --limit draw.")
@click.option(
    "--split",
    type=click.Choice(["all", "tune", "held-out"]),
    default="all",
    show_default=True,
    help="Only questions about the articles the engine was tuned on, or the others "
    "(see appliance/rag/qa_set.py).",
)
@click.option(
    "--model",
    "model",
    default=None,
    metavar="M",
    help="Generative mode only, with this model: a Hugging Face model directory, or "
    "'bundled' (the bundled instruct model). It is packaged encrypted into the scratch "
    "appliance and unlocked under a policy for role staff.",
)
@click.option("--extractive", is_flag=True, help="Extractive mode only (no model).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def eval_answers(
    ctx: CliContext,
    folder: Path,
    limit: int | None,
    seed: int,
    split: str,
    model: str | None,
    extractive: bool,
    as_json: bool,
) -> None:
    """EM, F1, citation precision, abstention and latency of generated and extractive answers.

    The passages are ingested into a scratch appliance (deleted afterwards) and every question
    is asked as a staff user through the real answer engine. Without --model or --extractive
    both modes run with the bundled model, side by side.
    """
    from ..rag.answer_eval import MODES, evaluate_answers

    if model is not None and extractive:
        raise UsageError("--model and --extractive exclude each other.", hint="Pass one of them.")
    modes = ("extractive",) if extractive else ("generative",) if model else MODES
    source = None if extractive else _model_source(model or BUNDLED)
    base = ctx.settings() if (ctx.home / "appliance.toml").is_file() else None
    bars = _Bars()
    try:
        report = evaluate_answers(
            folder,
            modes=modes,
            model_source=source,
            base=base,
            limit=limit,
            seed=seed,
            split=split,  # type: ignore[arg-type]
            progress=bars.update,
        )
    finally:
        bars.close()
    if as_json:
        emit_json(report)
        return
    _print_table(report, modes)


def _model_source(model: str) -> Path:
    if model == BUNDLED:
        return bundled_model()
    path = Path(model).expanduser()
    if not path.exists():
        raise UsageError(
            f"{path} does not exist.",
            hint="Pass a Hugging Face model directory or 'bundled'.",
        )
    return path


def bundled_model() -> Path:
    """The bundled instruct model's GGUF file (`appliance.llm.bundled.bundled_gguf`)."""
    from ..llm.bundled import bundled_gguf

    try:
        return bundled_gguf()
    except ModelImportError as exc:
        raise UsageError(
            exc.message, hint=f"{exc.hint} Or pass --model DIR or --extractive."
        ) from None


class _Bars:
    """One progress bar per stage (indexing, then each mode) on stderr."""

    def __init__(self) -> None:
        self.stage = ""
        self.bar: Any = None

    def update(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            unit = "passage" if stage == "indexing" else "question"
            self.bar = tqdm(desc=stage, unit=unit, total=total, file=sys.stderr, disable=None)
            self.stage = stage
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None


def _print_table(report: dict[str, Any], modes: tuple[str, ...]) -> None:
    c = report["counts"]
    click.echo(
        f"{report['dataset']} ({report['split']}): {c['questions']} questions "
        f"({c['answerable']} answerable, {c['unanswerable']} unanswerable), "
        f"{c['passages']} passages"
    )
    click.echo(f"{'':<32}" + "".join(f"{m:>14}" for m in modes))
    for key, label in _ROWS:
        cells = [_cell(report[m].get(key)) for m in modes]
        click.echo(f"{label:<32}" + "".join(f"{c:>14}" for c in cells))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
