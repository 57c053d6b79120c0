#!/usr/bin/env bash
# The prepared GPU suite (python -m headkit.bench_suite): throughput on four shapes, the seed's full study,
# CHG 10 seeds vs 1, suppression batched vs per sentence, bf16 vs fp32 decisions, into one results folder.
#
#   benchmarks/gpu.sh                          # one H100/H200: bfloat16, results in benchmarks/results/gpu/
#   benchmarks/gpu.sh --quick --out /tmp/q     # toy sizes on a CPU: checks the suite runs (CI)
#
# Needs only torch and transformers (plus numpy, pandas, tqdm, einops, jaxtyping). Works from a bare checkout
# with headkit not installed (as on a lent GPU machine): it then imports headkit from this tree.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c "import headkit.adapters" 2>/dev/null; then
    overlay="$(mktemp -d)"
    mkdir "$overlay/headkit"
    for entry in headkit/*; do ln -s "$PWD/$entry" "$overlay/headkit/"; done
    ln -s "$PWD/adapters" "$overlay/headkit/adapters"  # installs as headkit.adapters (pyproject's package-dir)
    export PYTHONPATH="$overlay${PYTHONPATH:+:$PYTHONPATH}"
    exec "$python" -P -m headkit.bench_suite "$@"  # -P: not this folder's headkit/ (it has no adapters/) first
fi
exec "$python" -m headkit.bench_suite "$@"
