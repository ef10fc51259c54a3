"""`eval retrieval` and `eval answers`: retrieval and answer quality on labelled sets, in a scratch
appliance."""

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
    ("gold_shown_rate", "answerable with a right source shown"),
    ("false_abstention_gold_shown", "false abstention, right source shown"),
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


@click.group("eval")
def eval_group() -> None:
    """Measure the appliance on your own data."""


@eval_group.command("retrieval")
@click.option(
    "--beir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="A BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/).",
)
@click.option(
    "--max-queries",
    type=click.IntRange(1),
    default=None,
    help="Score only the first N judged queries.",
)
@click.option(
    "--fit",
    is_flag=True,
    help="Fit the fusion constants (retrieval.fusion*) to this set by k-fold over its queries "
    "and write them to appliance.toml if they score better on the queries left out.",
)
@click.option(
    "--folds",
    type=click.IntRange(2, 20),
    default=5,
    show_default=True,
    help="With --fit: folds of the cross-validation.",
)
@click.option("--dry-run", is_flag=True, help="With --fit: show the result, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def eval_retrieval(
    ctx: CliContext,
    folder: Path,
    max_queries: int | None,
    fit: bool,
    folds: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """nDCG@10, recall@10, MRR@10 and latency of dense, sparse and hybrid retrieval.

    Uses the home's embedder, dense index and fusion settings (the defaults without a home).
    With --fit, the fusion constants are fitted to this set instead; they are written only
    when the queries each fold left out score at least 0.001 nDCG@10 better than with the
    current constants."""
    from ingest.embed import Embedder

    from ..config import load_settings
    from ..wiring import dense_index, fusion_policy

    has_home = (ctx.home / "appliance.toml").is_file()
    if fit and not dry_run and not has_home:
        raise UsageError(
            f"--fit writes to {ctx.home / 'appliance.toml'}, which does not exist.",
            hint="Point --home at the appliance home (or run `appliance init`), or add --dry-run.",
        )
    settings = load_settings(ctx.home)  # the defaults where the home has no appliance.toml
    e = settings.embedding
    embedder = Embedder.load(
        e.model, device=e.device, batch_size=e.batch_size, trace_queries=e.trace_queries
    )
    embedder.prepare_queries()  # every judged question is embedded: the trace pays for itself
    options: dict[str, Any] = {
        "max_queries": max_queries,
        "dense_index": dense_index(settings),
        "candidates": settings.retrieval.candidates,
    }
    bar, progress = _index_progress()
    try:
        if fit:
            from ..rag.evaluate import fit_beir

            summary, report = fit_beir(
                folder,
                embedder,
                current=fusion_policy(settings),
                folds=folds,
                progress=progress,
                **options,
            )
        else:
            from ..rag.evaluate import evaluate_beir

            results = evaluate_beir(
                folder, embedder, fusion=fusion_policy(settings), progress=progress, **options
            )
    finally:
        bar.close()
    if fit:
        _finish_fit(ctx, summary, report, write=not dry_run, as_json=as_json)
        return
    if as_json:
        emit_json(results)
        return
    c = results["counts"]
    click.echo(
        f"{results['dataset']}: {c['passages']} passages ({c['chunks']} chunks), "
        f"{c['queries']} judged queries"
    )
    for mode in ("dense", "sparse", "hybrid"):
        r = results[mode]
        click.echo(
            f"  {mode:<7} nDCG@10 {r['ndcg@10']:.4f}  recall@10 {r['recall@10']:.4f}  "
            f"MRR@10 {r['mrr@10']:.4f}  p50 {r['p50_ms']:.1f} ms  p95 {r['p95_ms']:.1f} ms"
        )


def _index_progress() -> tuple[Any, Any]:
    from tqdm import tqdm

    bar = tqdm(desc="indexing", unit="passage", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, progress


def _finish_fit(
    ctx: CliContext, summary: dict[str, Any], report: Any, *, write: bool, as_json: bool
) -> None:
    from ..config import write_settings

    written, overridden = False, []
    if write and report.improves:
        f = report.fitted
        overridden = write_settings(
            ctx.home,
            "retrieval",
            {
                "fusion": f.method,
                "fusion_normalisation": f.normalisation,
                "fusion_dense_weight": f.dense_weight,
                "fusion_rrf_k": f.rrf_k,
            },
        )
        written = True
    summary.update(written=written, overridden_by_environment=overridden)
    if as_json:
        emit_json(summary)
        return
    c, n, fit = summary["counts"], summary["ndcg@10"], summary["fit"]
    click.echo(
        f"{summary['dataset']}: {c['passages']} passages ({c['chunks']} chunks), "
        f"{c['queries']} judged queries; nDCG@10 dense {n['dense']:.4f}, "
        f"BM25 {n['sparse']:.4f}, hybrid {n['hybrid']:.4f}"
    )
    click.echo(f"  before: {report.current.describe()}")
    click.echo(f"          nDCG@10 {fit['current_ndcg@10']:.4f} (every query)")
    click.echo(f"  after:  {report.fitted.describe()}")
    click.echo(
        f"          nDCG@10 {fit['leave_out_ndcg@10']:.4f} on the queries each of "
        f"{fit['folds']} folds left out ({fit['gain']:+.4f}); "
        f"{fit['fitted_in_sample_ndcg@10']:.4f} on the queries it was fitted to"
    )
    if written:
        click.echo(f"  written to {ctx.home / 'appliance.toml'} ([retrieval] fusion*).")
        for name in overridden:
            click.echo(f"  note: the environment variable {name} overrides the file.")
    elif report.improves:
        click.echo("  not written (--dry-run).")
    else:
        click.echo(
            f"  not written: the fitted constants do not beat the current ones by "
            f"{fit['min_gain']} on queries left out; appliance.toml is unchanged."
        )


eval_group.add_command(eval_answers)
