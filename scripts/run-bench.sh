#!/usr/bin/env bash
# Every benchmark, one after the other (they measure ratios within one run; run on a quiet
# machine). Results are JSON under bench/results/; docs/benchmarks.md quotes them.
set -euo pipefail
venv=${1:-.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for bench in bench_decrypt bench_model_load bench_sparse bench_fusion bench_fusion_gates \
             bench_retrieval \
             bench_latency bench_ingest robustness_parse bench_serve bench_bundled \
             bench_milvus_server; do
  echo "== $bench"
  "$venv/bin/python" "bench/$bench.py"
done
echo "== bench_serve --model smollm2 (the bundled model)"
"$venv/bin/python" bench/bench_serve.py --model smollm2 --parts 1,2,3
echo "== bench_finetune (a default finetune start, ~40 min, then plain peft and 150 answers x 2)"
"$venv/bin/python" bench/bench_finetune.py
