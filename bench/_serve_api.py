"""Parts 4 and 5 of `bench_serve.py`: the real server under the ``openai`` client.

Run by ``bench_serve.py`` as a child process: opens the bench home with ``Runtime.open`` (the
same path as `appliance serve`, loading only the chosen model), serves ``create_app(runtime)``
with uvicorn on loopback in a thread of this process, and measures

* API overhead: ``POST /v1/chat/completions`` (non-streaming, temperature 0, fixed max_tokens)
  through the ``openai`` client, against the same full answer path called in-process
  (``AnswerEngine.answer``: retrieval, prompt, generation, citations, audit) and against bare
  ``model.generate`` on the prompt that path builds; the three alternate, medians compared;
* concurrency: ``--clients`` threads, each with its own streaming ``openai`` client, asking
  ``--questions`` questions one after the other; errors, p50/p95 latency, throughput.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bench_serve as bs  # noqa: E402  - constants of the bench home

API_QUESTIONS = (
    "How many days of annual leave do employees get?",
    "年假有多少天？",
    "What is the Q3 budget for marketing?",
    "What does the employee handbook say about working hours?",
)


def child_api(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Parts 4 and 5 in one process: uvicorn on loopback in a thread, the runtime beside it."""
    import threading

    import uvicorn

    from appliance.api.app import create_app
    from appliance.config import load_settings
    from appliance.serve.runtime import Runtime

    ready = json.loads((workdir / bs.READY).read_text())
    model = args.model
    settings = load_settings(workdir / "home", llm={"models": [model]})
    t0 = time.perf_counter()
    runtime = Runtime.open(settings, bs.PASSPHRASE)
    open_s = time.perf_counter() - t0
    if model not in runtime.models.loaded():
        raise SystemExit(f"model not loaded: {[s.to_dict() for s in runtime.models.states()]}")
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}/v1"
    try:
        overhead = api_overhead(runtime, base, ready["token"], args)
        concurrent = concurrent_clients(base, ready["token"], args)
        states = [s.to_dict() for s in runtime.models.states()]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        runtime.close()
    serve = runtime.settings.serve
    return {
        "model": model,
        "runtime_open_s": open_s,
        "overhead": overhead,
        "concurrent": concurrent,
        "serve_settings": {
            "max_concurrent": serve.max_concurrent,
            "queue_size": serve.queue_size,
            "queue_timeout_s": serve.queue_timeout_s,
        },
        "model_states": states,
    }


def _client(base: str, token: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=base, api_key=token, max_retries=0, timeout=900)


def _direct_prompt(
    runtime: Any, model: str, user: Any, question: str, max_tokens: int
) -> tuple[str, int]:
    """The prompt the engine builds for this question (same retrieval, same builder)."""
    from appliance.knowledge import effective_groups
    from appliance.rag.prompt import build_prompt

    o = runtime.engine.options
    with runtime.models.lease(model, user=user.name, role=user.role) as lease:
        result = runtime.knowledge.retriever.search(
            question, groups=effective_groups(user.groups), limit=o.passages
        )
        passages = [p for p in result.passages if p.score >= o.min_score]
        tokenizer = lease.model.tokenizer
        context = o.context_tokens or lease.model.model.config.max_position_embeddings
        text = build_prompt(
            question,
            passages,
            tokenizer=tokenizer,
            context_tokens=context,
            max_new_tokens=max_tokens,
            max_passages=o.passages,
            history=[],
        ).text
    return text, len(tokenizer(text, add_special_tokens=False).input_ids)


def api_overhead(runtime: Any, base: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    """Part 4: API end to end vs the same answer path in-process vs bare ``generate``."""
    import torch

    from ingest.threads import run_in_thread

    user = runtime.app.users.authenticate_token(token, now=int(time.time()))
    client, n, question = _client(base, token), args.api_tokens, API_QUESTIONS[0]
    model = args.model
    prompt, prompt_tokens = _direct_prompt(runtime, model, user, question, n)

    def api() -> int:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=n,
            temperature=0,
        )
        return int(r.usage.completion_tokens) if r.usage else -1

    def engine() -> int:
        a = runtime.engine.answer(
            question, user=user, model=model, require_model=True, max_tokens=n, channel="api"
        )
        return int(a.tokens)

    def generate() -> int:
        # In a thread that ends with the call, as the serving path generates: run in this long-
        # lived thread, generate would leave an OpenMP team here that makes every other team in
        # the process (the API's and the engine's) about 13 % slower (see ingest/threads.py).
        return run_in_thread(bare_generate, threads=runtime.engine.options.threads, name="direct")

    def bare_generate() -> int:
        with runtime.models.lease(model, user=user.name, role=user.role) as lease:
            tok, lm = lease.model.tokenizer, lease.model.model
            enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                out = lm.generate(
                    **enc, do_sample=False, max_new_tokens=n, pad_token_id=tok.pad_token_id
                )
            return int(out.shape[1] - enc.input_ids.shape[1])

    sides = {"api": api, "engine_direct": engine, "generate_direct": generate}
    for fn in sides.values():
        fn()  # warm-up: first-call costs out of the rounds
    runs: dict[str, list[float]] = {s: [] for s in sides}
    tokens: dict[str, set[int]] = {s: set() for s in sides}
    for i in range(args.rounds):
        names = list(sides)[i % 3 :] + list(sides)[: i % 3]
        for name in names:
            t0 = time.perf_counter()
            tokens[name].add(sides[name]())
            runs[name].append(time.perf_counter() - t0)
    med = {s: statistics.median(v) for s, v in runs.items()}
    return {
        "max_tokens": n,
        "question": question,
        "prompt_tokens": prompt_tokens,
        "median_s": med,
        "overhead_vs_engine_direct": med["api"] / med["engine_direct"] - 1,
        "overhead_vs_generate_direct": med["api"] / med["generate_direct"] - 1,
        "completion_tokens": {s: sorted(v) for s, v in tokens.items()},
        "goal": 0.05,
        "runs": runs,
    }


def concurrent_clients(base: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    """Part 5: 8 threads, each its own streaming openai client, a fixed number of questions."""
    from concurrent.futures import ThreadPoolExecutor

    model = args.model

    def one_client(k: int) -> list[dict[str, Any]]:
        client, out = _client(base, token), []
        for j in range(args.questions):
            question = API_QUESTIONS[(k + j) % len(API_QUESTIONS)]
            t0, first, text, error = time.perf_counter(), None, [], ""
            try:
                stream = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": question}],
                    max_tokens=args.stream_tokens,
                    temperature=0,
                    stream=True,
                )
                for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - t0
                    text += [c.delta.content or "" for c in chunk.choices]
            except Exception as exc:  # every failure is counted, none hidden
                error = f"{type(exc).__name__}: {exc}"[:300]
            out.append(
                {
                    "latency_s": time.perf_counter() - t0,
                    "first_content_s": first,
                    "chars": len("".join(text)),
                    "error": error,
                }
            )
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        results = [r for rs in pool.map(one_client, range(args.clients)) for r in rs]
    wall = time.perf_counter() - t0
    ok = [r for r in results if not r["error"]]
    lat = sorted(r["latency_s"] for r in ok)
    return {
        "clients": args.clients,
        "questions_per_client": args.questions,
        "max_tokens": args.stream_tokens,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_samples": sorted({r["error"] for r in results if r["error"]})[:5],
        "latency_p50_s": _percentile(lat, 50),
        "latency_p95_s": _percentile(lat, 95),
        "first_content_p50_s": _percentile(
            sorted(r["first_content_s"] for r in ok if r["first_content_s"] is not None), 50
        ),
        "wall_s": wall,
        "requests_per_s": len(ok) / wall,
        "runs": results,
    }


def _percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return None
    rank = max(1, -(-len(values) * pct // 100))
    return values[int(rank) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", required=True, help="a workdir prepared by bench_serve.py")
    parser.add_argument("--model", default=bs.MODEL_NAME)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--api-tokens", type=int, default=32)
    parser.add_argument("--stream-tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--questions", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(child_api(Path(args.workdir), args)))


if __name__ == "__main__":
    main()
