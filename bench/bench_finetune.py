"""Fine-tuning on the appliance (issue 14): a default `finetune start`, the appliance's trainer
beside a plain peft loop, and the base model against its adapter on held-out questions.

One run, one scratch appliance (`bench/_finetune_world.py`: new keys, the bundled model packaged
encrypted under a signed policy that allows fine-tuning, the staff account of `eval answers`):

1. **Data**: the rows of ``squad2-train-subset/train.jsonl`` about the *tuning* articles (the
   split fixed in `appliance/rag/qa_set.py`), imported by `finetune data add`'s service
   (validated, encrypted; the source file deleted).
2. **Default job**: ``appliance finetune start --base smollm2 --data squad-tune --name
   smollm2-squad`` as a child process with every default (``--start-args`` adds options): wall
   time (goal: under 45 minutes on 2 cores), peak RSS, training tokens/s, loss curve, encrypted
   checkpoint saves (time, size), all from what the job recorded.
3. **Plain peft baseline** (`bench/_finetune_plain.py`): a second job with the same defaults run
   by the product's job runner in slices (each later slice a resume from the encrypted
   checkpoint: resume time measured), alternating with a plain peft loop over the same examples,
   batches and thread count: tokens/s ratio appliance ÷ plain (goal ≥ 0.95).
4. **Answers**: the held-out articles' passages indexed through the real pipeline, ``--limit``
   held-out questions drawn with ``--seed`` (`qa_set.sample_questions`, as ``eval answers
   --limit`` draws them), each asked as the staff user through the real answer engine of the
   base model and of the adapter (a model id of its own, merged in memory, under the base's
   policy), alternating per question: the metric table of `appliance eval answers`.

    nice -n 5 python bench/bench_finetune.py [--limit 150] [--seed 0] [--rounds 2]
        [--slice-steps 10] [--start-args "--max-steps 300"] [--out bench/results/finetune.json]

The machine's load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _finetune_plain import interleaved  # noqa: E402
from _finetune_world import (  # noqa: E402
    ACTOR,
    ADAPTER,
    BASE,
    DATASET,
    World,
    build_world,
    import_data,
    job_report,
    run_start,
    tune_lines,
)

DATA = REPO.parent / "shared" / "data" / "squad2-train-subset"
OUT = REPO / "bench" / "results" / "finetune.json"
GOALS = {
    "default_job_wall_s_max": 45 * 60,
    "tokens_per_s_ratio_min": 0.95,
    "adapter_f1_min": 0.45,
    "adapter_f1_gain_min": 0.25,
    "abstention_accuracy_min": 0.6,
    "false_abstention_max": 0.15,
    "citation_precision_min": 0.85,
}
Log = Callable[[str], None]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_embedder(settings: Any) -> Any:
    from ingest.embed import Embedder

    e = settings.embedding
    return Embedder.load(
        e.model, device=e.device, batch_size=e.batch_size, threads=e.threads or None
    )


def evaluate(
    world: World,
    embedder: Any,
    beir: Path,
    *,
    limit: int | None,
    seed: int,
    log: Log,
    extra_unanswerable: int = 0,
) -> dict[str, Any]:
    """Base and adapter through the real answer engine, same questions, alternating."""
    from appliance.knowledge import Knowledge
    from appliance.rag.answer_eval import run_mode, summarise_mode
    from appliance.rag.eval_home import index_passages
    from appliance.rag.qa_set import load_qa_set, sample_questions

    app = world.app
    data = load_qa_set(beir)
    held_out = data.only("held-out").questions
    questions = sample_questions(held_out, limit, seed)
    extra = _extra_unanswerable(held_out, questions, extra_unanswerable, seed)
    knowledge = Knowledge(world.settings, app.secure)
    knowledge.__dict__["embedder"] = embedder  # the one loaded embedder
    started = time.perf_counter()
    failures = index_passages(knowledge, app, data.passages, None)
    out: dict[str, Any] = {
        "split": "held-out",
        "seed": seed,
        "limit": limit,
        "counts": {
            "questions": len(questions),
            "answerable": sum(not q.impossible for q in questions),
            "unanswerable": sum(q.impossible for q in questions),
            "passages": len(data.passages),
            "passages_not_indexed": failures,
        },
        "index_s": round(time.perf_counter() - started, 1),
    }
    log(f"indexed {len(data.passages)} passages; asking {len(questions)} questions x 2 models")
    served = {}
    try:
        for name in (BASE, ADAPTER):
            t0 = time.perf_counter()
            served[name] = _serving(world, knowledge, name)
            out[f"{_role(name)}_load_s"] = round(time.perf_counter() - t0, 1)
        records: dict[str, list[Any]] = {BASE: [], ADAPTER: []}
        for i, question in enumerate(questions):
            for name in (BASE, ADAPTER) if i % 2 == 0 else (ADAPTER, BASE):
                records[name] += run_mode(served[name], [question], "generative")
            if (i + 1) % 10 == 0 or i + 1 == len(questions):
                log(f"  {i + 1}/{len(questions)} questions")
        for name in (BASE, ADAPTER):
            out[_role(name)] = {"model": name, **summarise_mode(records[name], "generative")}
        if extra:
            out["extra_unanswerable"] = _ask_extra(served, extra, log)
    finally:
        for world_ in served.values():
            assert world_.models is not None
            world_.models.close()
        knowledge.store.close()
    return out


def _extra_unanswerable(
    held_out: Sequence[Any], asked: Sequence[Any], n: int, seed: int
) -> list[Any]:
    """``n`` more unanswerable held-out questions than the proportional draw holds (its 10 of
    150 move abstention accuracy by 0.1 each), none of them already asked."""
    seen = {q.id for q in asked}
    pool = [q for q in held_out if q.impossible and q.id not in seen]
    return random.Random(seed + 1).sample(pool, min(n, len(pool)))


def _ask_extra(served: dict[str, Any], questions: list[Any], log: Log) -> dict[str, Any]:
    from appliance.rag.answer_eval import run_mode, summarise_mode

    log(f"asking {len(questions)} more unanswerable questions x 2 models")
    out: dict[str, Any] = {"questions": len(questions)}
    for name in (BASE, ADAPTER):
        records = run_mode(served[name], questions, "generative")
        out[_role(name)] = {
            "abstained": sum(r.score.abstained for r in records),
            "abstention_accuracy": summarise_mode(records, "generative")["abstention_accuracy"],
        }
    return out


def _role(name: str) -> str:
    return "base" if name == BASE else "adapter"


def _serving(world: World, knowledge: Any, name: str) -> Any:
    """One model unlocked by serving's model manager, and the answer engine `serve` builds."""
    from appliance.knowledge import effective_groups
    from appliance.rag.answer import AnswerEngine
    from appliance.rag.eval_home import EvalWorld
    from appliance.serve.models import ModelManager
    from appliance.serve.runtime import engine_options, generation_threads, load_options

    app, settings = world.app, world.settings
    manager = ModelManager(
        app.models,
        app.secure,
        options=load_options(settings),
        clock=time.time,
        names=[name],
        decrypt_threads=settings.security.decrypt_threads,
        load_threads=generation_threads(settings),
    )
    state = manager.load(name)
    if not state.loaded:
        manager.close()
        raise RuntimeError(f"{name} could not be unlocked [{state.reason_code}]: {state.reason}")
    engine = AnswerEngine(
        retriever=knowledge.retriever,
        models=manager,
        home=app.secure,
        options=engine_options(settings),
        groups_of=lambda u: effective_groups(u.groups),
        clock=time.time,
    )
    return EvalWorld(world.root, app, knowledge, engine, world.user, manager, name)


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Each goal of the issue: the measured value and whether it is met."""
    g = GOALS
    job, ratio = report["job"], report["plain_vs_appliance"]["ratio"]
    base, adapter = report["eval"]["base"], report["eval"]["adapter"]
    f1, f1_base = adapter["f1"] or 0.0, base["f1"] or 0.0
    measured = {
        "default_job_under_45_min": (job["wall_s"], "<=", g["default_job_wall_s_max"]),
        "tokens_per_s_ratio": (ratio, ">=", g["tokens_per_s_ratio_min"]),
        "adapter_f1": (f1, ">=", g["adapter_f1_min"]),
        "adapter_f1_gain": (round(f1 - f1_base, 4), ">=", g["adapter_f1_gain_min"]),
        "abstention_accuracy": (adapter["abstention_accuracy"], ">=", g["abstention_accuracy_min"]),
        "false_abstention": (adapter["false_abstention"], "<=", g["false_abstention_max"]),
        "citation_precision": (adapter["citation_precision"], ">=", g["citation_precision_min"]),
    }
    out = {}
    for name, (value, op, goal) in measured.items():
        met = value is not None and (value >= goal if op == ">=" else value <= goal)
        out[name] = {"value": value, "goal": f"{op} {goal}", "met": met}
    return out


def pooled_ratio(slices: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = sorted(s["ratio"] for s in slices)
    return {"ratio": ratios[len(ratios) // 2] if ratios else None, "ratios": ratios}


def run(
    *,
    model_source: Path,
    train: Path,
    beir: Path,
    limit: int | None,
    seed: int,
    rounds: int,
    slice_steps: int,
    start_args: list[str],
    settings: dict[str, dict[str, Any]] | None = None,
    extra_unanswerable: int = 0,
    workdir: Path | None = None,
    embedder: Any = None,
    log: Log = _log,
) -> dict[str, Any]:
    load_start = os.getloadavg()
    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="kapp-bench-finetune-", dir=workdir))
    report: dict[str, Any] = {"model": str(model_source), "goals": GOALS, "settings": settings}
    try:
        log(f"packaging {model_source.name} encrypted into a scratch home")
        world = build_world(root, model_source, settings=settings)
        report["setup"] = {k: round(v, 1) for k, v in world.timings.items()}
        report["data"] = import_data(world, tune_lines(train))
        log(f"imported {report['data']['rows']} training rows; finetune start (defaults)")
        start = run_start(world, start_args, log=root / "finetune-start.log")
        app = world.reopen()
        from appliance.finetune.jobs import Finetuning

        job = Finetuning(app).latest()
        assert job is not None and job["state"] == "finished", job
        report["job"] = {**start, **job_report(app, job)}
        log(
            f"job: {json.dumps({k: report['job'][k] for k in ('wall_s', 'steps', 'tokens_per_s')})}"
        )
        if embedder is None:
            embedder = load_embedder(world.settings)
        log(f"plain peft vs the appliance's job: {rounds} rounds of {slice_steps} steps")
        side = interleaved(
            app, embedder, base=BASE, data=DATASET, rounds=rounds, steps=slice_steps, actor=ACTOR
        )
        report["plain_vs_appliance"] = {**pooled_ratio(side["slices"]), **side}
        log(f"ratio {report['plain_vs_appliance']['ratio']}; evaluating base vs adapter")
        report["eval"] = evaluate(
            world,
            embedder,
            beir,
            limit=limit,
            seed=seed,
            log=log,
            extra_unanswerable=extra_unanswerable,
        )
        report["verdict"] = verdict(report)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["machine"] = {
        "cpus": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "bench_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(time.time() - started),
    }
    return report


def parse_settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["finetune.passages=6", …]`` as {section: {key: value}} (values read as TOML)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not (section and name and value):
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE")
        out.setdefault(section, {})[name] = tomllib.loads(f"v = {value}")["v"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--train", type=Path, default=DATA / "train.jsonl")
    parser.add_argument("--beir", type=Path, default=DATA / "beir")
    parser.add_argument("--model", default="bundled", help="'bundled' (the GGUF) or a model dir")
    parser.add_argument("--limit", type=int, default=150, help="held-out questions asked")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="plain/appliance slice pairs")
    parser.add_argument("--slice-steps", type=int, default=10)
    parser.add_argument("--start-args", default="", help="extra `finetune start` options")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a setting written into the scratch home's appliance.toml (TOML value), repeatable",
    )
    parser.add_argument(
        "--extra-unanswerable",
        type=int,
        default=0,
        metavar="N",
        help="also ask N unanswerable held-out questions outside the draw (abstention only)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.model == "bundled":
        from appliance.llm.bundled import bundled_gguf

        source = bundled_gguf()
    else:
        source = Path(args.model)
    report = run(
        model_source=source,
        train=args.train,
        beir=args.beir,
        limit=args.limit,
        seed=args.seed,
        rounds=args.rounds,
        slice_steps=args.slice_steps,
        start_args=shlex.split(args.start_args),
        settings=parse_settings(args.set) or None,
        extra_unanswerable=args.extra_unanswerable,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(report.get("verdict"), indent=2))


if __name__ == "__main__":
    main()
