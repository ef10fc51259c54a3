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

from appliance.rag.answer_eval import run_mode, summarise_mode  # noqa: E402
from appliance.rag.eval_home import MODEL_NAME, ROLE, USER, eval_world  # noqa: E402
from appliance.rag.qa_set import load_qa_set, sample_questions  # noqa: E402

SQUAD = REPO.parent / "shared" / "data" / "squad2-train-subset" / "beir"
OUT = REPO / "bench" / "results" / "answers.json"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir", type=Path, default=SQUAD)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="bundled", help="'bundled' or a model directory")
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
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
        for mode in ("generative", "extractive"):
            records = run_mode(world, questions, mode, progress=_progress)
            report[mode] = summarise_mode(records, mode)
            print(mode, json.dumps(report[mode]), file=sys.stderr, flush=True)
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
