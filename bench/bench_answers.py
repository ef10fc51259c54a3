"""Answer quality and latency of the bundled model through the real engine (issue 13).

The SQuAD 2.0 training subset (``../shared/data/squad2-train-subset/beir``) is ingested into a
scratch appliance (`appliance.rag.eval_home`: real keys, the real pipeline, Milvus Lite, the
model packaged encrypted and unlocked under a policy for role staff), then ``--limit`` questions
of the *held-out* articles (the split is fixed in `appliance/rag/qa_set.py`; the engine was
tuned on the other articles only), drawn with ``--seed``, are asked as a staff user in both
modes. Reported per mode: the metric table of `appliance eval answers` (EM, F1, citation
precision, abstention accuracy, false abstention, answer latency p50/p95, tokens/s).

Then, in the same process and with the same unlocked model, the time to the first token for a
prompt of ``--prompt-tokens`` tokens (the engine's own prompt builder over held-out passages,
filled to that size): ``--rounds`` generations of 16 tokens, median reported.

    python bench/bench_answers.py [--limit 200] [--seed 0] [--model bundled|DIR]

**Retrieval-score abstention, measured on the same answers.** For every asked question the
embedder's raw cosine of its best hit (``dense_top``; `bench/bench_abstention.py` found it the
only retrieval signal that separates unanswerable questions at all) is recorded, and each mode is
summarised again as if the engine had answered "not in the documents" without generating
whenever ``dense_top`` is below ``--gate`` (default: the threshold chosen on the tune split in
``bench/results/abstention.json``). That is exactly what such a gate does to the quality metrics:
a gated question gets the structured not-found outcome whatever the model would have said.
Per-question rows (scores, abstention, ``dense_top``) are kept under ``questions``.

Writes ``bench/results/answers.json``. The machine's load average is recorded at start and end:
these are CPU numbers on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from appliance.rag.answer_eval import AnswerRecord, run_mode, summarise_mode  # noqa: E402
from appliance.rag.answer_metrics import score_answer  # noqa: E402
from appliance.rag.eval_home import GROUP, MODEL_NAME, ROLE, USER, eval_world  # noqa: E402
from appliance.rag.qa_set import load_qa_set, sample_questions  # noqa: E402

SQUAD = REPO.parent / "shared" / "data" / "squad2-train-subset" / "beir"
OUT = REPO / "bench" / "results" / "answers.json"
ABSTENTION = REPO / "bench" / "results" / "abstention.json"
FIRST_TOKEN_NEW = 16


def first_token(world: Any, passages: Any, *, prompt_tokens: int, rounds: int) -> dict[str, Any]:
    """Median time to the first token for a ``prompt_tokens`` prompt on the unlocked model."""
    from appliance.rag.prompt import build_prompt
    from appliance.rag.retrieve import Passage
    from appliance.serve.generate import GenerationRequest, GenerationStats, stream_generate
    from appliance.serve.runtime import generation_threads

    offered = [
        Passage(p.id, p.id, p.id, "eval", p.title, (), None, None, p.text, 1.0) for p in passages
    ]
    question = "What do these passages say about the history of the city?"
    with world.models.lease(MODEL_NAME, user=USER, role=ROLE) as lease:
        prompt = build_prompt(
            question,
            offered,
            tokenizer=lease.model.tokenizer,
            context_tokens=prompt_tokens + FIRST_TOKEN_NEW,
            max_new_tokens=FIRST_TOKEN_NEW,
            max_passages=len(offered),
        )
        firsts, rates = [], []
        for _ in range(rounds):
            stats = GenerationStats()
            request = GenerationRequest(
                prompt.text,
                max_new_tokens=FIRST_TOKEN_NEW,
                threads=generation_threads(world.app.settings),
            )
            for _piece in stream_generate(lease.model, request, stats):
                pass
            firsts.append(round(stats.first_token_s or 0.0, 3))
            rates.append(round(stats.tokens_per_s, 2))
    return {
        "prompt_tokens": prompt.prompt_tokens,
        "new_tokens": FIRST_TOKEN_NEW,
        "rounds": rounds,
        "first_token_s": firsts,
        "first_token_median_s": round(statistics.median(firsts), 3),
        "decode_tokens_per_s_median": round(statistics.median(rates), 2),
    }


def dense_tops(world: Any, questions: Any) -> dict[str, float]:
    """Each question's best raw cosine from the embedder (0.0 when nothing came back)."""
    retriever = world.knowledge.retriever
    out = {}
    for q in questions:
        dense, _ = retriever.candidate_lists(q.text, groups=[GROUP], dense_depth=1, sparse_depth=1)
        out[q.id] = round(float(dense[0].score), 6) if dense else 0.0
    return out


def gated(records: list[AnswerRecord], tops: dict[str, float], gate: float) -> list[AnswerRecord]:
    """The records as a gate "not found below ``gate``" would have made them (quality only)."""
    out = []
    for r in records:
        if tops[r.question.id] >= gate:
            out.append(r)
            continue
        q = r.question
        score = score_answer(
            text="",
            not_found=True,
            cited_sources=(),
            golds=q.answers,
            gold_docs=q.gold_docs,
            impossible=q.impossible,
            language="en",
        )
        out.append(AnswerRecord(q, score, r.seconds))
    return out


def _gate_quality(
    records: list[AnswerRecord], mode: Any, tops: dict[str, float], gate: float
) -> dict[str, Any]:
    summary = summarise_mode(gated(records, tops, gate), mode)
    keys = ("em", "f1", "citation_precision", "right_citation_rate")
    keys += ("abstention_accuracy", "false_abstention")
    return {k: summary[k] for k in keys}


def _rows(by_mode: dict[str, list[AnswerRecord]], tops: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for i, q in enumerate(next(iter(by_mode.values()))):
        row: dict[str, Any] = {"id": q.question.id, "impossible": q.question.impossible}
        row["dense_top"] = tops[q.question.id]
        for mode, records in by_mode.items():
            s = records[i].score
            row[mode] = {"f1": s.f1, "abstained": s.abstained, "right": s.cited_right}
        rows.append(row)
    return rows


def _default_gate() -> float | None:
    try:
        chosen = json.loads(ABSTENTION.read_text(encoding="utf-8"))["chosen_on_tune"]
    except (OSError, KeyError, json.JSONDecodeError):
        return None
    return float(chosen["threshold"]) if chosen.get("signal") == "dense_top" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir", type=Path, default=SQUAD)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="bundled", help="'bundled' or a model directory")
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--gate", type=float, default=None, help="dense_top gate to assess")
    args = parser.parse_args()
    gate = args.gate if args.gate is not None else _default_gate()
    from appliance.cli.eval_cmds import _model_source

    source = _model_source(args.model)
    data = load_qa_set(args.beir).only("held-out")
    questions = sample_questions(data.questions, args.limit, args.seed)
    held_out_passages = [p for p in data.passages if p.title not in _tune_titles()]
    load_start = os.getloadavg()
    started = time.time()
    report: dict[str, Any] = {
        "dataset": data.name,
        "split": "held-out",
        "seed": args.seed,
        "limit": args.limit,
        "model": args.model,
        "counts": {
            "questions": len(questions),
            "answerable": sum(not q.impossible for q in questions),
            "unanswerable": sum(q.impossible for q in questions),
            "passages": len(data.passages),
        },
    }
    with eval_world(data.passages, base=None, model_source=source, progress=_progress) as world:
        report["timings_s"] = {k: round(v, 1) for k, v in world.timings.items()}
        report["engine"] = _engine_options(world)
        by_mode: dict[str, list[AnswerRecord]] = {}
        for mode in ("generative", "extractive"):
            records = run_mode(world, questions, mode, progress=_progress)
            by_mode[mode] = records
            report[mode] = summarise_mode(records, mode)
            print(mode, json.dumps(report[mode]), file=sys.stderr, flush=True)
        tops = dense_tops(world, questions)
        if gate is not None:
            report["dense_gate"] = {"threshold": gate} | {
                mode: _gate_quality(records, mode, tops, gate) for mode, records in by_mode.items()
            }
        report["questions"] = _rows(by_mode, tops)
        report["first_token"] = first_token(
            world, held_out_passages, prompt_tokens=args.prompt_tokens, rounds=args.rounds
        )
    report["machine"] = {
        "cpus": os.cpu_count(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.time() - started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2, ensure_ascii=False))


def _tune_titles() -> frozenset[str]:
    from appliance.rag.qa_set import TUNE_ARTICLES

    return TUNE_ARTICLES


def _engine_options(world: Any) -> dict[str, Any]:
    o = world.engine.options
    return {
        "passages": o.passages,
        "max_new_tokens": o.max_new_tokens,
        "temperature": o.temperature,
        "threads": o.threads,
    }


def _progress(done: int, total: int) -> None:
    if done == total or done % 20 == 0:
        print(f"  {done}/{total}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
