#!/usr/bin/env bash
# Run the test suite; pytest's exit code 5 ("no tests collected") counts as a failure.
set -uo pipefail
venv=${1:-.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 DO_NOT_TRACK=1 \
  SCARF_NO_ANALYTICS=true TOKENIZERS_PARALLELISM=false
"$venv/bin/pytest" -q -p no:cacheprovider "${@:2}"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
